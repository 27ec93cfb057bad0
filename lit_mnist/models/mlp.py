"""Fully connected networks: the "Practical 5" MLP, and those of two other tutorials through their configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

Activation = Literal["relu", "sigmoid", "tanh"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

#: How a network's weights start: ``keras`` (Keras layers' Glorot-uniform weights, zero biases),
#: ``tf1`` (TensorFlow 1 code's ``tf.random_normal(stddev=0.01)`` weights and no biases) or
#: ``pytorch`` (PyTorch's own U(±1/√fan_in) weights and biases). docs/porting.md, rows 1 and 2.
Init = Literal["keras", "tf1", "pytorch"]
TF1_STD = 0.01


def has_bias(init: Init) -> bool:
    """Whether the layers of a network started with ``init`` have biases (``tf1``'s have none)."""
    return init != "tf1"


def init_weights(net: nn.Module, init: Init) -> nn.Module:
    """Draw every ``nn.Linear`` and ``nn.Conv2d`` weight of ``net`` as ``init`` says; return ``net``."""
    for layer in net.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d) or init == "pytorch":
            continue
        if init == "keras":
            nn.init.xavier_uniform_(layer.weight)
        else:
            nn.init.normal_(layer.weight, std=TF1_STD)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return net


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


def mlp_network(
    hidden_sizes: Sequence[int] = (128, 256),
    activation: Activation = "relu",
    in_features: int = 28 * 28,
    num_classes: int = 10,
    dropout: Sequence[float] = (),
    init: Init = "keras",
) -> nn.Sequential:
    """``Flatten → [Dense(h) → activation (→ Dropout)] × len(hidden_sizes) → Dense(num_classes)`` logits.

    ``dropout`` gives each hidden layer's drop probability (PyTorch's ``p``, TF1's 1 − keep_prob);
    empty means none, and a 0 leaves that layer without a dropout module. The dropouts are
    ``MaskDropout``, faster than ``nn.Dropout`` on the CPU. ``init`` is how the weights start
    (``Init``).
    """
    if dropout and len(dropout) != len(hidden_sizes):
        raise LitMNISTError(
            f"dropout has {len(dropout)} values but there are {len(hidden_sizes)} hidden layers: "
            "give one drop probability per hidden layer (0 for none)."
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size, p in zip(hidden_sizes, dropout or [0.0] * len(hidden_sizes), strict=True):
        layers += [nn.Linear(width, size, bias=has_bias(init)), ACTIVATIONS[activation]()]
        if p:
            layers.append(MaskDropout(p))
        width = size
    layers.append(nn.Linear(width, num_classes, bias=has_bias(init)))
    return init_weights(nn.Sequential(*layers), init)


class MLP(MNISTClassifier):
    """The multilayer perceptron of the "Practical 5" tutorial; other widths and activations give others.

    Its defaults are that tutorial's Keras stack::

        tf.keras.Sequential([Flatten(input_shape=(28, 28)),
                             Dense(128, activation='relu'),
                             Dense(256, activation='relu'),
                             Dense(10)])                     # 136,074 parameters

    trained with Adam (lr 1e-3), batch 32, 10 epochs (``configs/mlp.yaml``); the Dense-512 network
    of "A first look" is ``configs/dense512.yaml`` and the 620-unit sigmoid network of "What is
    TensorFlow?" ``configs/fc_sigmoid.yaml`` (the tutorials: ``docs/tutorials.md``). How the port
    differs from TensorFlow: ``docs/porting.md``.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128, 256),
        activation: Activation = "relu",
        init: Init = "keras",
        **kwargs: Any,
    ) -> None:
        """Build the network and hand it to ``MNISTClassifier``.

        Args:
            hidden_sizes: Width of each hidden ``Dense`` layer, input side first.
            activation: The hidden layers' activation: ``relu``, ``sigmoid`` or ``tanh``.
            init: How the weights start: ``keras`` (Glorot-uniform, zero biases: the Keras
                tutorials), ``tf1`` (N(0, 0.01), no biases: "What is TensorFlow?") or ``pytorch``
                (PyTorch's defaults). docs/porting.md, rows 1 and 2.
            **kwargs: ``optimizer``, ``lr_scheduler`` and ``compile``, as ``MNISTClassifier`` takes them.
        """
        super().__init__(mlp_network(hidden_sizes, activation, init=init), **kwargs)
