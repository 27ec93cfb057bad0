"""Logistic regression on MNIST from "What is TensorFlow?", in Keras 3 as the TF1 code computes.

``pred_logit = X @ w`` (784 x 10, N(0, 0.01), no bias), softmax cross-entropy on the logits,
``GradientDescentOptimizer(0.05)``, batch 200, 30 epochs. The tutorial does not write this update by
hand (it calls TF's optimizer), so Keras' SGD(0.05) runs it here; see _tf1.py for the data.
"""

import _common
import _tf1
import keras

args = _common.parse_args(30, __doc__)
keras.utils.set_random_seed(args.seed)
trX, trY, teX, teY = _tf1.load(args.train_size)
NUM_EPOCHS = args.epochs
BATCH_SIZE = 200

model = keras.Sequential(
    [
        keras.Input(shape=(784,)),
        keras.layers.Dense(10, use_bias=False, kernel_initializer=_tf1.init_weights()),
    ]
)
model.compile(
    optimizer=keras.optimizers.SGD(learning_rate=0.05),
    loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    metrics=["categorical_accuracy"],
)
model.fit(trX, trY, epochs=NUM_EPOCHS, batch_size=BATCH_SIZE, verbose=0, callbacks=[_common.epoch_timer()])
_common.report_test(model.evaluate(teX, teY, verbose=0)[1])
