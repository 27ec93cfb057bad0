"""MNISTDataModule and the index-batch loader, on small IDX files the tests write."""

from __future__ import annotations

import gzip
import io
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO, write_idx, write_mnist
from jsonargparse import ArgumentError, ArgumentParser
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchvision.datasets import MNIST

from lit_mnist import MLP, MNISTDataModule
from lit_mnist.data import BatchIndexSampler, MNISTDataError, batch_loader, load_mnist
from lit_mnist.data.images import read_digit
from lit_mnist.errors import LitMNISTError


def _setup(data_dir: Path, stage: str = "fit", **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def test_split_sizes_dtype_and_range(tiny_mnist):
    dm = _setup(tiny_mnist, val_size=20, batch_size=16, eval_batch_size=7)
    dm.setup("test")
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [100, 20, 40]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
    assert labels.dtype == torch.int64
    scaled = MLP().prepare_input(images)  # the model owns its input transform
    assert scaled.dtype == torch.float32 and scaled.shape == (16, 1, 28, 28)
    assert scaled.min() >= 0.0 and scaled.max() <= 1.0
    torch.testing.assert_close(scaled, images.float() / 255)
    assert sum(len(b[0]) for b in dm.val_dataloader()) == 20
    assert sum(len(b[0]) for b in dm.test_dataloader()) == 40
    assert sum(len(b[0]) for b in dm.predict_dataloader()) == 40


def test_standardize(tiny_mnist):
    dm = _setup(tiny_mnist, val_size=0)
    images, _ = next(iter(dm.train_dataloader()))
    scaled = MLP(standardize=True).prepare_input(images)
    torch.testing.assert_close(scaled, (images.float() / 255 - 0.1307) / 0.3081)


def test_val_size_zero_trains_on_everything(tiny_mnist):
    dm = _setup(tiny_mnist, val_size=0)
    assert len(dm.splits["train"][0]) == 120
    assert dm.val_dataloader() == []


def test_split_is_seeded(tiny_mnist):
    def val_images(seed: int) -> torch.Tensor:
        return _setup(tiny_mnist, val_size=20, split_seed=seed).splits["val"][0]

    assert torch.equal(val_images(1), val_images(1))
    assert not torch.equal(val_images(1), val_images(2))


def test_train_and_val_are_disjoint_and_cover_the_training_set(tiny_mnist):
    dm = _setup(tiny_mnist, val_size=30)
    every = torch.cat([dm.splits["train"][0], dm.splits["val"][0]]).flatten(1)
    raw = MNIST(str(tiny_mnist), train=True).data.flatten(1)
    assert sorted(map(bytes, every.numpy())) == sorted(map(bytes, raw.numpy()))


def test_without_shuffle_every_epoch_walks_the_training_images_in_file_order(tiny_mnist):
    dm = _setup(tiny_mnist, val_size=30, batch_size=16, shuffle=False)
    held_out = set(map(bytes, dm.splits["val"][0].flatten(1).numpy()))
    raw = MNIST(str(tiny_mnist), train=True).data
    expected = torch.stack([image for image in raw if bytes(image.flatten().numpy()) not in held_out])
    for _ in range(2):
        walked = torch.cat([images for images, _ in dm.train_dataloader()]).squeeze(1)
        assert torch.equal(walked, expected)
    shuffled = _setup(tiny_mnist, val_size=30, batch_size=16)
    assert not torch.equal(
        torch.cat([images for images, _ in shuffled.train_dataloader()]).squeeze(1), expected
    )


def test_gz_files_are_extracted(tmp_path):
    src = write_mnist(tmp_path / "src") / "MNIST" / "raw"
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.iterdir():
        with f.open("rb") as fin, gzip.open(raw / f"{f.name}.gz", "wb") as fout:
            shutil.copyfileobj(fin, fout)
    images, labels = load_mnist(tmp_path / "data", train=False)  # load_mnist decompresses on its own
    assert images.shape == (40, 28, 28) and labels.tolist() == [i % 10 for i in range(40)]
    dm = _setup(tmp_path / "data", val_size=0)
    assert len(dm.splits["train"][0]) == 120
    assert (raw / "train-images-idx3-ubyte").read_bytes() == (src / "train-images-idx3-ubyte").read_bytes()
    assert not list(raw.glob(".*.partial"))


def test_missing_data_names_folder_and_files_quickly(tmp_path, monkeypatch):
    # torchvision's mirrors point at a closed local port: a download is tried, nothing leaves the machine
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    start = time.monotonic()
    with pytest.raises(MNISTDataError) as err:
        MNISTDataModule(data_dir=str(tmp_path / "nothing")).prepare_data()
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in message
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in message


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("not a folder")
    with pytest.raises(MNISTDataError, match="is a file"):
        MNISTDataModule(data_dir=str(path)).prepare_data()


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda raw: shutil.copy(raw / "train-labels-idx1-ubyte", raw / "train-images-idx3-ubyte"),
            "magic number is 2049",
        ),
        (
            lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(
                (raw / "train-images-idx3-ubyte").read_bytes()[:-100]
            ),
            "truncated",
        ),
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00"), "only 2 bytes"),
        (lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.zeros(119)), "has 120 images but"),
    ],
    ids=["labels-as-images", "truncated", "tiny", "count-mismatch"],
)
def test_corrupt_files_are_named(tiny_mnist, corrupt, message):
    raw = tiny_mnist / "MNIST" / "raw"
    corrupt(raw)
    with pytest.raises(MNISTDataError, match=message) as err:
        _setup(tiny_mnist)
    assert "train-" in str(err.value) and str(raw) in str(err.value)


@pytest.mark.parametrize("val_size", [120, 500])
def test_bad_val_size(tiny_mnist, val_size):
    with pytest.raises(LitMNISTError, match="val_size"):
        _setup(tiny_mnist, val_size=val_size)


@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("batch_size", -1), ("val_size", -1)])
def test_bad_sizes_are_refused_by_their_types(option, value):
    """The sizes' types (jsonargparse's PositiveInt, NonNegativeInt) refuse them when a config is parsed."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MNISTDataModule, "data")
    with pytest.raises(ArgumentError, match=f"(?s){option}.*does not conform to restriction"):
        parser.parse_args([f"--data.{option}={value}"])


def test_index_batches_equal_the_simple_loader():
    """The fast path yields the same batches, in the same order, as DataLoader + DistributedSampler."""
    x, y = torch.arange(103 * 4).view(103, 4), torch.arange(103)
    fast = batch_loader(x, y, batch_size=10, shuffle=True, seed=7)
    simple_sampler = DistributedSampler(TensorDataset(x, y), num_replicas=1, rank=0, shuffle=True, seed=7)
    simple = DataLoader(TensorDataset(x, y), batch_size=10, sampler=simple_sampler)
    orders = []
    for epoch in range(3):
        fast.sampler.set_epoch(epoch)
        simple_sampler.set_epoch(epoch)
        fast_batches, simple_batches = list(fast), list(simple)
        assert len(fast_batches) == len(simple_batches) == len(fast) == 11
        for (fx, fy), (sx, sy) in zip(fast_batches, simple_batches, strict=True):
            assert torch.equal(fx, sx) and torch.equal(fy, sy)
        orders.append(torch.cat([b[1] for b in fast_batches]))
    assert not torch.equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == list(range(103))


def test_shards_of_two_processes_cover_the_data_once():
    shards = [list(BatchIndexSampler(100, 8, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    flat = [sorted(i for batch in shard for i in batch.tolist()) for shard in shards]
    assert len(flat[0]) == len(flat[1]) == 50
    assert sorted(flat[0] + flat[1]) == list(range(100))


def _on_device_batches(data_dir: Path, accelerator: str) -> tuple[list, list]:
    """The first epoch's training batches with ``on_device`` and without, both moved to the device."""
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False)
    batches = []
    for on_device in (True, False):
        dm = MNISTDataModule(data_dir=str(data_dir), batch_size=16, val_size=40, on_device=on_device)
        dm.trainer = trainer
        dm.setup("fit")
        device = trainer.strategy.root_device
        batches.append([dm.transfer_batch_to_device(b, device, 0) for b in dm.train_dataloader()])
    return batches[0], batches[1]


def test_on_device_keeps_the_batches_and_their_order(tiny_mnist):
    resident, copied = _on_device_batches(tiny_mnist, "cpu")
    assert len(resident) == len(copied) == 5
    for (rx, ry), (cx, cy) in zip(resident, copied, strict=True):
        assert torch.equal(rx, cx) and torch.equal(ry, cy)


@pytest.mark.gpu
def test_on_device_cuts_the_batches_on_the_gpu(tiny_mnist):
    resident, copied = _on_device_batches(tiny_mnist, "gpu")
    for (rx, ry), (cx, cy) in zip(resident, copied, strict=True):
        assert rx.is_cuda and ry.is_cuda
        assert torch.equal(rx, cx) and torch.equal(ry, cy)


def test_test_digits_round_trip_through_png_centred_where_mnist_centres_them():
    """A drawn digit is prepared as MNIST's were: its centre of mass where MNIST's digits have theirs."""
    images = load_mnist(REPO / "data", train=False)[0][:1000].numpy()
    round_tripped = []
    for image in images:
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        round_tripped.append(read_digit(png.getvalue()))

    def centres(batch: np.ndarray) -> np.ndarray:
        mass = batch.astype(np.float64)
        total = mass.sum(axis=(1, 2))
        rows = (mass.sum(axis=2) * np.arange(28)).sum(axis=1) / total
        cols = (mass.sum(axis=1) * np.arange(28)).sum(axis=1) / total
        return np.stack([rows, cols], axis=1)

    offset = np.abs(centres(np.stack(round_tripped)) - centres(images)).mean(axis=0)
    assert (offset <= 0.1).all(), offset
