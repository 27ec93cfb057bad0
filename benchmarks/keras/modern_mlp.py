"""The "modern" net of "What is TensorFlow?", in Keras 3 as the TF1 code computes.

``relu(dropout(relu(X @ w_h), keep 0.4) @ w_h2) @ w_o``, 625-625 (N(0, 0.01), no biases): the
tutorial builds an input dropout (keep 0.7) but feeds ``X``, not its output, to the first layer, so
that dropout is left out; TF1's ``keep_prob`` 0.4 is Keras' rate 0.6. Softmax cross-entropy on the
logits, ``RMSPropOptimizer(0.001, 0.9)`` (Keras RMSprop, rho 0.9), batch 100, 50 epochs -> 98.52 %.
See _tf1.py for the data and what differs from the tutorial.
"""

import _common
import _tf1
import keras

args = _common.parse_args(50, __doc__)
keras.utils.set_random_seed(args.seed)
trX, trY, teX, teY = _tf1.load(args.train_size)
NUM_EPOCHS = args.epochs
BATCH_SIZE = 100

model = keras.Sequential(
    [
        keras.Input(shape=(784,)),
        keras.layers.Dense(625, activation="relu", use_bias=False, kernel_initializer=_tf1.init_weights()),
        keras.layers.Dropout(1 - 0.4),
        keras.layers.Dense(625, activation="relu", use_bias=False, kernel_initializer=_tf1.init_weights()),
        keras.layers.Dense(10, use_bias=False, kernel_initializer=_tf1.init_weights()),
    ]
)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=0.001, rho=0.9),
    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    metrics=["categorical_accuracy"],
)
model.fit(trX, trY, epochs=NUM_EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(teX, teY, verbose=0)[1])
