"""Real training on the vendored MNIST, through the Python API a user would write."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import REPO
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import MLP, MNISTDataModule
from lit_mnist.errors import LitMNISTError


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    logs = tmp_path_factory.mktemp("tb")
    L.seed_everything(0)
    model = MLP()
    data = MNISTDataModule(data_dir=str(REPO / "data"), batch_size=32)
    trainer = L.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(str(logs), name="mlp"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
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


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_epoch_metrics_cover_every_batch(tiny_mnist, steps_per_execution):
    """train/ and val/ metrics are over the whole epoch, not over the batch they were logged on."""
    L.seed_everything(0)
    model = MLP(  # weights stay fixed
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0), steps_per_execution=steps_per_execution
    )
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=16, eval_batch_size=8, val_size=40)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    for split in ("train", "val"):
        images, labels = data.splits[split]
        with torch.no_grad():
            logits = model(images.unsqueeze(1).float() / 255)
        expected_acc = (logits.argmax(1) == labels).float().mean()
        expected_loss = torch.nn.functional.cross_entropy(logits, labels)
        torch.testing.assert_close(trainer.callback_metrics[f"{split}/acc"], expected_acc)
        torch.testing.assert_close(trainer.callback_metrics[f"{split}/loss"], expected_loss)


def _fit_tiny(data_dir, steps_per_execution: int, **trainer_args) -> tuple[MLP, L.Trainer]:
    L.seed_everything(0)
    model = MLP(
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        steps_per_execution=steps_per_execution,
    )
    data = MNISTDataModule(data_dir=str(data_dir), batch_size=16, val_size=40)  # 5 batches per epoch
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **trainer_args)
    trainer.fit(model, data)
    return model, trainer


def test_steps_per_execution_gives_the_same_training(tiny_mnist):
    """Several optimizer steps per training_step call: same batches, updates, schedule and metrics."""
    one, one_trainer = _fit_tiny(tiny_mnist, 1, max_epochs=2)
    three, three_trainer = _fit_tiny(tiny_mnist, 3, max_epochs=2)
    assert three_trainer.global_step == one_trainer.global_step == 10
    assert three.optimizers().param_groups[0]["lr"] == one.optimizers().param_groups[0]["lr"] == 1e-3 / 4
    for (name, a), b in zip(one.state_dict().items(), three.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        torch.testing.assert_close(three_trainer.callback_metrics[key], one_trainer.callback_metrics[key])


def test_steps_per_execution_stops_at_max_steps(tiny_mnist):
    _, trainer = _fit_tiny(tiny_mnist, 3, max_steps=4)
    assert trainer.global_step == 4


def test_steps_per_execution_refuses_plateau_scheduler(tiny_mnist):
    model = MLP(
        lr_scheduler=lambda opt: {
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
            "monitor": "val/loss",
        },
        steps_per_execution=2,
    )
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=16, val_size=40)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(LitMNISTError, match="ReduceLROnPlateau"):
        trainer.fit(model, data)


def test_steps_per_execution_must_be_positive():
    with pytest.raises(LitMNISTError, match="steps_per_execution must be 1 or more"):
        MLP(steps_per_execution=0)
