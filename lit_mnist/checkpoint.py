"""Checkpoints: where runs keep them, read as data (``weights_only=True``), written atomically, loaded."""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO, XLACheckpointIO
from lightning.fabric.utilities import move_data_to_device

from lit_mnist.errors import LitMNISTError
from lit_mnist.internals import saved_class_path
from lit_mnist.models.classifier import MNISTClassifier

#: The folder ``fit`` logs runs under by default: ``<save_dir>/<run name>/version_N/checkpoints/``.
SAVE_DIR = "lightning_logs"


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


def _save_atomically(checkpoint: dict[str, Any], path: Any) -> None:
    """``torch.save`` into a file beside ``path``, flushed to disk and renamed over ``path``."""
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
        _save_atomically(checkpoint, path)


class AtomicXLACheckpointIO(XLACheckpointIO):
    """``AtomicCheckpointIO`` for Lightning's XLA strategies (TPU), which take only an ``XLACheckpointIO``.

    Like Lightning's ``XLACheckpointIO`` it copies the tensors from the XLA device to the CPU
    first (``Tensor.to``), so the file loads without torch-xla; it then writes as
    ``AtomicCheckpointIO`` does. ``configs/trainer/tpu.yaml`` sets it.
    """

    def __init__(self) -> None:
        # Not XLACheckpointIO.__init__, which only refuses to exist without torch-xla: this class
        # needs none, so tpu.yaml parses anywhere and a machine without a TPU gets Lightning's refusal.
        pass

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        _save_atomically(move_data_to_device(checkpoint, torch.device("cpu")), path)


def load_model(ckpt_path: str | Path, checkpoint: dict[str, Any]) -> MNISTClassifier:
    """The model of a checkpoint written by ``python -m lit_mnist fit``, on the CPU in eval mode.

    Args:
        ckpt_path: the checkpoint file.
        checkpoint: its content as ``read_checkpoint`` returns it, read for the model's class.
    """
    class_path = saved_class_path(checkpoint)
    if class_path is None:
        raise LitMNISTError(
            f"{ckpt_path} does not record its model class: "
            "use a checkpoint written by python -m lit_mnist fit."
        )
    model_class = import_class_path(class_path)
    if model_class is None:
        raise LitMNISTError(f"{ckpt_path} was saved from {class_path}, which cannot be imported.")
    if not (isinstance(model_class, type) and issubclass(model_class, MNISTClassifier)):
        raise LitMNISTError(f"{ckpt_path} was saved from {class_path}, which is not an MNISTClassifier.")
    return model_class.load_from_checkpoint(ckpt_path, map_location="cpu").eval()


def check_model_class(checkpoint: dict[str, Any], path: str | Path, wanted: str | None) -> None:
    """Refuse a checkpoint saved from another model class than the config names.

    Left alone, LightningCLI would quietly build the checkpoint's class instead of the config's.

    Args:
        checkpoint: the checkpoint's content (``read_checkpoint``).
        path: the checkpoint file, for the message.
        wanted: the config's model ``class_path``; ``None`` checks nothing.
    """
    saved = saved_class_path(checkpoint)
    if not (saved and wanted):
        return
    saved_class, wanted_class = import_class_path(saved), import_class_path(wanted)
    if (saved_class is not wanted_class) if saved_class and wanted_class else saved != wanted:
        raise LitMNISTError(
            f"{path} was saved from a {saved} model but the config asks for {wanted}: "
            "use the config the checkpoint was trained with."
        )


def run_name(config_files: Sequence[Any], class_path: str | None) -> str:
    """A run's name, the folder under the save dir that its versions go to.

    Args:
        config_files: The ``--config`` files, in order; the first one's stem names the run.
        class_path: The model's class path, whose class name in lower case names a run without a config.
    """
    if config_files:
        return Path(str(config_files[0])).stem
    return (class_path or "model").rsplit(".", 1)[-1].lower()


def find_last(run_dir: str | Path) -> Path | None:
    """The newest (by modification time) ``version_*/checkpoints/last.ckpt`` under ``run_dir``, else ``None``.

    Args:
        run_dir: a run's log folder, ``<save_dir>/<run name>``.
    """
    found = sorted(Path(run_dir).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_ckpt_path(ckpt_path: str | Path, run_dir: str | Path) -> Path:
    """``ckpt_path`` as a file: ``last`` is the newest ``last.ckpt`` of the run (``find_last``).

    Args:
        ckpt_path: A checkpoint file, or ``last``.
        run_dir: The run's log folder, ``<save_dir>/<run name>``, where ``last`` is looked for.

    Raises:
        LitMNISTError: ``last`` and the run has no ``last.ckpt``.
    """
    if str(ckpt_path) != "last":
        return Path(ckpt_path)
    last = find_last(run_dir)
    if last is None:
        raise LitMNISTError(f"--ckpt_path last: no last.ckpt under {Path(run_dir)}/version_*/checkpoints/.")
    return last
