"""Seed 001 ("A first look at a neural network", Chollet ch. 2): the notebook's own Keras code.

Dense 512 relu -> Dense 10 softmax on flat [0, 1] images, rmsprop, sparse_categorical_crossentropy,
batch 128, 20 epochs.
"""

import _seed
import keras
import tensorflow as tf

args = _seed.parse_args(20, __doc__)
keras.utils.set_random_seed(0)
train_images, train_labels, test_images, test_labels = _seed.load_mnist(args.train_size)
train_images = train_images.reshape((len(train_images), 28 * 28)).astype("float32") / 255
test_images = test_images.reshape((10000, 28 * 28)).astype("float32") / 255

model = tf.keras.Sequential(
    [
        tf.keras.layers.Dense(512, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(
    train_images, train_labels, epochs=args.epochs, batch_size=128, verbose=0, callbacks=[_seed.epoch_timer()]
)
_seed.report_test(model.evaluate(test_images, test_labels, verbose=0)[1])
