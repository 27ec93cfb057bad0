"""Five Keras/TensorFlow MNIST tutorials, ported to PyTorch + Lightning."""

import os

import torch

from lit_mnist.data import BlobsDataModule, MNISTDataModule
from lit_mnist.models import CNN, MLP, DropoutMLP, LinearClassifier, MNISTClassifier, ScratchMLP, SpeedrunCNN

# Importing Lightning set PYTORCH_NVML_BASED_CUDA_CHECK=1, so that looking for a GPU does not
# initialise CUDA (which would poison fork). On a machine without a CUDA device there is nothing
# to poison, but torch then loads NVML afresh at every look, and ``Optimizer.step`` looks at every
# step (0.15-0.2 ms a step here, 8 % of the mlp's training loop); torch's own check remembers its answer.
if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"

__all__ = [
    "CNN",
    "MLP",
    "BlobsDataModule",
    "DropoutMLP",
    "LinearClassifier",
    "MNISTClassifier",
    "MNISTDataModule",
    "ScratchMLP",
    "SpeedrunCNN",
]
