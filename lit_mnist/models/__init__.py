from lit_mnist.models.classifier import MNISTClassifier
from lit_mnist.models.mlp import MLP, mlp_network

__all__ = ["MLP", "MNISTClassifier", "mlp_network"]
