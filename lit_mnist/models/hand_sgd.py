"""Plain gradient descent written out by hand, as three of the tutorials write it with GradientTape."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from lit_mnist.models.classifier import MNISTClassifier


class GradientDescent(torch.optim.Optimizer):
    """The tutorials' update rule ``w -= lr * grad`` for every weight, and nothing else.

    "A first look", "What is TensorFlow?" and "Chapter 3" (``docs/tutorials.md``) take the
    gradients with ``tape.gradient(loss, weights)`` and then update each
    weight by hand (``w.assign_sub(grad * learning_rate)``); here autograd fills ``w.grad``
    (Lightning calls ``loss.backward()``) and ``step`` is that loop. Being an optimizer, it lets
    Lightning count the steps and apply gradient clipping, accumulation and schedulers as usual.

    Args:
        params: The parameters to update.
        lr: The learning rate.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is not None:
                    w -= group["lr"] * w.grad
        return loss


class HandSGDClassifier(MNISTClassifier):
    """A classifier trained by ``GradientDescent``, the tutorials' hand-written update.

    Args:
        net: The network.
        lr: The learning rate of ``w -= lr * grad``.
        num_classes: Number of classes the metrics count.
    """

    def __init__(self, net: nn.Module, lr: float, num_classes: int = 10) -> None:
        # a partial, not a lambda: serve's workers get the model pickled
        super().__init__(net, optimizer=partial(GradientDescent, lr=lr), num_classes=num_classes)
        self.lr = lr
