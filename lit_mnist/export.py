"""``python -m lit_mnist export``: a checkpoint to ONNX or TorchScript, checked against PyTorch.

The checkpoint alone is enough: LightningCLI saves the model's class path (``_class_path``) and
its init arguments in ``hyper_parameters``, so the model is rebuilt without its config. The
exported model takes what the PyTorch model's ``forward`` takes (float ``[N, 1, 28, 28]``
images in [0, 1], standardized if the run used ``data.standardize``) and returns its outputs
(logits for most models), with a variable batch size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_mnist.checkpoint import load_model, read_checkpoint
from lit_mnist.data.mnist import MNISTDataModule, load_mnist
from lit_mnist.errors import ArgumentParser, LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

FORMATS = ("onnx", "torchscript")
#: The exported model must match PyTorch's outputs to this absolute difference.
TOLERANCE = 1e-5


def check_inputs(
    model: MNISTClassifier, checkpoint: dict[str, Any], data_dir: str | None, count: int
) -> tuple[torch.Tensor, str]:
    """Inputs to compare the exported model on, and what they are.

    For image models: the first ``count`` MNIST test images, prepared by ``MNISTDataModule`` as
    in the run (its ``data_dir`` and ``standardize`` from the checkpoint; ``data_dir`` overrides
    the folder). For other models: ``count`` standard-normal inputs shaped like
    ``example_input_array``.
    """
    example = model.example_input_array
    if tuple(example.shape[1:]) != (1, 28, 28):
        return torch.randn(count, *example.shape[1:], generator=torch.Generator().manual_seed(0)), (
            f"{count} random inputs"
        )
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    data = MNISTDataModule(
        data_dir=data_dir or saved.get("data_dir", "data"), standardize=saved.get("standardize", False)
    )
    images, labels = load_mnist(data.data_dir, train=False)
    return data.on_after_batch_transfer((images[:count], labels[:count]), 0)[0], f"{count} test images"


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


def main(argv: Sequence[str] | None = None) -> None:
    """``export --ckpt_path CKPT --format onnx|torchscript --output FILE [--overwrite]``.

    Exports, then runs the exported file on test inputs and compares its outputs with the
    PyTorch model's: the largest absolute difference must be at most ``TOLERANCE`` and every
    argmax the same. Problems are raised as ``LitMNISTError`` (the CLI prints them in one line).
    """
    parser = ArgumentParser(
        prog="lit_mnist export",
        description="Export a checkpoint to ONNX or TorchScript and check it against PyTorch.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by python -m lit_mnist fit")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--output", required=True, type=Path, help="file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument(
        "--data_dir", default=None, help="folder with MNIST/raw/ for the check (default: the run's)"
    )
    parser.add_argument("--check_count", type=int, default=100, help="inputs to check on (default 100)")
    args = parser.parse_args(argv)
    output: Path = args.output
    if output.exists() and not args.overwrite:
        raise LitMNISTError(f"{output} already exists: pass --overwrite to replace it.")
    if not output.parent.is_dir():
        raise LitMNISTError(f"Cannot write {output}: the folder {output.parent} does not exist.")
    if args.check_count < 1:
        raise LitMNISTError(f"export: --check_count must be positive, got {args.check_count}.")

    checkpoint = read_checkpoint(args.ckpt_path)
    model = load_model(args.ckpt_path, checkpoint)
    x, what = check_inputs(model, checkpoint, args.data_dir, args.check_count)
    try:
        export_model(model, args.format, output)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LitMNISTError(f"Exporting {type(model).__name__} to {args.format} failed: {reason}") from None
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_exported(args.format, output, x)
    diff = float(np.abs(got - expected).max())
    same = int((got.argmax(-1) == expected.argmax(-1)).sum())
    if diff > TOLERANCE or same != len(x):
        raise LitMNISTError(
            f"{output} does not match the PyTorch model on {what}: largest difference {diff:.2e} "
            f"(allowed {TOLERANCE:.0e}), same prediction for {same} of {len(x)}; the file is kept."
        )
    print(
        f"Exported {type(model).__name__} to {output} ({args.format}); on {what} it matches PyTorch: "
        f"largest difference {diff:.2e}, same prediction for all {len(x)}."
    )
