"""MNIST from the IDX files on disk, held in memory as uint8 tensors and batched by index."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST

from lit_mnist.data.augment import Augmentation
from lit_mnist.data.images import load_image_folder
from lit_mnist.data.loader import batch_loader
from lit_mnist.errors import LitMNISTError

#: The four files torchvision's ``MNIST`` reads from ``<data_dir>/MNIST/raw/``, with the magic
#: number and the item shape each IDX header must carry.
IDX_FILES = {
    "train-images-idx3-ubyte": (2051, (28, 28)),
    "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)),
    "t10k-labels-idx1-ubyte": (2049, ()),
}
DOWNLOAD_TIMEOUT_S = 10


class MNISTDataError(LitMNISTError):
    """MNIST files that are missing, unreadable or not what their name says."""


def raw_folder(data_dir: str | Path) -> Path:
    """Where torchvision's ``MNIST`` looks for the IDX files under ``data_dir``."""
    return Path(data_dir) / "MNIST" / "raw"


def _missing_files_message(folder: Path, tried_download: bool) -> str:
    names = ", ".join(IDX_FILES)
    what = "was not found in" + (f" {folder} and could not be downloaded" if tried_download else f" {folder}")
    return (
        f"MNIST {what}. Put the four files {names} "
        f"(or the same names with .gz) in that folder, or pass --data.data_dir pointing at a folder "
        "that has MNIST/raw/ inside."
    )


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def ensure_mnist_files(data_dir: str | Path) -> Path:
    """Make the four decompressed IDX files exist under ``data_dir/MNIST/raw/`` and return that folder.

    Decompressed files are used as they are; ``.gz`` files beside them are decompressed to a
    temporary name and renamed into place, so processes starting together (DDP ranks, parallel
    tests) never read a half-written file; if neither is there, torchvision downloads them, with
    a short socket time-out so that a machine without network fails fast with a clear message.
    """
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise MNISTDataError(
            f"data_dir {root} is a file, not a folder: pass the folder that holds MNIST/raw/."
        )
    folder = raw_folder(root)
    for name in IDX_FILES:
        _decompress(folder / name)
    if all((folder / name).exists() for name in IDX_FILES):
        return folder
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
    except Exception:
        raise MNISTDataError(_missing_files_message(folder, tried_download=True)) from None
    return folder


def check_idx_file(path: Path) -> int:
    """Check an IDX file's header and size against what its name promises; return its item count."""
    magic, item_shape = IDX_FILES[path.name]
    kind = "images" if item_shape else "labels"
    item_bytes = 1
    for dim in item_shape:
        item_bytes *= dim
    header_bytes = 4 * (2 + len(item_shape))
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(header_bytes)
    except OSError as err:
        raise MNISTDataError(f"Cannot read {path}: {err.strerror}.") from None
    if len(header) < header_bytes:
        raise MNISTDataError(f"{path} is not an MNIST {kind} file: it is only {size} bytes long.")
    fields = [int.from_bytes(header[i : i + 4], "big") for i in range(0, header_bytes, 4)]
    if fields[0] != magic:
        raise MNISTDataError(
            f"{path} is not an MNIST {kind} file: its magic number is {fields[0]}, expected {magic}."
        )
    count, shape = fields[1], tuple(fields[2:])
    if shape != item_shape:
        raise MNISTDataError(f"{path} holds items of shape {shape}, expected {item_shape}.")
    expected = header_bytes + count * item_bytes
    if size != expected:
        raise MNISTDataError(
            f"{path} is truncated or corrupt: its header promises {count} {kind} "
            f"({expected} bytes) but the file has {size} bytes."
        )
    return count


def _decompress(path: Path) -> None:
    """Decompress ``path.gz`` into ``path`` if only the archive is there, under a temporary name first."""
    archive = path.with_name(f"{path.name}.gz")
    if path.exists() or not archive.exists():
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with gzip.open(archive) as compressed, partial.open("wb") as out:
            shutil.copyfileobj(compressed, out)
        os.replace(partial, path)
    except (OSError, EOFError) as err:
        partial.unlink(missing_ok=True)
        raise MNISTDataError(f"Could not decompress {archive}: {err}.") from None


def load_mnist(data_dir: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked uint8 images ``[N, 28, 28]`` and int64 labels ``[N]`` of one MNIST split.

    Vendored ``.gz`` files are decompressed first if needed; nothing is downloaded.
    """
    folder = raw_folder(data_dir)
    prefix = "train" if train else "t10k"
    images_file = folder / f"{prefix}-images-idx3-ubyte"
    labels_file = folder / f"{prefix}-labels-idx1-ubyte"
    for name in IDX_FILES:  # torchvision's MNIST wants all four
        _decompress(folder / name)
    for path in (images_file, labels_file):
        if not path.exists():
            raise MNISTDataError(_missing_files_message(folder, tried_download=False))
    n_images, n_labels = check_idx_file(images_file), check_idx_file(labels_file)
    if n_images != n_labels:
        raise MNISTDataError(f"{images_file} has {n_images} images but {labels_file} has {n_labels} labels.")
    dataset = MNIST(str(data_dir), train=train, download=False)
    return dataset.data, dataset.targets


class MNISTDataModule(L.LightningDataModule):
    """The MNIST digits for training, validation, test and prediction.

    Images stay in memory as uint8 ``[N, 1, 28, 28]`` tensors and every batch is cut from them
    with a single index operation; batches are ``(images, labels)``, uint8 ``[B, 1, 28, 28]`` and
    int64 ``[B]``, as stored: the model turns pixels into its input
    (``MNISTClassifier.prepare_input``), so this module knows nothing about models.

    Args:
        data_dir: Folder holding ``MNIST/raw/`` (the repository's ``data`` has the vendored files).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation, test and prediction (it does not change results).
        val_size: Training images held out for validation; 0 trains on all 60,000 like the tutorials
            and skips validation.
        split_seed: Seed of the train/validation split, kept apart from the training seed so that
            runs with different seeds are validated on the same images.
        shuffle: Shuffle the training images every epoch. ``false`` walks them in the order of the
            MNIST file every epoch, as the loop written by hand in "A first look" does
            (``configs/scratch.yaml``).
        shuffle_seed: Seed of the per-epoch shuffling; the order of epoch ``e`` is fixed by
            ``(shuffle_seed, e)``. ``None`` takes the seed given to ``seed_everything``.
        predict_dir: A folder of the user's own PNG/JPEG digits to predict instead of the test
            set (see ``lit_mnist.data.images``); their file names are in ``predict_names``.
        on_device: Keep the images (47 MB as uint8) and labels on the trainer's device and cut
            the batches there, so that no batch is copied from the host during training. Only
            the batches' indices travel; the batches and their order are unchanged.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt = 1000,
        val_size: NonNegativeInt = 5000,
        split_seed: int = 42,
        shuffle: bool = True,
        shuffle_seed: int | None = None,
        predict_dir: str | None = None,
        on_device: bool = False,
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["augment"])
        # as plain values, so that checkpoints stay readable with torch.load(weights_only=True)
        self.hparams["augment"] = None if augment is None else asdict(augment)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.predict_dir = predict_dir
        self.on_device = on_device
        self.augment = augment
        self._augmented: tuple[int, int] = (-1, 0)  # (epoch, batches of it augmented so far)
        self.predict_names: list[str] | None = None
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}

    def prepare_data(self) -> None:
        if not (self.predict_dir and self.trainer is not None and self.trainer.predicting):
            ensure_mnist_files(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.splits:
            images, labels = load_mnist(self.data_dir, train=True)
            if self.val_size >= len(images):
                raise LitMNISTError(
                    f"data.val_size is {self.val_size} but the training set has only "
                    f"{len(images)} images: use a smaller val_size (0 trains on all of them)."
                )
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
            images = images.unsqueeze(1)  # [N, 1, 28, 28]: one channel, as the models take images
            val, train = order[: self.val_size], order[self.val_size :]
            if not self.shuffle:
                train = train.sort().values
            self.splits["train"] = images[train], labels[train]
            self.splits["val"] = images[val], labels[val]
        if stage == "predict" and self.predict_dir is not None:
            images, self.predict_names = load_image_folder(self.predict_dir)
            self.splits["predict"] = (images.unsqueeze(1),)
        elif stage in ("test", "predict", None) and "test" not in self.splits:
            images, labels = load_mnist(self.data_dir, train=False)
            self.splits["test"] = images.unsqueeze(1), labels
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits = {name: tuple(t.to(device) for t in split) for name, split in self.splits.items()}

    def _seed(self) -> int:
        """The seed of the shuffling and of the augmentation."""
        return (self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed()) % 2**63

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        return batch_loader(
            *self.splits[split],
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self._seed(),
            trainer=self.trainer,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_size == 0:
            return []
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.splits else "test", self.eval_batch_size)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, torch.Tensor):  # a model's example input, when Lightning summarizes it
            return batch.to(device, non_blocking=True)
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches, distorted by ``augment`` when it is set; every other batch as it is."""
        trainer = self.trainer
        if self.augment is None or trainer is None or not trainer.training or not isinstance(batch, tuple):
            return batch
        epoch = trainer.current_epoch
        index = self._augmented[1] if self._augmented[0] == epoch else 0
        self._augmented = (epoch, index + 1)
        images, labels = batch
        return self.augment(images, (self._seed(), epoch, index, trainer.global_rank)), labels
