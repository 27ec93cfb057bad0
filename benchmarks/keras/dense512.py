"""The first network of the "A first look" tutorial (docs/tutorials.md): the notebook's own Keras code.

Dense 512 relu -> Dense 10 softmax on flat [0, 1] images, rmsprop, sparse_categorical_crossentropy,
batch 128, 20 epochs.
"""

import _common
import keras
import tensorflow as tf

args = _common.parse_args(20, __doc__)
keras.utils.set_random_seed(args.seed)
train_images, train_labels, test_images, test_labels = _common.load_mnist(args.train_size)
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
    train_images,
    train_labels,
    epochs=args.epochs,
    batch_size=128,
    verbose=0,
    callbacks=[_common.epoch_timer()],
)
_common.report_test(model.evaluate(test_images, test_labels, verbose=0)[1])
