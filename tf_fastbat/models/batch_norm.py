"""torch.nn.BatchNorm2d's moving averages in Keras, reweighted per forward pass by tf_fastbat.running_averages."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tf_fastbat.running_averages import effective_momentum


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
        momentum = effective_momentum(self.momentum)
        self.moving_mean.assign(self.moving_mean * momentum + ops.cast(mean, self.moving_mean.dtype) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum
                                    + ops.cast(unbiased, self.moving_variance.dtype) * (1.0 - momentum))
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs = ops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                          epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)
