"""Plain gradient descent written out with ``torch.autograd``, as seeds 001 and 004 do with GradientTape."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lit_mnist.models.classifier import MNISTClassifier


class HandSGDClassifier(MNISTClassifier):
    """A classifier whose training step is the seeds' GradientTape loop in PyTorch::

        grads = torch.autograd.grad(loss, params)
        p -= lr * g     # for each parameter, under torch.no_grad()

    It uses Lightning's manual optimization and no optimizer object; loss, metrics and logging
    are the base class's. Each update counts as one optimizer step, so ``trainer.global_step``,
    ``max_steps`` and the logging steps advance as they do with an optimizer.

    Not made for DDP: ``torch.autograd.grad`` does not go through DDP's gradient averaging, so
    these models are meant for one device (any accelerator; nothing here names one).
    """

    def __init__(self, net: nn.Module, lr: float, num_classes: int = 10) -> None:
        super().__init__(net, optimizer=None, num_classes=num_classes)
        self.automatic_optimization = False
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")[0]
        params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= self.lr * g
        self._count_optimizer_step()
        return loss
