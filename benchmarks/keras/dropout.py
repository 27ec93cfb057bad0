"""The network of Musolesi's slides (docs/tutorials.md): the slides' own Keras code.

Flatten -> Dense 128 relu -> Dropout 0.2 -> Dense 10 softmax (101,770 parameters),
SparseCategoricalCrossentropy(from_logits=False), Adam, batch 32 (fit's default), 5 epochs; x / 255.
"""

import _common
import keras
import tensorflow as tf

args = _common.parse_args(5, __doc__)
keras.utils.set_random_seed(args.seed)
x_train, y_train, x_test, y_test = _common.load_mnist(args.train_size)
x_train, x_test = x_train / 255.0, x_test / 255.0

model = tf.keras.models.Sequential(
    [
        tf.keras.Input(shape=(28, 28)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dropout(0.2),
        tf.keras.layers.Dense(10, activation="softmax"),
    ]
)
loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=False)
model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
model.fit(x_train, y_train, epochs=args.epochs, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(x_test, y_test, verbose=0)[1])
