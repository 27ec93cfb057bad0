from lit_mnist.data.augment import Augmentation
from lit_mnist.data.blobs import BlobsDataModule, make_blobs
from lit_mnist.data.loader import BatchIndexSampler, TensorBatches, batch_loader
from lit_mnist.data.mnist import MNISTDataError, MNISTDataModule, ensure_mnist_files, load_mnist

__all__ = [
    "Augmentation",
    "BatchIndexSampler",
    "BlobsDataModule",
    "MNISTDataError",
    "MNISTDataModule",
    "TensorBatches",
    "batch_loader",
    "ensure_mnist_files",
    "load_mnist",
    "make_blobs",
]
