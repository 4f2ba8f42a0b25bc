"""Shared pieces of the training methods: the feasible set, losses and input gradients."""

from __future__ import annotations

import tensorflow as tf

from tf_fastbat.methods.base import Step


def project(delta: tf.Tensor, x: tf.Tensor, eps: float) -> tf.Tensor:
    """P: projection onto {||delta||_inf <= eps, 0 <= x + delta <= 1}."""
    delta = tf.clip_by_value(delta, -eps, eps)
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def clip_to_box(delta: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Projection onto the image box only: 0 <= x + delta <= 1."""
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def ce_sum(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Summed cross-entropy (the official code's attack loss, up to sign)."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32), logits=logits))


def ce_mean(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Batch-mean cross-entropy: the training objective."""
    return ce_sum(logits, y) / tf.cast(tf.shape(logits)[0], tf.float32)


def input_gradient(model, x: tf.Tensor, y: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """grad_delta CE_sum(theta; x + delta), the model in training mode like the official attack loops."""
    with tf.GradientTape() as tape:
        tape.watch(delta)
        loss = ce_sum(model(x + delta, training=True), y)
    return tape.gradient(loss, delta)


def train_on(model, x_adv: tf.Tensor, y: tf.Tensor) -> Step:
    """The Step of plain cross-entropy training at the input x_adv."""
    with tf.GradientTape() as tape:
        logits = model(x_adv, training=True)
        loss = ce_mean(logits, y)
    return Step(tape.gradient(loss, model.trainable_variables), x_adv, logits)


def signed_step(model, x, y, delta, step_size: float) -> tf.Tensor:
    """delta + step_size * sign(grad_delta CE): one FGSM/PGD ascent step, before projection."""
    return delta + step_size * tf.sign(input_gradient(model, x, y, delta))
