"""Batches cut straight from in-memory tensors: one index per batch, no per-sample collate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    import lightning as L


class TensorBatches(Dataset):
    """Tensors indexed a whole batch at a time: ``dataset[indices]`` (a 1-D index tensor) is one batch."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise ValueError("all tensors must have the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: torch.Tensor | list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(index, device=self.tensors[0].device)
        return tuple(t.index_select(0, index) for t in self.tensors)  # faster than t[index] on uint8


class BatchIndexSampler(DistributedSampler):
    """Yields index tensors, one per batch, in an order fixed by ``(seed, epoch)``.

    It is ``DistributedSampler`` (so Lightning calls ``set_epoch`` and leaves it alone under
    DDP, and each of ``num_replicas`` processes sees its own shard) cut into batches. Because the
    order depends only on the seed and the epoch, a run resumed from a checkpoint sees exactly
    the batches the interrupted run would have seen.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            range(dataset_size),  # type: ignore[arg-type]  # only its length is used
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
        )
        self.batch_size = batch_size
        self.drop_last_batch = drop_last

    def __iter__(self) -> Iterator[torch.Tensor]:
        # One tensor per epoch, sliced per batch: a list slice cost a list-to-tensor copy per batch.
        indices = torch.tensor(list(super().__iter__()), dtype=torch.long)
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last_batch else len(indices)
        for start in range(0, stop, self.batch_size):
            yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        if self.drop_last_batch:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)


def batch_loader(
    *tensors: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    trainer: L.Trainer | None = None,
) -> DataLoader:
    """A ``DataLoader`` over in-memory tensors that slices each batch with one index operation.

    With a ``trainer`` each of its processes reads its own shard (``world_size``, ``global_rank``).
    """
    sampler = BatchIndexSampler(
        len(tensors[0]),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        num_replicas=trainer.world_size if trainer else 1,
        rank=trainer.global_rank if trainer else 0,
    )
    return DataLoader(TensorBatches(*tensors), batch_size=None, sampler=sampler)
