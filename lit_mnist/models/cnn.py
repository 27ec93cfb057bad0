"""Seed 002's convolutional network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_mnist.models.classifier import MNISTClassifier


def _exporting() -> bool:
    """Whether the module is being traced or exported (TorchScript or ``torch.export``/ONNX)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()


class PatchConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as its patches (im2col) times the weight matrix, output channels-last.

    For a convolution with few input channels (seed 002's first layer has one) the work is a
    thin matrix product: the ``C·k·k`` patches of every pixel times the ``[out_channels, C·k·k]``
    weight, whose result, ``[B, H, W, out_channels]`` in memory, is the channels-last layout
    the next convolution wants. Whether this beats oneDNN's own kernel depends on the PyTorch
    build: with PyTorch 2.14 (oneDNN 3.12) a whole step measured no faster than with oneDNN's
    channels-last kernel (``benchmarks/cnn_cpu.py``), so ``cnn_network`` uses it only when asked.
    The weight and bias are ``nn.Conv2d``'s (same names, shapes and
    initialisation, so checkpoints load either way); autograd gives the backward pass. Anything
    but stride 1, dilation 1, one group and zero padding, and tracing or exporting (TorchScript,
    ONNX), take ``nn.Conv2d``'s own forward, which computes the same values.

    Args:
        in_channels: Channels of the input.
        out_channels: Filters, the channels of the output.
        kernel_size: Side of the (square) kernel.
        padding: ``"same"``, ``"valid"`` or the zero padding on each side.
        bias: Add a learnable bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: str | int = 0, bias: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)

    def _patchable(self, x: torch.Tensor) -> bool:
        return (
            x.dim() == 4
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and self.kernel_size[0] == self.kernel_size[1]
            and self.kernel_size[0] % 2 == 1
            and not _exporting()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._patchable(x):
            return super().forward(x)
        k = self.kernel_size[0]
        pad = (
            (k // 2, k // 2)
            if self.padding == "same"
            else (0, 0)
            if self.padding == "valid"
            else self.padding
        )
        batch, _, height, width = x.shape
        out_h, out_w = height + 2 * pad[0] - k + 1, width + 2 * pad[1] - k + 1
        cols = F.unfold(x, k, padding=pad).transpose(1, 2)  # [B, out_h·out_w, C·k·k]
        weight = self.weight.reshape(self.out_channels, -1).t()  # [C·k·k, out_channels]
        out = (
            cols @ weight
            if self.bias is None
            else torch.baddbmm(self.bias, cols, weight.expand(batch, -1, -1))
        )
        return out.reshape(batch, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)


class MaskDropout(nn.Dropout):
    """``nn.Dropout`` with its mask drawn as uniform numbers compared with ``p``.

    Same distribution as ``nn.Dropout`` (each element kept with probability ``1 - p``, survivors
    scaled by ``1 / (1 - p)``, identity in eval mode), but ``uniform_`` and a comparison are much
    faster on the CPU than the Bernoulli kernel behind ``nn.Dropout``; the random numbers drawn
    differ, so runs are not bit-identical to ones with ``nn.Dropout``.

    Args:
        p: Probability of zeroing an element.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        mask = (torch.empty_like(x).uniform_() >= self.p).to(x.dtype).mul_(1 / (1 - self.p))
        return x * mask


def cnn_network(
    channels: Sequence[int] = (32, 64, 128),
    hidden_size: int = 625,
    conv_dropout: float = 0.2,
    hidden_dropout: float = 0.5,
    image_size: int = 28,
    num_classes: int = 10,
    fast: bool = True,
    patch_conv: bool = False,
) -> nn.Sequential:
    """Conv blocks, then a dense hidden layer, as seed 002's code runs them::

        [Conv 3×3 'same' → ReLU → MaxPool 2×2 'same' (→ Dropout conv_dropout)] × len(channels)
        → Flatten → Dense(hidden_size) → ReLU → Dropout(hidden_dropout) → Dense(num_classes)

    Every block but the last ends in dropout: the seed builds the last block's dropout but
    flattens the tensor from before it. TF's 'SAME' 2×2 pooling halves rounding up
    (28 → 14 → 7 → 4), which is ``MaxPool2d(2, ceil_mode=True)``; with the defaults the dense
    layer sees 128 × 4 × 4 = 2,048 features.

    With ``fast`` (the default) the convolution weights are channels-last, so that every
    convolution, ReLU and pooling runs channels-last (oneDNN's faster layout on the CPU), and the
    dropouts are ``MaskDropout``: the same layers, parameters and ``state_dict`` keys, computing
    the same function (only the dropout masks come from a different random stream). On this
    project's 2-core CPU a training step took 0.78 × the time of plain NCHW
    ``nn.Conv2d``/``nn.Dropout`` (``benchmarks/cnn_cpu.py``, README). ``patch_conv`` computes the
    first convolution as ``PatchConv2d`` (im2col + one matrix product); with PyTorch 2.14
    (oneDNN 3.12) it measured no faster, so it is off by default.

    Args:
        channels: Filters of each 3×3 convolution block, in order.
        hidden_size: Units of the dense hidden layer.
        conv_dropout: Drop probability after every block but the last.
        hidden_dropout: Drop probability after the dense hidden layer.
        image_size: Side of the square input images.
        num_classes: Number of logits.
        fast: Channels-last convolution weights and ``MaskDropout``; ``False`` builds plain
            NCHW ``nn.Conv2d`` and ``nn.Dropout`` layers.
        patch_conv: Make the first convolution a ``PatchConv2d``.
    """
    conv_class = PatchConv2d if patch_conv else nn.Conv2d
    dropout_class = MaskDropout if fast else nn.Dropout
    layers: list[nn.Module] = []
    in_channels, size = 1, image_size
    for i, out_channels in enumerate(channels):
        layers += [
            (conv_class if i == 0 else nn.Conv2d)(in_channels, out_channels, kernel_size=3, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        if i < len(channels) - 1:
            layers.append(dropout_class(conv_dropout))
        in_channels, size = out_channels, -(-size // 2)
    layers += [
        nn.Flatten(),
        nn.Linear(in_channels * size * size, hidden_size),
        nn.ReLU(),
        dropout_class(hidden_dropout),
        nn.Linear(hidden_size, num_classes),
    ]
    net = nn.Sequential(*layers)
    return net.to(memory_format=torch.channels_last) if fast else net


class CNN(MNISTClassifier):
    """Seed 002's convolutional network (``cnn_network``'s defaults are the seed's numbers).

    Three blocks of 3×3 convolutions with 32, 64 and 128 filters, ReLU and 2×2 max-pooling,
    TF1 ``keep_rate_conv`` 0.8 (dropout 0.2) after the first two blocks only, because the seed
    flattens the third block's output before its dropout; then 625 ReLU units, dropout 0.5
    (``keep_rate_hidden`` 0.5) and 10 logits. The seed trains with RMSprop(0.001, 0.9), batch 50,
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
        **kwargs: Any,
    ) -> None:
        """Build the network and hand it to ``MNISTClassifier``.

        Args:
            channels: Filters of each 3×3 convolution block, in order.
            hidden_size: Units of the dense hidden layer.
            conv_dropout: Drop probability after every block but the last.
            hidden_dropout: Drop probability after the dense hidden layer.
            **kwargs: ``optimizer``, ``lr_scheduler`` and ``compile``, as ``MNISTClassifier`` takes them.
        """
        super().__init__(cnn_network(channels, hidden_size, conv_dropout, hidden_dropout), **kwargs)
