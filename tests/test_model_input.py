"""The model owns its input: every path that feeds a model feeds it the same way.

A model trained with ``standardize`` is given the same raw test images (uint8, or floats in
[0, 1]) through ``predict`` (the checkpoint alone restores the setting), ``predict_proba``, its
ONNX and TorchScript exports and ``serve``; all must give the same probabilities to 1e-5.
"""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from helpers import REPO, SHORT_FIT, run_cli, running

from lit_mnist import MLP
from lit_mnist.__main__ import main
from lit_mnist.checkpoint import load_model, read_checkpoint
from lit_mnist.data import load_mnist

COUNT = 200


@pytest.fixture(scope="module")
def standardized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint of the MLP trained on standardized inputs, and its log folder."""
    logs = tmp_path_factory.mktemp("logs")
    result = run_cli(
        "fit", "--config", "configs/mlp.yaml", *SHORT_FIT, "--model.init_args.standardize", "true",
        "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", str(logs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return logs / "mlp" / "version_0" / "checkpoints" / "last.ckpt", logs


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_mnist(REPO / "data", train=False)[0][:COUNT]


def _reference(ckpt: Path, images: torch.Tensor) -> torch.Tensor:
    model = load_model(ckpt, read_checkpoint(ckpt))
    assert model.standardize is True
    return model.predict_proba(images)


def test_the_setting_is_saved_and_matters(standardized, images) -> None:
    ckpt, _ = standardized
    model = load_model(ckpt, read_checkpoint(ckpt))
    reference = model.predict_proba(images)
    torch.testing.assert_close(model.predict_proba(images.float() / 255), reference, atol=1e-5, rtol=0)
    unstandardized = MLP(hidden_sizes=[128, 256])
    unstandardized.load_state_dict(model.state_dict())
    assert (unstandardized.predict_proba(images) - reference).abs().max() > 0.01  # the test can tell


def test_predict_with_the_checkpoint_gives_the_same_probabilities(standardized, images) -> None:
    ckpt, logs = standardized
    result = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(ckpt),
        "--trainer.logger.init_args.save_dir", str(logs), "--trainer.limit_predict_batches", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = logs.glob("mlp/version_*/predictions.csv")
    with written.open() as f:
        rows = list(csv.DictReader(f))[:COUNT]
    probs = torch.tensor([[float(row[f"prob_{k}"]) for k in range(10)] for row in rows])
    torch.testing.assert_close(probs, _reference(ckpt, images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_give_the_same_probabilities(standardized, images, tmp_path: Path, fmt: str) -> None:
    ckpt, _ = standardized
    output = tmp_path / f"model.{fmt}"
    main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output), "--check_count", "5"])
    x = (images.float() / 255).unsqueeze(1)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    else:
        with torch.no_grad():
            logits = torch.jit.load(str(output))(x)
    torch.testing.assert_close(logits.softmax(dim=1), _reference(ckpt, images), atol=1e-5, rtol=0)
    assert np.isfinite(logits.numpy()).all()


def test_serve_gives_the_same_probabilities(standardized, images) -> None:
    """``serve`` feeds the model the JSON pixels as they are (0…255), through the model's own transform."""
    ckpt, _ = standardized
    reference = _reference(ckpt, images[:20])
    with running("--ckpt_path", str(ckpt)) as server:
        for image, expected in zip(images[:20], reference, strict=True):
            body = json.dumps({"pixels": image.tolist()}).encode()
            request = urllib.request.Request(
                f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                (answer,) = json.load(response)["models"]
            torch.testing.assert_close(torch.tensor(answer["probs"]), expected, atol=1e-5, rtol=0)
