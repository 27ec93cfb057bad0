"""The convolutional network of the "What is TensorFlow?" tutorial (``docs/tutorials.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lit_mnist.models.classifier import MNISTClassifier
from lit_mnist.models.mlp import Init, MaskDropout, has_bias, init_weights


def cnn_network(
    channels: Sequence[int] = (32, 64, 128),
    hidden_size: int = 625,
    conv_dropout: float = 0.2,
    hidden_dropout: float = 0.5,
    image_size: int = 28,
    num_classes: int = 10,
    init: Init = "tf1",
) -> nn.Sequential:
    """Conv blocks, then a dense hidden layer, as the tutorial's code runs them::

        [Conv 3×3 'same' → ReLU → MaxPool 2×2 'same' (→ Dropout conv_dropout)] × len(channels)
        → Flatten → Dense(hidden_size) → ReLU → Dropout(hidden_dropout) → Dense(num_classes)

    Every block but the last ends in dropout: the tutorial builds the last block's dropout but
    flattens the tensor from before it. TF's 'SAME' 2×2 pooling halves rounding up
    (28 → 14 → 7 → 4), which is ``MaxPool2d(2, ceil_mode=True)``; with the defaults the dense
    layer sees 128 × 4 × 4 = 2,048 features.

    The convolution weights are channels-last, so that every convolution, ReLU and pooling runs
    channels-last (oneDNN's faster layout on the CPU), and the dropouts are ``MaskDropout``: the
    same layers, parameters and ``state_dict`` keys as plain ``nn.Conv2d`` / ``nn.Dropout``,
    computing the same function (only the dropout masks come from a different random stream);
    ``benchmarks/cnn_cpu.py`` measures the difference.

    Args:
        channels: Filters of each 3×3 convolution block, in order.
        hidden_size: Units of the dense hidden layer.
        conv_dropout: Drop probability after every block but the last.
        hidden_dropout: Drop probability after the dense hidden layer.
        image_size: Side of the square input images.
        num_classes: Number of logits.
        init: How the weights start (``Init``); the tutorial's is ``tf1``: N(0, 0.01), no biases.
    """
    layers: list[nn.Module] = []
    in_channels, size = 1, image_size
    for i, out_channels in enumerate(channels):
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding="same", bias=has_bias(init)),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        if i < len(channels) - 1:
            layers.append(MaskDropout(conv_dropout))
        in_channels, size = out_channels, -(-size // 2)
    layers += [
        nn.Flatten(),
        nn.Linear(in_channels * size * size, hidden_size, bias=has_bias(init)),
        nn.ReLU(),
        MaskDropout(hidden_dropout),
        nn.Linear(hidden_size, num_classes, bias=has_bias(init)),
    ]
    return init_weights(nn.Sequential(*layers), init).to(memory_format=torch.channels_last)


class CNN(MNISTClassifier):
    """The "What is TensorFlow?" tutorial's CNN (``cnn_network``'s defaults are the tutorial's numbers).

    Three blocks of 3×3 convolutions with 32, 64 and 128 filters, ReLU and 2×2 max-pooling,
    TF1 ``keep_rate_conv`` 0.8 (dropout 0.2) after the first two blocks only, because the tutorial
    flattens the third block's output before its dropout; then 625 ReLU units, dropout 0.5
    (``keep_rate_hidden`` 0.5) and 10 logits. The tutorial trains with RMSprop(0.001, 0.9), batch 50,
    10 epochs, and reports 99.13 % test accuracy: ``configs/cnn.yaml`` sets that optimizer (the
    constructor's default is the base class's Adam). How the port differs from TensorFlow:
    ``docs/porting.md``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        hidden_size: int = 625,
        conv_dropout: float = 0.2,
        hidden_dropout: float = 0.5,
        init: Init = "tf1",
        **kwargs: Any,
    ) -> None:
        """Build the network and hand it to ``MNISTClassifier``.

        Args:
            channels: Filters of each 3×3 convolution block, in order.
            hidden_size: Units of the dense hidden layer.
            conv_dropout: Drop probability after every block but the last.
            hidden_dropout: Drop probability after the dense hidden layer.
            init: How the weights start: ``tf1`` (N(0, 0.01), no biases: the tutorial's),
                ``keras`` (Glorot-uniform, zero biases) or ``pytorch`` (PyTorch's defaults).
                docs/porting.md, rows 1 and 2.
            **kwargs: ``optimizer``, ``lr_scheduler`` and ``compile``, as ``MNISTClassifier`` takes them.
        """
        super().__init__(
            cnn_network(channels, hidden_size, conv_dropout, hidden_dropout, init=init), **kwargs
        )
