"""Fully connected networks with dropout: the model of Musolesi's slides and the "modern" net."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_mnist.models.classifier import MNISTClassifier
from lit_mnist.models.mlp import Activation, Init, mlp_network


class DropoutMLP(MNISTClassifier):
    """The network with dropout of Musolesi's slides, and the "modern" net through its config.

    Its defaults are the slides' Keras stack::

        tf.keras.Sequential([Flatten(input_shape=(28, 28)),
                             Dense(128, activation='relu'),
                             Dropout(0.2),
                             Dense(10)])                     # 101,770 parameters

    trained with Adam (lr 1e-3), batch 32, 5 epochs (``configs/dropout.yaml``).

    ``dropout`` holds one drop probability per hidden layer (0: no dropout after that layer).
    The "modern" net of "What is TensorFlow?", ``784 → 625 relu → dropout → 625 relu → 10`` with
    TF1 ``keep_prob`` 0.4 (``dropout=[0.6, 0]``) and RMSprop(0.001, 0.9), batch 100, 50 epochs, is
    ``configs/modern_mlp.yaml``; like the tutorial's code as it runs, it has no input dropout.
    The tutorials: ``docs/tutorials.md``; how the port differs from TensorFlow: ``docs/porting.md``.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128,),
        dropout: Sequence[float] = (0.2,),
        activation: Activation = "relu",
        init: Init = "keras",
        **kwargs: Any,
    ) -> None:
        """Build the network and hand it to ``MNISTClassifier``.

        Args:
            hidden_sizes: Width of each hidden ``Dense`` layer, input side first.
            dropout: Drop probability after each hidden layer (PyTorch's ``p``, TF1's
                1 − ``keep_prob``); 0 puts no ``Dropout`` after that layer.
            activation: The hidden layers' activation: ``relu``, ``sigmoid`` or ``tanh``.
            init: How the weights start: ``keras`` (Glorot-uniform, zero biases: the slides'
                Keras), ``tf1`` (N(0, 0.01), no biases: "What is TensorFlow?") or ``pytorch``
                (PyTorch's defaults). docs/porting.md, rows 1 and 2.
            **kwargs: ``optimizer``, ``lr_scheduler`` and ``compile``, as ``MNISTClassifier`` takes them.
        """
        super().__init__(mlp_network(hidden_sizes, activation, dropout=dropout, init=init), **kwargs)
