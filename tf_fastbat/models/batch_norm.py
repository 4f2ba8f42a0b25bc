"""torch.nn.BatchNorm2d's moving averages in Keras, and a scope that reweights them per forward pass."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional

import keras
import tensorflow as tf
from keras import ops

_SCOPE = threading.local()  # per thread: MirroredStrategy runs each replica's step in its own thread


@contextlib.contextmanager
def moving_average_momentum(momentum_of: Callable[[float], float]) -> Iterator[None]:
    """Inside, each BatchNorm of this module updates its moving averages with momentum_of(its momentum).

    How a method maps its training-mode forwards onto the official loop's (tf_fastbat.methods.statistics); a
    thread-local scope because layers cannot take per-call arguments through a functional model.
    """
    previous = getattr(_SCOPE, "momentum_of", None)
    _SCOPE.momentum_of = momentum_of
    try:
        yield
    finally:
        _SCOPE.momentum_of = previous


def _effective_momentum(momentum: float) -> float:
    momentum_of: Optional[Callable[[float], float]] = getattr(_SCOPE, "momentum_of", None)
    return momentum if momentum_of is None else momentum_of(momentum)


def _reduced_count(inputs: tf.Tensor, axes, synchronized: bool) -> tf.Tensor:
    """How many values each channel's batch statistics average: over all replicas when synchronized."""
    shape = tf.shape(inputs)
    count = tf.cast(tf.reduce_prod([shape[axis] for axis in axes]), tf.float32)
    context = tf.distribute.get_replica_context()
    if synchronized and context is not None and context.num_replicas_in_sync > 1:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return count


@keras.saving.register_keras_serializable(package="tf_fastbat")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization with torch's running variance: normalizes by the biased batch variance, but
    averages the unbiased one (n / (n - 1)), as torch.nn.BatchNorm2d does; Keras averages the biased one."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(inputs, None)
        count = _reduced_count(inputs, self._reduction_axes, self.synchronized)
        unbiased = variance * (count / tf.maximum(count - 1.0, 1.0))
        momentum = _effective_momentum(self.momentum)
        self.moving_mean.assign(self.moving_mean * momentum + ops.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + ops.cast(unbiased, self.moving_variance.dtype) * (1.0 - momentum))
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs = ops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                          epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)
