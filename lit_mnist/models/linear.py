"""A linear classifier trained by hand-written gradient descent, as two tutorials write it."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_mnist.errors import LitMNISTError
from lit_mnist.models.hand_sgd import HandSGDClassifier

Loss = Literal["cross_entropy", "mse"]


class LinearClassifier(HandSGDClassifier):
    """An affine map ``x @ W + b`` trained with plain gradient descent written out by hand.

    Two tutorials use it (``docs/tutorials.md``):

    * "Chapter 3" (``configs/linear_blobs.yaml``): two 2-D Gaussian blobs,
      ``num_inputs=2, num_outputs=1, loss="mse"``. The single output is a score regressed onto the
      0/1 class label with mean squared error; a point is class 1 when its score is above 0.5.
      Full-batch descent with lr 0.1 for 40 steps reaches a loss of about 0.025.
    * "What is TensorFlow?" (TF1 logistic regression, ``configs/linear.yaml``): MNIST,
      ``784 → 10`` logits with softmax cross-entropy, SGD lr 0.05, batch 200, 30 epochs.

    ``probabilities`` for the MSE case are ``[1 − s, s]`` with the score ``s`` clipped to [0, 1],
    so the predicted class is ``s > 0.5`` as in "Chapter 3" and accuracy and ``predict`` work as for
    the other models. Inputs are flattened, so MNIST batches ``[B, 1, 28, 28]`` and blob batches
    ``[B, 2]`` both work.

    How the port differs from TensorFlow: ``docs/porting.md``.
    """

    def __init__(
        self,
        num_inputs: int = 28 * 28,
        num_outputs: int = 10,
        loss: Loss = "cross_entropy",
        lr: float = 0.05,
        uniform_init: bool = False,
    ) -> None:
        """Build the affine network and hand it to ``HandSGDClassifier``.

        Args:
            num_inputs: Features of each input (784 for MNIST images, 2 for the blobs).
            num_outputs: Logits for ``cross_entropy`` (2 or more), or 1 score for ``mse``.
            loss: ``cross_entropy`` (softmax, "What is TensorFlow?") or ``mse`` of a 0/1 score
                ("Chapter 3").
            lr: The learning rate of the hand-written update ``w -= lr * grad``.
            uniform_init: Start W from U[0, 1) and b at 0, as "Chapter 3" does, instead of PyTorch's
                default initialisation.
        """
        if loss == "mse" and num_outputs != 1:
            raise LitMNISTError(f"loss 'mse' needs num_outputs 1 (a 0/1 score), got {num_outputs}.")
        if loss == "cross_entropy" and num_outputs < 2:
            raise LitMNISTError(f"loss 'cross_entropy' needs 2 or more outputs, got {num_outputs}.")
        net = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_outputs))
        if uniform_init:
            nn.init.uniform_(net[1].weight, 0.0, 1.0)
            nn.init.zeros_(net[1].bias)
        super().__init__(net, lr, num_classes=2 if loss == "mse" else num_outputs)
        self.loss_name = loss
        if num_inputs != 28 * 28:
            self.example_input_array = torch.zeros(1, num_inputs)

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "mse":
            return F.mse_loss(outputs.squeeze(-1), targets.to(outputs.dtype))
        return super().compute_loss(outputs, targets)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "mse":
            score = outputs.clamp(0, 1)
            return torch.cat([1 - score, score], dim=-1)
        return super().probabilities(outputs)
