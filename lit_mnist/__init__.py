"""Five Keras/TensorFlow MNIST tutorials, ported to PyTorch + Lightning."""

from lit_mnist.data import BlobsDataModule, MNISTDataModule
from lit_mnist.models import (
    CNN,
    MLP,
    DropoutMLP,
    KerasRMSprop,
    LinearClassifier,
    MNISTClassifier,
    ScratchMLP,
    SpeedrunCNN,
)

__all__ = [
    "CNN",
    "MLP",
    "BlobsDataModule",
    "DropoutMLP",
    "KerasRMSprop",
    "LinearClassifier",
    "MNISTClassifier",
    "MNISTDataModule",
    "ScratchMLP",
    "SpeedrunCNN",
]
