"""Callbacks the CLI adds to every run."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


class LineProgressBar(ProgressBar):
    """Progress for logs and CI: a line at each quarter of an epoch and one with the epoch's metrics.

    Lightning's tqdm bar writes a new line per refresh when its output is not a terminal; the
    CLI uses this bar instead in that case.
    """

    def __init__(self, lines_per_epoch: int = 4) -> None:
        super().__init__()
        self.lines_per_epoch = lines_per_epoch
        self._enabled = True
        self._epoch_start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, flush=True)

    def _epoch(self, trainer: L.Trainer) -> str:
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        total = self.total_train_batches
        if not isinstance(total, int) or total < 2 * self.lines_per_epoch:
            return
        done = batch_idx + 1
        step = total // self.lines_per_epoch
        if done % step == 0 and done < total - step // 2:
            elapsed = time.perf_counter() - self._epoch_start
            self._print(f"{self._epoch(trainer)}: {done}/{total} batches, {elapsed:.1f} s")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if "/" in k}
        shown = "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items())
        )
        self._print(f"{self._epoch(trainer)} done in {elapsed:.1f} s  {shown}")
