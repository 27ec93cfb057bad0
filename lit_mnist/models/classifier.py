"""The one LightningModule every seed model shares: loss, metrics, logging and the optimizer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy


def _describe(value: Any) -> Any:
    """A callable hyperparameter as plain text, so checkpoints hold only plain data."""
    if value is None or isinstance(value, (str, int, float, bool, dict, list)):
        return value
    func = getattr(value, "func", value)
    name = f"{func.__module__}.{func.__qualname__}" if hasattr(func, "__qualname__") else repr(func)
    keywords = getattr(value, "keywords", None)
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in keywords.items())})" if keywords else name


class MNISTClassifier(L.LightningModule):
    """Trains ``net`` (logits out) with cross-entropy and reports loss and accuracy per split.

    Subclasses only build their network and pass it here; this class owns the loss, the
    torchmetrics accuracy, the ``train/``, ``val/`` and ``test/`` logging and the optimizer.
    The optimizer (and an optional learning-rate scheduler) arrive as callables, the way
    LightningCLI injects them from a config (``model.init_args.optimizer``), so a config can swap
    Adam, RMSprop or SGD and their arguments without touching code.

    Inputs are float images ``[B, 1, 28, 28]`` in [0, 1] (the data module scales them).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        for key in ("optimizer", "lr_scheduler"):
            if key in self.hparams:
                self.hparams[key] = _describe(self.hparams[key])
        self.net = net
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.metrics = nn.ModuleDict()
        for split in ("train", "val", "test"):
            self.metrics[f"{split}_loss"] = MeanMetric()
            self.metrics[f"{split}_acc"] = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: Any, split: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        loss_metric, acc_metric = self.metrics[f"{split}_loss"], self.metrics[f"{split}_acc"]
        loss_metric.update(loss.detach(), weight=len(y))
        acc_metric.update(logits.detach(), y)
        for name, metric in (("loss", loss_metric), ("acc", acc_metric)):
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=split != "test")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Softmax probabilities and the predicted digit, plus the true label when the batch has one."""
        probs = self(batch[0]).softmax(dim=-1)
        out: dict[str, Any] = {"probs": probs, "pred": probs.argmax(dim=-1)}
        if len(batch) > 1:
            out["target"] = batch[1]
        return out

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
