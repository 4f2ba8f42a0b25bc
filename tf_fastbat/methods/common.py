"""Shared pieces of the training methods: the feasible set, losses and input gradients."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tf_fastbat.linf import ce_sum, clip_to_box, project  # noqa: F401  (the methods' vocabulary)
from tf_fastbat.methods.base import Step








def ce_mean(logits: tf.Tensor, y: tf.Tensor, smoothing: float = 0.0) -> tf.Tensor:
    """Batch-mean cross-entropy (label-smoothed by `smoothing`): the training objective."""
    return ce_sum(logits, y, smoothing) / tf.cast(tf.shape(logits)[0], tf.float32)


def scaled(loss: tf.Tensor, loss_scale: Optional[tf.Tensor]) -> tf.Tensor:
    """loss * S before differentiation (float16 loss scaling keeps small gradients from underflowing)."""
    return loss if loss_scale is None else loss * loss_scale


def unscaled(gradient: tf.Tensor, loss_scale: Optional[tf.Tensor]) -> tf.Tensor:
    """The true gradient from the gradient of a scaled loss."""
    return gradient if loss_scale is None else gradient / loss_scale


def input_gradient(model, x: tf.Tensor, y: tf.Tensor, delta: tf.Tensor,
                   loss_scale: Optional[tf.Tensor] = None, smoothing: float = 0.0) -> tf.Tensor:
    """grad_delta CE_sum(theta; x + delta), the model in training mode like the official attack loops."""
    with tf.GradientTape() as tape:
        tape.watch(delta)
        loss = scaled(ce_sum(model(x + delta, training=True), y, smoothing), loss_scale)
    return unscaled(tape.gradient(loss, delta), loss_scale)


def train_on(model, x_adv: tf.Tensor, y: tf.Tensor, loss_scale: Optional[tf.Tensor] = None,
             smoothing: float = 0.0) -> Step:
    """The Step of plain (label-smoothed by `smoothing`) cross-entropy training at the input x_adv (gradients
    times the loss scale, if any)."""
    with tf.GradientTape() as tape:
        logits = model(x_adv, training=True)
        loss = scaled(ce_mean(logits, y, smoothing), loss_scale)
    return Step(tape.gradient(loss, model.trainable_variables), x_adv, logits)


def signed_step(model, x, y, delta, step_size: float, loss_scale: Optional[tf.Tensor] = None,
                smoothing: float = 0.0) -> tf.Tensor:
    """delta + step_size * sign(grad_delta CE): one FGSM/PGD ascent step, before projection."""
    return delta + step_size * tf.sign(input_gradient(model, x, y, delta, loss_scale, smoothing))
