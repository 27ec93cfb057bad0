"""RMSprop as Keras computes it: the epsilon under the square root."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lit_mnist.errors import LitMNISTError


class KerasRMSprop(torch.optim.Optimizer):
    """``w -= lr * g / sqrt(v + eps)``, with ``v = rho * v + (1 - rho) * g²`` starting at 0.

    Keras' ``RMSprop`` (and so the tutorials' Keras code) adds its epsilon to the mean square
    before the square root; ``torch.optim.RMSprop`` adds it after (``sqrt(v) + eps``), which
    shrinks every step whose ``sqrt(v)`` is near or under ``sqrt(eps)``: docs/porting.md, row 3.

    Args:
        params: The parameters to optimize, or parameter groups.
        lr: Learning rate (Keras' ``learning_rate``).
        rho: Decay of the running mean square (Keras' ``rho``, PyTorch's ``alpha``).
        eps: Added to the mean square under the square root (Keras' ``epsilon``).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7) -> None:
        if lr < 0 or not 0 <= rho < 1 or eps <= 0:
            raise LitMNISTError(
                f"KerasRMSprop takes lr >= 0, 0 <= rho < 1 and eps > 0, got lr={lr}, rho={rho}, eps={eps}."
            )
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                square_avg = state["square_avg"]
                square_avg.mul_(group["rho"]).addcmul_(param.grad, param.grad, value=1 - group["rho"])
                param.addcdiv_(param.grad, square_avg.add(group["eps"]).sqrt_(), value=-group["lr"])
        return loss
