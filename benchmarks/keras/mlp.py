"""The MLP of the "Practical 5" tutorial (docs/tutorials.md): the tutorial's own Keras code.

Flatten -> Dense 128 relu -> Dense 256 relu -> Dense 10 logits, SparseCategoricalCrossentropy
(from_logits), Adam, model.fit's default batch 32, 10 epochs; x / 255.
"""

import _common
import keras
import tensorflow as tf

args = _common.parse_args(10, __doc__)
keras.utils.set_random_seed(args.seed)
x_train, y_train, x_test, y_test = _common.load_mnist(args.train_size)
x_train, x_test = x_train / 255.0, x_test / 255.0

num_classes = 10
num_feature_one_dimension = 28
n_hidden_1 = 128
n_hidden_2 = 256
model = tf.keras.models.Sequential(
    [
        tf.keras.Input(shape=(num_feature_one_dimension, num_feature_one_dimension)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(n_hidden_1, activation="relu"),
        tf.keras.layers.Dense(n_hidden_2, activation="relu"),
        tf.keras.layers.Dense(num_classes),
    ]
)
loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
model.fit(x_train, y_train, epochs=args.epochs, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(x_test, y_test, verbose=0)[1])
