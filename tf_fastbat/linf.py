"""The L-infinity threat model's geometry and the attack loss, shared by the training methods and the evaluation
attacks (one definition of the feasible set for both)."""

from __future__ import annotations

import tensorflow as tf


def project(delta: tf.Tensor, x: tf.Tensor, eps: float) -> tf.Tensor:
    """P: projection onto {||delta||_inf <= eps, 0 <= x + delta <= 1}."""
    delta = tf.clip_by_value(delta, -eps, eps)
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def clip_to_box(delta: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Projection onto the image box only: 0 <= x + delta <= 1."""
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def ce_sum(logits: tf.Tensor, y: tf.Tensor, smoothing: float = 0.0) -> tf.Tensor:
    """Summed cross-entropy (the official code's attack loss, up to sign); with `smoothing` s, torch's label
    smoothing: the target is (1 - s) one_hot(y) + s / K, i.e. (1 - s) CE(y) + s mean_k CE(k)."""
    logits = tf.cast(logits, tf.float32)
    if not smoothing:
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=logits))
    log_p = tf.nn.log_softmax(logits, axis=-1)
    true_class = tf.gather(log_p, tf.cast(y, tf.int32), axis=1, batch_dims=1)
    return -tf.reduce_sum((1.0 - smoothing) * true_class + smoothing * tf.reduce_mean(log_p, axis=-1))
