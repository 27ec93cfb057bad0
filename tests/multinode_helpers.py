"""Helpers for tests/test_multinode.py: a tiny MNIST whose images carry their index, and a callback
added to the CLI with ``--trainer.callbacks+=multinode_helpers.RecordRank`` (``tests/`` on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from helpers import write_idx


def write_indexed_mnist(root: Path, n_train: int, n_test: int = 40) -> Path:
    """A tiny MNIST under ``root`` whose image ``i`` holds ``i // 256, i % 256`` in its first two pixels."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def image_ids(images: torch.Tensor) -> list[int]:
    """The indices ``write_indexed_mnist`` wrote into a batch of [0, 1]-scaled images ``[B, 1, 28, 28]``."""
    pixels = (images[:, 0, 0, :2].double() * 255).round().long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


class RecordRank(L.Callback):
    """Writes, for its process, the image ids each training epoch trained on and the weights after it.

    ``out_dir/rank{R}_epoch{E}.json`` holds ``{"rank", "world_size", "ids"}``, and
    ``out_dir/rank{R}_epoch{E}.pt`` the model's state dict. With ``kill_rank`` set, that process
    kills itself (SIGKILL, as a crashed machine would stop) at training batch ``kill_at_batch``.
    """

    def __init__(self, out_dir: str, kill_rank: int | None = None, kill_at_batch: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.kill_rank = kill_rank
        self.kill_at_batch = kill_at_batch
        self.ids: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ids = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.kill_rank and batch_idx == self.kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        self.ids += image_ids(batch[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}"
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "ids": self.ids}
        stem.with_suffix(".json").write_text(json.dumps(record))
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, stem.with_suffix(".pt"))
