"""The NaiveDense / NaiveSequential network of "A first look", its weights and update written by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_mnist.models.hand_sgd import HandSGDClassifier

#: Keras clips probabilities to [ε, 1 − ε] before taking their log in its cross-entropy.
KERAS_EPSILON = 1e-7


class NaiveDense(nn.Module):
    """``activation(inputs @ W + b)`` with ``W`` drawn from U[0, 0.1) and ``b`` zero, as in the tutorial.

    Args:
        input_size: Features in.
        output_size: Units out.
        activation: The module applied to ``inputs @ W + b``.
    """

    def __init__(self, input_size: int, output_size: int, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.W = nn.Parameter(torch.empty(input_size, output_size).uniform_(0, 0.1))
        self.b = nn.Parameter(torch.zeros(output_size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.activation(inputs @ self.W + self.b)


def scratch_network(
    hidden_size: int = 512, in_features: int = 28 * 28, num_classes: int = 10
) -> nn.Sequential:
    """The tutorial's ``NaiveSequential([NaiveDense(784, 512, relu), NaiveDense(512, 10, softmax)])``.

    Its output is class probabilities, not logits.
    """
    return nn.Sequential(
        nn.Flatten(),
        NaiveDense(in_features, hidden_size, nn.ReLU()),
        NaiveDense(hidden_size, num_classes, nn.Softmax(dim=-1)),
    )


class ScratchMLP(HandSGDClassifier):
    """The "A first look" network built from scratch and trained by hand (``configs/scratch.yaml``).

    Two ``NaiveDense`` layers (784 → 512 relu → 10 softmax) hold their weights as plain
    parameters; the loss is the mean sparse categorical cross-entropy of the softmax output,
    computed as Keras 3 does: probabilities clipped to [1e-7, 1 − 1e-7], their log taken as
    logits of a softmax cross-entropy (the same value and gradient as −log p[label] while no
    probability is clipped). Each batch of 128 updates every weight by ``w -= 1e-3 * grad``,
    for 10 epochs. The tutorial: ``docs/tutorials.md``; how the port differs from TensorFlow:
    ``docs/porting.md``.
    """

    def __init__(self, hidden_size: int = 512, lr: float = 1e-3) -> None:
        """Build the network and hand it to ``HandSGDClassifier``.

        Args:
            hidden_size: Units of the hidden ``NaiveDense`` layer.
            lr: The learning rate of the hand-written update ``w -= lr * grad``.
        """
        super().__init__(scratch_network(hidden_size), lr)

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.clamp(KERAS_EPSILON, 1 - KERAS_EPSILON).log(), targets)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs
