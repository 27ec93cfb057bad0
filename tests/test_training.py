"""Real training on the vendored MNIST, through the Python API a user would write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import lightning as L
import pytest
import torch
from helpers import REPO, quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import MLP, MNISTDataModule
from lit_mnist.cli import LitMNISTCLI


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    logs = tmp_path_factory.mktemp("tb")
    L.seed_everything(0)
    model = MLP()
    data = MNISTDataModule(data_dir=str(REPO / "data"), batch_size=32)
    trainer = quiet_trainer(max_epochs=1, logger=TensorBoardLogger(str(logs), name="mlp"))
    trainer.fit(model, data)
    results = trainer.test(model, data, verbose=False)[0]
    return trainer, results


def test_mlp_one_epoch_reaches_95_percent(one_epoch):
    _, results = one_epoch
    assert results["test/acc"] >= 0.95
    assert results["test/loss"] < 0.2


def test_tensorboard_event_file_has_the_scalars(one_epoch):
    trainer, _ = one_epoch
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert tag in tags
    assert 0.9 < events.Scalars("val/acc")[-1].value <= 1.0


def test_epoch_metrics_cover_every_batch(tiny_mnist):
    """train/ and val/ metrics are over the whole epoch, not over the batch they were logged on."""
    L.seed_everything(0)
    model = MLP(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))  # weights stay fixed
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=16, eval_batch_size=8, val_size=40)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, data)
    for split in ("train", "val"):
        images, labels = data.splits[split]
        with torch.no_grad():
            logits = model(images.unsqueeze(1).float() / 255)
        expected_acc = (logits.argmax(1) == labels).float().mean()
        expected_loss = torch.nn.functional.cross_entropy(logits, labels)
        torch.testing.assert_close(trainer.callback_metrics[f"{split}/acc"], expected_acc)
        torch.testing.assert_close(trainer.callback_metrics[f"{split}/loss"], expected_loss)


class HookCounter(L.Callback):
    """Counts per-batch and per-step hook calls and the samples each batch hook is given."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.samples = 0
        self.lr_seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls["batch_start"] += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls["batch_end"] += 1
        self.samples += len(batch[0])

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls["before_backward"] += 1

    def on_after_backward(self, trainer, pl_module):
        self.calls["after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls["before_optimizer_step"] += 1


SHIPPED = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_calls_each_hook_once_per_batch(config, tiny_mnist, tmp_path):
    """Lightning's ordinary loop: every batch hook once per batch, with every sample, once per epoch."""
    data_args = [] if config == "linear_blobs.yaml" else ["--data.init_args.data_dir", str(tiny_mnist)]
    data_args += [] if config == "linear_blobs.yaml" else ["--data.init_args.val_size", "40"]
    data_args += ["--data.init_args.batch_size", "16"]
    args = ["--config", f"configs/{config}", *data_args, "--trainer.max_epochs", "2"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.accelerator", "cpu"]
    cli = LitMNISTCLI(args=args, run=False)
    counter = HookCounter()
    cli.trainer.callbacks.append(counter)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    n_train = len(cli.datamodule.splits["train"][0]) if config != "linear_blobs.yaml" else 2000
    batches = -(-n_train // 16)
    assert counter.samples == 2 * n_train
    assert counter.calls["batch_start"] == counter.calls["batch_end"] == 2 * batches
    for hook in ("before_backward", "after_backward", "before_optimizer_step"):
        assert counter.calls[hook] == 2 * batches, hook
    assert cli.trainer.global_step == 2 * batches


def test_gradient_clipping_and_accumulation_train_a_seed_config(tiny_mnist, tmp_path):
    args = ["--config", "configs/mlp.yaml", "--data.init_args.data_dir", str(tiny_mnist)]
    args += ["--data.init_args.val_size", "40"]
    args += ["--data.init_args.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.gradient_clip_val", "1.0"]
    args += ["--trainer.accumulate_grad_batches", "2"]
    cli = LitMNISTCLI(args=args, run=False)
    counter = HookCounter()
    cli.trainer.callbacks.append(counter)
    before = [p.detach().clone() for p in cli.model.parameters()]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert counter.calls["before_backward"] == counter.calls["batch_end"] == 5  # 80 images / 16
    assert counter.calls["before_optimizer_step"] == cli.trainer.global_step == 3  # 2 + 2 + the last 1
    assert any(not torch.equal(a, b) for a, b in zip(before, cli.model.parameters(), strict=True))


def test_without_a_gpu_optimizer_steps_do_not_look_for_one_through_nvml():
    """Lightning's import asks for NVML-based GPU checks; the CLI's process set-up undoes it without a GPU.

    Importing lit_mnist itself changes nothing in the process.
    """
    probe = (
        "import os; import lightning; print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK')); "
        "import lit_mnist, lit_mnist.cli, torch; print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK')); "
        "lit_mnist.cli.configure_process(); "
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), torch.cuda.is_available())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    after_lightning, after_import, after_setup = out.stdout.split("\n")[:3]
    assert after_lightning == "1", (
        "Lightning no longer sets PYTORCH_NVML_BASED_CUDA_CHECK: drop lit_mnist's undo"
    )
    assert after_import == "1"
    check, gpu = after_setup.split()
    assert check == ("1" if gpu == "True" else "0")
