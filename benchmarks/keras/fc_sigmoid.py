"""The basic fully connected net of "What is TensorFlow?", in Keras 3 as the TF1 code computes.

``sigmoid(X @ W_h) @ W_o`` with 620 hidden units (N(0, 0.01) weights, no biases), softmax
cross-entropy on the logits, ``GradientDescentOptimizer(0.2)``, batch 50, 50 epochs -> 97.86 %.
See _tf1.py for the data and what differs from the tutorial.
"""

import _common
import _tf1
import keras

args = _common.parse_args(50, __doc__)
keras.utils.set_random_seed(args.seed)
trX, trY, teX, teY = _tf1.load(args.train_size)
NUM_HIDDEN = 620
NUM_EPOCHS = args.epochs
BATCH_SIZE = 50

model = keras.Sequential(
    [
        keras.Input(shape=(784,)),
        keras.layers.Dense(
            NUM_HIDDEN, activation="sigmoid", use_bias=False, kernel_initializer=_tf1.init_weights()
        ),
        keras.layers.Dense(10, use_bias=False, kernel_initializer=_tf1.init_weights()),
    ]
)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.2),
    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    metrics=["categorical_accuracy"],
)
model.fit(trX, trY, epochs=NUM_EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(teX, teY, verbose=0)[1])
