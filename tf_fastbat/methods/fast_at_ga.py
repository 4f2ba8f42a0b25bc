"""Fast-AT-GA (GradAlign, Andriushchenko & Flammarion 2020): FGSM from zero plus a gradient-alignment penalty."""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat.methods.base import Method, Step
from tf_fastbat.methods.common import ce_mean, input_gradient, project, scaled

# Official coefficients for eps = 2, 4, ..., 16 (/255).
GA_COEF_BY_EPS = {2: 0.036, 4: 0.063, 6: 0.112, 8: 0.2, 10: 0.356, 12: 0.632, 14: 1.124, 16: 2.0}


def default_ga_coef(eps: float) -> float:
    """The official table's coefficient for the nearest tabulated eps (in 1/255 units)."""
    eps_255 = eps * 255.0
    nearest = min(GA_COEF_BY_EPS, key=lambda e: abs(e - eps_255))
    return GA_COEF_BY_EPS[nearest]


def gradient_alignment(clean_gradient: tf.Tensor, noisy_gradient: tf.Tensor) -> tf.Tensor:
    """Mean cosine between per-example input gradients, examples where either gradient is zero left out."""
    flat_clean = tf.reshape(clean_gradient, [tf.shape(clean_gradient)[0], -1])
    flat_noisy = tf.reshape(noisy_gradient, [tf.shape(noisy_gradient)[0], -1])
    norm_clean = tf.norm(flat_clean, axis=1)
    norm_noisy = tf.norm(flat_noisy, axis=1)
    nonzero = tf.logical_and(norm_clean > 0, norm_noisy > 0)
    cos = tf.reduce_sum(flat_clean * flat_noisy, axis=1) / tf.where(nonzero, norm_clean * norm_noisy, 1.0)
    count = tf.reduce_sum(tf.cast(nonzero, tf.float32))
    return tf.reduce_sum(tf.where(nonzero, cos, 0.0)) / tf.maximum(count, 1.0)


@dataclasses.dataclass(frozen=True)
class FastATGA(Method):
    ga_coef: Optional[float] = None  # None: the official table's value for eps
    attack_lr: Optional[float] = None  # None: 1.25 eps

    name = "fast_at_ga"

    def coefficient(self) -> float:
        return default_ga_coef(self.eps) if self.ga_coef is None else self.ga_coef

    def step(self, model, x, y, noise, loss_scale=None):
        step = 1.25 * self.eps if self.attack_lr is None else self.attack_lr
        # One clean input gradient serves both the FGSM direction and the alignment's clean side (detached).
        clean_gradient = tf.stop_gradient(input_gradient(model, x, y, tf.zeros_like(x), loss_scale))
        delta = project(step * tf.sign(clean_gradient), x, self.eps)
        x_adv = x + delta
        variables = model.trainable_variables
        with tf.GradientTape() as adversarial_tape:
            logits = model(x_adv, training=True)
            adversarial_loss = scaled(ce_mean(logits, y), loss_scale)
        grads = adversarial_tape.gradient(adversarial_loss, variables)
        random_point = project(noise, x, self.eps)
        with tf.GradientTape() as cross_tape:
            with tf.GradientTape() as inner:
                inner.watch(random_point)
                noisy_loss = scaled(ce_mean(model(x + random_point, training=True), y), loss_scale)
            noisy_gradient = inner.gradient(noisy_loss, random_point)  # kept for the double back-prop (this one only)
        # The regularizer depends on theta only through noisy_gradient, so its theta-gradient is the vector-Jacobian
        # product of noisy_gradient with d regularizer / d noisy_gradient (the chain rule the outer tape would apply).
        with tf.GradientTape() as alignment_tape:
            alignment_tape.watch(noisy_gradient)
            regularizer = self.coefficient() * (1.0 - gradient_alignment(clean_gradient, noisy_gradient))
        direction = tf.stop_gradient(alignment_tape.gradient(regularizer, noisy_gradient))
        if loss_scale is None:
            alignment_grads = cross_tape.gradient(noisy_gradient, variables, output_gradients=direction)
            factor = 1.0
        else:
            # Float16: noisy_gradient is S g, the cosine's derivative is O(1 / |g|) and would overflow; the product
            # is linear in the cotangent, so it runs on direction / max|direction| and the factor goes on the
            # result, with S so that these gradients carry the loss scale like the others.
            peak = tf.maximum(tf.reduce_max(tf.abs(direction)), 1e-30)
            alignment_grads = cross_tape.gradient(noisy_gradient, variables, output_gradients=direction / peak)
            factor = peak * loss_scale
        grads = [g if r is None else g + (r if loss_scale is None else tf.cast(factor, r.dtype) * r)
                 for g, r in zip(grads, alignment_grads)]
        return Step(grads, x_adv, logits)
