"""Fast-AT-GA (GradAlign, Andriushchenko & Flammarion 2020): FGSM from zero plus a gradient-alignment penalty."""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat import fields
from tf_fastbat.methods.base import Method, Step
from tf_fastbat.fields import at_least, hparam
from tf_fastbat.methods.common import ce_mean, input_gradient, project, scaled
from tf_fastbat.methods.statistics import OfficialForwards

# GradAlign's own CIFAR-10 scripts (sh/exps_diff_eps_cifar10.sh), eps = 1..16 (/255); Fast-BAT's README copies
# the even ones. Between and beyond them the scripts' rule: exp(eps ln(10) / 8 + ln(0.02)).
GA_COEF_BY_EPS = {1: 0.027, 2: 0.036, 3: 0.047, 4: 0.063, 5: 0.084, 6: 0.112, 7: 0.150, 8: 0.200, 9: 0.267,
                  10: 0.356, 11: 0.474, 12: 0.632, 13: 0.843, 14: 1.124, 15: 1.500, 16: 2.000}
FORWARDS = OfficialForwards(official=("clean", "adversarial", "clean", "noisy"), ours=("clean", "adversarial", "noisy"))


def default_ga_coef(eps: float) -> float:
    """The scripts' coefficient for an integer eps in 1..16 (1/255 units), their log-linear rule otherwise."""
    eps_255 = eps * 255.0
    tabulated = round(eps_255)
    if abs(eps_255 - tabulated) < 1e-6 and tabulated in GA_COEF_BY_EPS:
        return GA_COEF_BY_EPS[tabulated]
    return 0.02 * 10.0 ** (eps_255 / 8.0)


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
    ga_coef: Optional[float] = hparam(None, "GradAlign coefficient of the gradient-alignment penalty.", type=float,
                                      check=at_least(0), default_note="GradAlign's table for eps")
    attack_lr: Optional[float] = fields.attack_lr("1.25 eps")

    name = "fast_at_ga"
    label = "Fast-AT-GA"  # in tables and figures
    smoothed_losses = ("training",)  # FastAT_Benchmark's GradAlign: plain CE for the FGSM and alignment gradients

    def coefficient(self) -> float:
        return default_ga_coef(self.eps) if self.ga_coef is None else self.ga_coef

    def step(self, model, x, y, noise, context, loss_scale=None):
        del context  # the same update at every step
        step = 1.25 * self.eps if self.attack_lr is None else self.attack_lr
        # One clean input gradient serves both the FGSM direction and the alignment's clean side (detached).
        with FORWARDS.at("clean"):
            clean_gradient = tf.stop_gradient(input_gradient(model, x, y, tf.zeros_like(x), loss_scale))
        delta = project(step * tf.sign(clean_gradient), x, self.eps)
        x_adv = x + delta
        variables = model.trainable_variables
        with tf.GradientTape() as adversarial_tape, FORWARDS.at("adversarial"):
            logits = model(x_adv, training=True)
            adversarial_loss = scaled(ce_mean(logits, y, self.smoothing("training")), loss_scale)
        grads = adversarial_tape.gradient(adversarial_loss, variables)
        # The noisy point x + eta is not clipped to [0, 1]: both official implementations take it as is.
        with tf.GradientTape() as cross_tape:
            with tf.GradientTape() as inner, FORWARDS.at("noisy"):
                inner.watch(noise)
                noisy_loss = scaled(ce_mean(model(x + noise, training=True), y), loss_scale)
            noisy_gradient = inner.gradient(noisy_loss, noise)  # kept for the double back-prop (this one only)
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
