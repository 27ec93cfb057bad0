from lit_mnist.models.classifier import MNISTClassifier
from lit_mnist.models.cnn import CNN, cnn_network
from lit_mnist.models.dropout import DropoutMLP
from lit_mnist.models.hand_sgd import HandSGDClassifier
from lit_mnist.models.keras_rmsprop import KerasRMSprop
from lit_mnist.models.linear import LinearClassifier
from lit_mnist.models.mlp import MLP, mlp_network
from lit_mnist.models.scratch import NaiveDense, ScratchMLP, scratch_network
from lit_mnist.models.speedrun import SpeedrunCNN, speedrun_network

__all__ = [
    "CNN",
    "MLP",
    "DropoutMLP",
    "HandSGDClassifier",
    "KerasRMSprop",
    "LinearClassifier",
    "MNISTClassifier",
    "NaiveDense",
    "ScratchMLP",
    "SpeedrunCNN",
    "cnn_network",
    "mlp_network",
    "scratch_network",
    "speedrun_network",
]
