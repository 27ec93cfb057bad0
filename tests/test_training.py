"""Real training on the vendored MNIST, through the Python API a user would write."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import REPO
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import MLP, MNISTDataModule


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


def test_epoch_metrics_cover_every_batch(tiny_mnist):
    """train/ and val/ metrics are over the whole epoch, not over the batch they were logged on."""
    L.seed_everything(0)
    model = MLP(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))  # weights stay fixed
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
