"""A small, fast CNN for the time-to-99 % run (``configs/speedrun.yaml``); not from a tutorial."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lit_mnist.models.classifier import MNISTClassifier


def speedrun_network(channels: Sequence[int] = (32, 64, 128), num_classes: int = 10) -> nn.Sequential:
    """``[Conv 3×3 'same' → BatchNorm → ReLU → MaxPool 2×2] × len(channels) → Flatten → Dense``.

    28 × 28 inputs leave 3 × 3 maps after three poolings, so the dense layer sees
    ``channels[-1] × 9`` features.
    """
    layers: list[nn.Module] = []
    in_channels, size = 1, 28
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding="same", bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        in_channels, size = out_channels, size // 2
    layers += [nn.Flatten(), nn.Linear(in_channels * size * size, num_classes)]
    return nn.Sequential(*layers)


class SpeedrunCNN(MNISTClassifier):
    """The network and schedule of ``configs/speedrun.yaml``: few epochs at a large batch to 99 %.

    Batch normalization lets a high learning rate work from the first step, and the optimizer's
    learning rate is the peak of a one-cycle schedule (``OneCycleLR``, stepped after every
    batch) over all of the fit's optimizer steps, so the schedule follows ``max_epochs`` and the
    batch size by itself.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        optimizer: OptimizerCallable = torch.optim.Adam,
        compile: bool | str = False,
    ) -> None:
        """Build the network and hand it to ``MNISTClassifier``.

        Args:
            channels: Filters of each 3×3 convolution block, in order.
            optimizer: The optimizer; its learning rate is the one-cycle schedule's peak.
            compile: Compile the network with ``torch.compile`` (``true``, or a backend name), as
                ``MNISTClassifier`` does.
        """
        super().__init__(speedrun_network(channels), optimizer, compile=compile)

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
