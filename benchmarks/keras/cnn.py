"""The CNN of the "What is TensorFlow?" tutorial (docs/tutorials.md), in Keras 3 as the TF1 code computes.

3 x (conv 3x3 'SAME' 32/64/128 -> relu -> max-pool 2x2 stride 2 'SAME' -> dropout keep 0.8), then
the 128 x 4 x 4 = 2,048 features -> 625 relu -> dropout keep 0.5 -> 10 logits; N(0, 0.01) weights
and no biases. The tutorial flattens ``l3``, not ``l3o``, so its third conv dropout is built but unused
and is left out here. Softmax cross-entropy on the logits, ``RMSPropOptimizer(0.001, 0.9)``
(Keras RMSprop, rho 0.9), batch 50, 10 epochs -> 99.13 %. See _tf1.py for the data and what differs.
"""

import _common
import _tf1
import keras

args = _common.parse_args(10, __doc__)
keras.utils.set_random_seed(args.seed)
trX2, trY, teX2, teY = _tf1.load(args.train_size, (28, 28, 1))
NUM_EPOCHS = args.epochs
BATCH_SIZE = 50


def conv(filters):
    return keras.layers.Conv2D(
        filters, 3, padding="same", activation="relu", use_bias=False, kernel_initializer=_tf1.init_weights()
    )


def pool():
    return keras.layers.MaxPooling2D(pool_size=2, strides=2, padding="same")


model = keras.Sequential(
    [
        keras.Input(shape=(28, 28, 1)),
        conv(32),  # (?, 28, 28, 32)
        pool(),
        keras.layers.Dropout(1 - 0.8),
        conv(64),  # (?, 14, 14, 64)
        pool(),
        keras.layers.Dropout(1 - 0.8),
        conv(128),  # (?, 7, 7, 128)
        pool(),  # (?, 4, 4, 128)
        keras.layers.Flatten(),
        keras.layers.Dense(625, activation="relu", use_bias=False, kernel_initializer=_tf1.init_weights()),
        keras.layers.Dropout(1 - 0.5),
        keras.layers.Dense(10, use_bias=False, kernel_initializer=_tf1.init_weights()),
    ]
)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=0.001, rho=0.9),
    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    metrics=["categorical_accuracy"],
)
model.fit(trX2, trY, epochs=NUM_EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(teX2, teY, verbose=0)[1])
