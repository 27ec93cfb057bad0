"""On one CUDA GPU (marker ``gpu``; skipped without one): the on-device data path, bf16-mixed, GPU to CPU export, the speedrun.

Run on the GPU machine by ``benchmarks/device_check.py`` (``pytest -m gpu tests/test_gpu.py``). Each test reads
the vendored MNIST from a copy under pytest's temporary folder, so nothing is written beside the checkout.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO, quiet_trainer, run_cli

from lit_mnist import MLP, MNISTDataModule
from lit_mnist.data.mnist import load_mnist

pytestmark = pytest.mark.gpu
ACCELERATOR = "gpu"
TRAINER = ("--config", "configs/trainer/gpu.yaml", "--trainer.accelerator", ACCELERATOR)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    """A copy of the vendored MNIST (the CLI decompresses it beside itself on first use)."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(REPO / "data" / "MNIST" / "raw", root / "MNIST" / "raw")
    return root


class _Batches(L.Callback):
    """The first training batches as the model receives them, copied to the host."""

    def __init__(self, count: int) -> None:
        self.count, self.batches = count, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx < self.count:
            assert batch[0].device.type == "cuda" and batch[1].device.type == "cuda"
            self.batches.append(tuple(t.cpu() for t in batch))


def _fit_mlp(data: Path, on_device: bool) -> tuple[list, dict]:
    L.seed_everything(0)
    model = MLP(hidden_sizes=[64])
    datamodule = MNISTDataModule(data_dir=str(data), batch_size=64, val_size=1000, on_device=on_device)
    batches = _Batches(5)
    trainer = quiet_trainer(
        accelerator=ACCELERATOR,
        devices=1,
        max_steps=50,
        limit_val_batches=0,
        deterministic=True,
        callbacks=[batches],
    )
    trainer.fit(model, datamodule=datamodule)
    return batches.batches, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def test_on_device_data_gives_the_host_path_batches_and_weights(mnist):
    resident, resident_weights = _fit_mlp(mnist, on_device=True)
    copied, copied_weights = _fit_mlp(mnist, on_device=False)
    assert len(resident) == len(copied) == 5
    for (rx, ry), (cx, cy) in zip(resident, copied, strict=True):
        assert rx.shape == (64, 1, 28, 28) and torch.equal(rx, cx) and torch.equal(ry, cy)
    # the same batches in the same order and deterministic kernels: the same 50 Adam steps, bit for bit
    for key, value in copied_weights.items():
        assert torch.equal(resident_weights[key], value), key


@pytest.fixture(scope="module")
def cnn_run(mnist, tmp_path_factory) -> tuple[Path, str]:
    """One epoch of configs/cnn.yaml in bf16-mixed on the GPU: its log folder and its output."""
    logs = tmp_path_factory.mktemp("logs")
    result = run_cli("fit", "--config", "configs/cnn.yaml", *TRAINER, "--trainer.max_epochs", "1",
                     "--data.init_args.data_dir", str(mnist), "--trainer.logger.init_args.save_dir", str(logs))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return logs, result.stdout


def test_bf16_mixed_cnn_reaches_a_sane_accuracy_in_one_epoch(cnn_run):
    logs, out = cnn_run
    accuracy = float(re.search(r"Test accuracy ([\d.]+) %", out).group(1))
    assert 90 < accuracy <= 100  # the tutorial's CNN reaches about 98 % after one epoch in float32
    checkpoint = torch.load(next((logs / "cnn" / "version_0" / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=False)  # fmt: skip
    assert checkpoint["hyper_parameters"]["_class_path"] == "lit_mnist.CNN"
    assert checkpoint["global_step"] == 1100  # 55,000 training images in batches of 50


def test_a_gpu_checkpoint_exports_and_predicts_on_the_cpu(cnn_run, mnist, tmp_path, monkeypatch):
    logs, _ = cnn_run
    best = next((logs / "cnn" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    stored = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    assert all(
        v.dtype == torch.float32 for k, v in stored.items() if v.is_floating_point()
    )  # bf16 autocast only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # export and predict as on a machine without a GPU
    onnx_file = tmp_path / "cnn.onnx"
    export = run_cli("export", "--ckpt_path", str(best), "--format", "onnx", "--output", str(onnx_file),
                     "--data_dir", str(mnist))  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert "it matches PyTorch" in export.stdout
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images, labels = load_mnist(mnist, train=False)
    x = (images[:2000].float() / 255).unsqueeze(1).numpy()
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    accuracy = float((logits.argmax(-1) == labels[:2000].numpy()).mean())
    assert accuracy > 0.9
    predict = run_cli("predict", "--config", "configs/cnn.yaml", "--trainer.accelerator", "cpu", "--ckpt_path", str(best),
                      "--data.init_args.data_dir", str(mnist), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"))  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    rows = (tmp_path / "logs" / "cnn" / "version_0" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 10_001  # a header and the 10,000 test images


def test_speedrun_config_runs_on_the_gpu(mnist, tmp_path):
    result = run_cli("fit", "--config", "configs/speedrun.yaml", *TRAINER, "--data.init_args.data_dir", str(mnist),
                     "--trainer.logger.init_args.save_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"Test accuracy ([\d.]+) %", result.stdout).group(1))
    assert accuracy > 98.5  # the speedrun's 2 epochs reach about 99 %
    assert np.isfinite(float(re.search(r"loss ([\d.]+)", result.stdout.split("Test accuracy")[-1]).group(1)))
