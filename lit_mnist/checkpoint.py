"""Checkpoints: read as data (``weights_only=True``) with one-sentence errors, written atomically."""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO

from lit_mnist.errors import LitMNISTError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU as tensors and plain data only, or raise ``LitMNISTError``.

    ``weights_only=True`` never unpickles arbitrary objects, so a checkpoint from someone else cannot
    run code here; one that needs more than plain data is refused, not loaded another way.
    """
    path = Path(path)
    if not path.is_file():
        raise LitMNISTError(f"Checkpoint file {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LitMNISTError(
            f"Refusing to load {path}: it holds Python objects that are not tensors or plain data, "
            "and unpickling them could run code on this machine. Load only checkpoints written by lit_mnist."
        ) from None
    except Exception:
        raise LitMNISTError(
            f"{path} is not a readable checkpoint: the file is truncated, corrupt or not a checkpoint."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise LitMNISTError(f"{path} is not a Lightning checkpoint: it has no state_dict.")
    return checkpoint


def import_class_path(class_path: str) -> Any:
    """The object a dotted ``module.Name`` path names, or ``None`` when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every local file system.

    Lightning's own writer stages the file in the system temporary folder and moves it into
    place; when that folder is on another file system (a tmpfs ``/tmp``), the move is a copy that
    a kill can leave half-done over the previous checkpoint. This one writes beside the target,
    flushes it to disk and renames it over the target, and names the target when writing fails.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror, str(target)) from None
