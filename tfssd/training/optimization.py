"""Optimizers and the learning-rate schedule, with the semantics of SageMaker's (MXNet's) algorithm.

Momentum applies to sgd only; weight decay is coupled L2 (``grad += wd * w``, on convolution
kernels) for sgd and rmsprop only; MXNet's AdaDelta has no learning rate, so neither
learning_rate nor the schedule apply to it.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def learning_rate_at(step: tf.Tensor, base: float, factor: float,
                     boundaries: tuple[int, ...]) -> tf.Tensor:
    """``base * factor ** (number of boundaries <= step)``: SageMaker's step schedule."""
    if not boundaries:
        return tf.constant(base, tf.float32)
    passed = tf.reduce_sum(tf.cast(tf.cast(step, tf.int64) >= tf.constant(boundaries, tf.int64),
                                   tf.float32))
    return base * tf.pow(tf.constant(factor, tf.float32), passed)


def build_optimizer(name: str, learning_rate, momentum: float) -> keras.optimizers.Optimizer:
    """The Keras optimizer with MXNet's settings; ``learning_rate`` may be a callable."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate, rho=0.9, epsilon=1e-8)
    if name == "adadelta":
        # MXNet's AdaDelta ignores the learning rate, i.e. uses 1.0.
        return keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-5)
    raise ValueError(f"unknown optimizer {name!r}")


def uses_weight_decay(optimizer: str) -> bool:
    return optimizer in ("sgd", "rmsprop")


def is_decayed(variable) -> bool:
    """Weight decay applies to convolution kernels, not to biases or scales (as MXNet's wd_mult)."""
    return variable.name.split("/")[-1].split(":")[0] == "kernel"


@tf.autograph.experimental.do_not_convert  # autograph mangles the conditional in the loop
def add_weight_decay(grads, variables, decayed, rate: float):
    """MXNet's coupled L2: ``grad + rate * w`` for the variables flagged in ``decayed``."""
    return [grad + rate * variable if flag else grad
            for grad, variable, flag in zip(grads, variables, decayed)]
