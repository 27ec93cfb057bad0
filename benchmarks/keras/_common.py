"""What the Keras scripts share: the vendored MNIST, ``--epochs``, and the lines vs_keras.py reads.

Runs inside the TensorFlow venv that ``benchmarks/vs_keras.py`` creates (never in the project's).
Output lines, one per epoch and one at the end::

    epoch=<k> seconds=<wall time of epoch k>
    vs_keras test_acc=<percent>
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

RAW = Path(__file__).resolve().parents[2] / "data" / "MNIST" / "raw"


def _idx(name: str) -> np.ndarray:
    path = RAW / name
    data = path.read_bytes() if path.exists() else gzip.decompress((RAW / f"{name}.gz").read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_mnist(train_size: int = 60000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 train images [N, 28, 28], labels [N], test images, test labels, from data/MNIST/raw/."""
    x_train, y_train = _idx("train-images-idx3-ubyte"), _idx("train-labels-idx1-ubyte")
    x_test, y_test = _idx("t10k-images-idx3-ubyte"), _idx("t10k-labels-idx1-ubyte")
    return x_train[:train_size], y_train[:train_size], x_test, y_test


def parse_args(epochs: int, description: str) -> argparse.Namespace:
    """``--epochs`` (default: the tutorial's), ``--train-size`` (the first N training images) and ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"epochs to train (the tutorial: {epochs})"
    )
    parser.add_argument("--train-size", type=int, default=60000, help="training images used (all 60,000)")
    parser.add_argument("--seed", type=int, default=0, help="keras.utils.set_random_seed's seed")
    return parser.parse_args()


def report_epoch(epoch: int, seconds: float) -> None:
    """Print the machine-readable line of one epoch (``epoch`` counts from 1)."""
    print(f"epoch={epoch} seconds={seconds:.6f}", flush=True)


def report_test(accuracy: float) -> None:
    """Print the machine-readable test-accuracy line (``accuracy`` as a fraction)."""
    print(f"vs_keras test_acc={100 * accuracy:.4f}", flush=True)


def epoch_timer():
    """A Keras callback that prints each epoch's wall time (built here so TF loads only when asked)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            report_epoch(epoch + 1, time.perf_counter() - self._start)

    return EpochTimer()
