"""The toy data of the "Chapter 3" tutorial: two 2-D Gaussian clouds, one per class."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import PositiveInt
from torch.utils.data import DataLoader

from lit_mnist.data.loader import batch_loader

#: The tutorial's class means (class 0 first) and their shared covariance.
BLOB_MEANS = ((0.0, 3.0), (3.0, 0.0))
BLOB_COV = ((1.0, 0.5), (0.5, 1.0))


def make_blobs(num_points_per_class: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 points ``[2 N, 2]`` and int64 labels ``[2 N]``: N from each blob, class 0 first.

    The points are drawn with ``numpy.random.default_rng(seed).multivariate_normal``, as the
    tutorial draws them with ``np.random.multivariate_normal``.
    """
    rng = np.random.default_rng(seed)
    clouds = [rng.multivariate_normal(mean, BLOB_COV, size=num_points_per_class) for mean in BLOB_MEANS]
    points = np.vstack(clouds)
    labels = np.repeat(np.arange(len(BLOB_MEANS)), num_points_per_class)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(labels)


class BlobsDataModule(L.LightningDataModule):
    """The two Gaussian clouds of "Chapter 3" (means [0, 3] and [3, 0], covariance [[1, .5], [.5, 1]]).

    Training, validation, test and prediction all use the same seeded points, as the tutorial
    (``docs/tutorials.md``) evaluates its classifier on the points it trained on. Batches are
    ``(points, labels)``: float32 ``[B, 2]`` and int64 class labels ``[B]`` (a model with an MSE
    loss regresses onto them as 0.0 / 1.0). The points are drawn when the module is built (2,000 points cost
    nothing) and need no scaling on the device.

    Args:
        num_points_per_class: Points drawn from each blob (the tutorial: 1,000).
        batch_size: Points per batch; ``None`` takes them all, the tutorial's full-batch descent.
        seed: Seed of the draw, and of the order of the points when batches are smaller.
    """

    def __init__(
        self, num_points_per_class: PositiveInt = 1000, batch_size: PositiveInt | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_points_per_class = num_points_per_class
        self.batch_size = batch_size
        self.seed = seed
        self.points = make_blobs(num_points_per_class, seed)

    def _loader(self, shuffle: bool) -> DataLoader:
        return batch_loader(
            *self.points,
            batch_size=self.batch_size or len(self.points[0]),
            shuffle=shuffle,
            seed=self.seed,
            trainer=self.trainer,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
