"""Five Keras/TensorFlow MNIST tutorials, ported to PyTorch + Lightning."""

from lit_mnist.data import MNISTDataModule
from lit_mnist.models import MLP, MNISTClassifier

__all__ = ["MLP", "MNISTClassifier", "MNISTDataModule"]
