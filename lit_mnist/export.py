"""``python -m lit_mnist export``: a checkpoint to ONNX or TorchScript, checked against PyTorch.

The checkpoint alone is enough: it holds the model's class and init arguments, so the model is
rebuilt without its config. The exported model is the model's ``forward``, input transform
included: it takes float images ``[N, 1, 28, 28]`` in [0, 1] (standardized inside when the model
was trained with ``standardize``) and returns the network's outputs (logits for most models),
with a variable batch size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse.typing import PositiveInt

from lit_mnist.checkpoint import SAVE_DIR, load_model, read_checkpoint, resolve_ckpt_path
from lit_mnist.cli import run_command
from lit_mnist.data.mnist import load_mnist
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

#: The exported model must match PyTorch's outputs to this absolute difference.
TOLERANCE = 1e-5


def check_inputs(
    model: MNISTClassifier, checkpoint: dict[str, Any], data_dir: str | None, count: int
) -> tuple[torch.Tensor, str]:
    """Inputs to compare the exported model on, and what they are.

    For image models: the first ``count`` MNIST test images as float ``[N, 1, 28, 28]`` in
    [0, 1], from the run's ``data_dir`` (saved in the checkpoint; ``data_dir`` overrides it).
    For other models: ``count`` standard-normal inputs shaped like ``example_input_array``.
    """
    example = model.example_input_array
    if tuple(example.shape[1:]) != (1, 28, 28):
        return torch.randn(count, *example.shape[1:], generator=torch.Generator().manual_seed(0)), (
            f"{count} random inputs"
        )
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    images, _ = load_mnist(data_dir or saved.get("data_dir", "data"), train=False)
    return images[:count].unsqueeze(1).float() / 255, f"{count} test images"


@contextmanager
def _without_torchscript_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.jit|to_torchscript|TorchScript)")
        yield


def export_model(model: MNISTClassifier, fmt: str, output: Path) -> None:
    """Write ``model`` as ONNX (torch.export-based exporter) or TorchScript (traced) to ``output``.

    TorchScript is deprecated in PyTorch and Lightning; their deprecation warnings are not shown.
    """
    example = model.example_input_array
    if fmt == "onnx":
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            model,
            (example,),
            str(output),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        return
    with _without_torchscript_deprecation():
        model.to_torchscript(file_path=str(output), method="trace", example_inputs=example)


def run_exported(fmt: str, output: Path, x: torch.Tensor) -> np.ndarray:
    """The exported model's outputs for ``x``: onnxruntime on the CPU for ONNX, ``torch.jit.load``."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad(), _without_torchscript_deprecation():
        return torch.jit.load(str(output), map_location="cpu")(x).numpy()


def export(
    ckpt_path: str,
    format: Literal["onnx", "torchscript"],
    output: Path,
    overwrite: bool = False,
    run: str | None = None,
    save_dir: str = SAVE_DIR,
    data_dir: str | None = None,
    check_count: PositiveInt = 100,
) -> None:
    """Export a checkpoint to ONNX or TorchScript, and check the file against PyTorch.

    The exported file takes float images [N, 1, 28, 28] in [0, 1] and returns the model's outputs
    (logits for most models). It is run on test images (onnxruntime for ONNX) and must match the
    PyTorch model within 1e-5 with the same predicted class for every input, or the command fails
    (and keeps the file, for a look).

    Args:
        ckpt_path: A checkpoint written by ``python -m lit_mnist fit``, or ``last`` for the newest
            ``last.ckpt`` of ``--run``.
        format: ``onnx`` (PyTorch's torch.export-based exporter) or ``torchscript`` (traced).
        output: The file to write; its folder must exist.
        overwrite: Replace ``output`` if it exists (otherwise an existing file is an error).
        run: The run whose ``last.ckpt`` ``--ckpt_path last`` takes: its name under ``--save_dir``
            (``fit`` names a run after its first config file, e.g. ``mlp``).
        save_dir: The folder runs are logged under.
        data_dir: The folder holding ``MNIST/raw/`` for the check (default: the run's).
        check_count: How many test images to check the exported file on.
    """
    if output.exists() and not overwrite:
        raise LitMNISTError(f"{output} already exists: pass --overwrite true to replace it.")
    if not output.parent.is_dir():
        raise LitMNISTError(f"Cannot write {output}: the folder {output.parent} does not exist.")
    if ckpt_path == "last" and run is None:
        raise LitMNISTError("export: --ckpt_path last needs --run, the run's name (e.g. mlp).")
    path = resolve_ckpt_path(ckpt_path, Path(save_dir) / (run or ""))
    checkpoint = read_checkpoint(path)
    model = load_model(path, checkpoint)
    x, what = check_inputs(model, checkpoint, data_dir, check_count)
    try:
        export_model(model, format, output)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LitMNISTError(f"Exporting {type(model).__name__} to {format} failed: {reason}") from None
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_exported(format, output, x)
    diff = float(np.abs(got - expected).max())
    same = int((got.argmax(-1) == expected.argmax(-1)).sum())
    if diff > TOLERANCE or same != len(x):
        raise LitMNISTError(
            f"{output} does not match the PyTorch model on {what}: largest difference {diff:.2e} "
            f"(allowed {TOLERANCE:.0e}), same prediction for {same} of {len(x)}; the file is kept."
        )
    print(
        f"Exported {type(model).__name__} to {output} ({format}); on {what} it matches PyTorch: "
        f"largest difference {diff:.2e}, same prediction for all {len(x)}."
    )


def main(args: Sequence[str]) -> None:
    """``python -m lit_mnist export ARGS`` (``export``'s options)."""
    run_command(export, args, "export")
