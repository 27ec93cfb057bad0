"""Real training on the vendored MNIST, through the Python API a user would write."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import lightning as L
import pytest
import torch
from helpers import REPO, quiet_trainer, write_mnist
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import MLP, MNISTDataModule
from lit_mnist.cli import LitMNISTCLI
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import TRAIN_METRICS_EVERY


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


class EpochBatches(L.Callback):
    """Each split's batches of its last epoch as the model was given them, and the training metrics
    as a callback reads them in ``on_train_epoch_end`` (before the model's own hook, as progress bars do)."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.read_at_epoch_end: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.batches["train"] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.batches["val"] = []

    def on_test_epoch_start(self, trainer, pl_module):
        self.batches["test"] = []

    def _keep(self, split, batch):
        self.batches[split].append((batch[0].clone(), batch[1].clone()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._keep("train", batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep("val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep("test", batch)

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.read_at_epoch_end = {k: metrics[k].clone() for k in ("train/acc", "train/loss")}


def _expected(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean cross-entropy over every sample of ``batches``, computed here from the logits."""
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(images)
    return (logits.argmax(1) == labels).float().mean(), torch.nn.functional.cross_entropy(logits, labels)


@pytest.mark.parametrize(
    ("stop", "last_epoch_batches"),
    [({}, 107), ({"max_steps": 150}, 150 - 107), ({"val_check_interval": 30}, 107)],
    ids=["two-epochs", "max-steps-mid-epoch", "validation-mid-epoch"],
)
def test_epoch_metrics_are_over_every_sample_when_the_last_batch_is_short(stop, last_epoch_batches, tmp_path):
    """train/, val/ and test/ metrics are over every sample of the epoch, batches weighted by their size.

    960 training images in batches of 9 are 107 batches, the last of 6 (more than the
    ``TRAIN_METRICS_EVERY`` steps after which the training metrics are handed to torchmetrics);
    40 validation and 40 test images in batches of 16 end with a batch of 8. A callback reading
    the training metrics in its ``on_train_epoch_end`` sees the same values.
    """
    assert TRAIN_METRICS_EVERY < 106
    data_dir = write_mnist(tmp_path / "data", n_train=1000, n_test=40)
    L.seed_everything(0)
    model = MLP(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))  # weights stay fixed
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=9, eval_batch_size=16, val_size=40)
    seen = EpochBatches()
    trainer = quiet_trainer(max_epochs=2, callbacks=[seen], **stop)
    trainer.fit(model, data)
    metrics = dict(trainer.callback_metrics)
    trainer.test(model, data, verbose=False)
    metrics.update(trainer.callback_metrics)
    assert len(seen.batches["train"]) == last_epoch_batches
    assert (
        [len(b[1]) for b in seen.batches["val"]] == [len(b[1]) for b in seen.batches["test"]] == [16, 16, 8]
    )
    for split, batches in seen.batches.items():
        acc, loss = _expected(model, batches)
        torch.testing.assert_close(metrics[f"{split}/acc"], acc)
        torch.testing.assert_close(metrics[f"{split}/loss"], loss)
    acc, loss = _expected(model, seen.batches["train"])
    torch.testing.assert_close(seen.read_at_epoch_end["train/acc"], acc)
    torch.testing.assert_close(seen.read_at_epoch_end["train/loss"], loss)


class NaNInOneBatch(L.Callback):
    """Makes the network's outputs NaN for one training batch (a NaN weight during that step)."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx
        self.kept: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            weight = next(pl_module.net.parameters())
            self.kept = weight.detach().clone()
            with torch.no_grad():
                weight[0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            with torch.no_grad():
                next(pl_module.net.parameters()).copy_(self.kept)


@pytest.mark.parametrize("val_size", [0, 40], ids=["check-at-epoch-end", "check-at-validation"])
def test_one_nan_batch_among_finite_ones_stops_fit(val_size, tiny_mnist):
    """A NaN loss in one batch makes the epoch's training loss NaN, and the divergence check sees it."""
    L.seed_everything(0)
    model = MLP(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=16, val_size=val_size)
    trainer = quiet_trainer(max_epochs=1, callbacks=[NaNInOneBatch(batch_idx=2)])
    with pytest.raises(LitMNISTError, match="Training stopped in epoch 1: the training loss became nan"):
        trainer.fit(model, data)


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


@pytest.mark.parametrize(
    ("options", "written"),
    [
        ([], {"best-epoch00-val_acc", "last"}),
        (["--checkpoint.monitor", "null"], {"epoch00", "last"}),
        (["--checkpoint.monitor", "null", "--checkpoint.filename", "final{epoch}"], {"final0", "last"}),
    ],
)
def test_checkpoints_are_named_by_what_picked_them(options, written, tiny_mnist, tmp_path):
    """The default name gives the validation accuracy, or only the epoch when nothing is monitored."""
    args = ["--config", "configs/mlp.yaml", "--data.init_args.data_dir", str(tiny_mnist)]
    args += ["--data.init_args.val_size", "40", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path), *options]
    cli = LitMNISTCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    names = {p.stem for p in tmp_path.glob("**/checkpoints/*.ckpt")}
    assert {name[:20] for name in names} == written


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
