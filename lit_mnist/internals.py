"""Every private detail of another library that this package relies on, because no public way exists.

Each has a test in ``tests/test_internals.py`` that fails when the library changes it.
"""

from __future__ import annotations

from typing import Any


def saved_class_path(checkpoint: dict[str, Any]) -> str | None:
    """The model class a LightningCLI checkpoint was saved from, e.g. ``lit_mnist.models.mlp.MLP``.

    LightningCLI stores it under ``hyper_parameters["_class_path"]`` so that
    ``load_from_checkpoint`` on a base class can rebuild the right subclass; Lightning reads the
    key itself but offers no public accessor, and the commands need the class before loading
    the weights (to refuse a checkpoint of another class, or of a class that is not a model).

    Args:
        checkpoint: A checkpoint's content, as ``lit_mnist.checkpoint.read_checkpoint`` returns it.
    """
    value = checkpoint.get("hyper_parameters", {}).get("_class_path")
    return value if isinstance(value, str) and value else None
