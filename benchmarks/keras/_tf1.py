"""The TF1 data of "What is TensorFlow?" in Keras 3: flat float images in [0, 1], one-hot labels.

The "What is TensorFlow?" tutorial (docs/tutorials.md) is TF1 code (placeholders, sessions); its
models are written here in Keras 3 the way they compute: weights from
``tf.random_normal(stddev=0.01)`` and no biases, softmax cross-entropy on logits with one-hot
labels, TF's optimizers. What differs from the tutorial, as for the lit_mnist configs: all 60,000
training images (the tutorial: TF1's 55,000-image split) and model.fit's per-epoch shuffling (the
tutorial: in order); Keras' RMSprop starts its average at 0 with epsilon 1e-7 (TF1's at 1 with
1e-10); the tutorial's test-accuracy checks every ``howOften`` batches inside the epoch are left
out (they are monitoring, not training, and lit_mnist does not do them).
"""

from __future__ import annotations

import _common
import numpy as np


def load(train_size: int, images_shape: tuple[int, ...] = (784,)):
    """trX, trY, teX, teY as float32 images of ``images_shape`` in [0, 1] and one-hot float32 labels."""
    x_train, y_train, x_test, y_test = _common.load_mnist(train_size)
    eye = np.eye(10, dtype=np.float32)
    tr_x = x_train.reshape((len(x_train), *images_shape)).astype(np.float32) / 255
    te_x = x_test.reshape((len(x_test), *images_shape)).astype(np.float32) / 255
    return tr_x, eye[y_train], te_x, eye[y_test]


def init_weights():
    """The tutorial's ``init_weights``: ``tf.random_normal(shape, stddev=0.01)``."""
    import keras

    return keras.initializers.RandomNormal(stddev=0.01)
