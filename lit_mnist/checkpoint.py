"""Reading checkpoints as data: ``torch.load(weights_only=True)``, with one-sentence errors."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch

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
