"""Fast-BAT (Zhang et al., ICML 2022): bi-level adversarial training with a Hessian-free implicit gradient."""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat import fields
from tf_fastbat.methods.base import Method, Step
from tf_fastbat.fields import above, at_least, hparam, one_of
from tf_fastbat.methods.common import ce_sum, input_gradient, project, scaled, unscaled
from tf_fastbat.methods.statistics import OfficialForwards

LINEARIZATIONS = ("pgd_nosign", "pgd_sign", "uniform", "corner")
IMPLICIT_GRADIENTS = ("hessian_free", "hessian_aware")
INTERIOR_MARGIN = 1e-7


def default_attack_lr(eps: float) -> float:
    """The official non-sign step: 5000/255 for eps <= 8/255, 2000/255 above."""
    return (5000.0 if eps * 255.0 <= 8.0 + 1e-6 else 2000.0) / 255.0


def interior_mask(delta: tf.Tensor, x: tf.Tensor, eps: float) -> tf.Tensor:
    """H_C (eq. 10): 1 where delta lies strictly inside its box [max(-eps, -x), min(eps, 1 - x)], else 0."""
    lower = tf.maximum(-x, -eps)
    upper = tf.minimum(1.0 - x, eps)
    inside = tf.logical_and(delta > lower + INTERIOR_MARGIN, delta < upper - INTERIOR_MARGIN)
    return tf.cast(inside, delta.dtype)


@dataclasses.dataclass(frozen=True)
class FastBAT(Method):
    # a = 1/lambda of eq. 8, Fast-BAT's non-sign lower-level step; None: the official rule
    attack_lr: Optional[float] = fields.attack_lr("5000 for eps <= 8, else 2000 (the official non-sign step)",
                                                  check=above(0))
    lmbda: float = hparam(10.0, "Fast-BAT's lambda of the implicit gradient (eq. 11); 0 means 1/attack_lr, as in the "
                          "official trainer.", check=at_least(0))
    linearization: str = hparam("pgd_nosign", "Fast-BAT's linearization point (Remark 2, Table A3).",
                                check=one_of(LINEARIZATIONS))
    implicit_gradient: str = hparam("hessian_free", "Fast-BAT's implicit gradient (Table A4): eq. 11, or with "
                                    "(lambda I - Hessian)^-1 solved by conjugate gradients.",
                                    check=one_of(IMPLICIT_GRADIENTS))
    cg_steps: int = hparam(5, "Conjugate-gradient iterations of implicit_gradient=hessian_aware.", check=at_least(1))

    name = "fast_bat"
    label = "Fast-BAT"  # in tables and figures
    smoothed_losses = ("training",)  # the upper-level loss at delta* (not in FastAT_Benchmark; like its PGD-AT)
    fraction_fields = ("eps",)  # attack_lr is the non-sign step a (official 5000/255), not a pixel fraction

    def step_size(self) -> float:
        return default_attack_lr(self.eps) if self.attack_lr is None else self.attack_lr

    def implicit_lambda(self) -> float:
        """lambda of eq. 11; the official trainer reads --lmbda=0 as 1/attack_lr."""
        return 1.0 / self.step_size() if self.lmbda == 0 else self.lmbda

    def forwards(self) -> OfficialForwards:
        """The official loop's training-mode forwards: random start (if any), z, and delta* twice."""
        start = ("random_start",) if self.linearization in ("pgd_nosign", "pgd_sign") else ()
        ours = start + ("linearization_point", "lower_level_solution")
        return OfficialForwards(official=ours + ("lower_level_solution",), ours=ours)

    def linearization_point(self, model, x, y, noise, loss_scale=None, forwards=None) -> tf.Tensor:
        """z, the point where the lower-level loss is linearized (Remark 2, Table A3)."""
        random_start = project(noise, x, self.eps)
        if self.linearization == "uniform":
            return random_start
        if self.linearization == "corner":
            return project(self.eps * tf.sign(noise), x, self.eps)
        forwards = forwards or self.forwards()
        with forwards.at("random_start"):
            gradient = input_gradient(model, x, y, random_start, loss_scale)
        if self.linearization == "pgd_sign":
            return project(random_start + 1.25 * self.eps * tf.sign(gradient), x, self.eps)
        return project(random_start + self.step_size() * gradient, x, self.eps)

    def step(self, model, x, y, noise, context, loss_scale=None):
        del context  # the same update at every step
        a, lmbda, forwards = self.step_size(), self.implicit_lambda(), self.forwards()
        z = tf.stop_gradient(self.linearization_point(model, x, y, noise, loss_scale, forwards))
        variables = model.trainable_variables
        hessian_aware = self.implicit_gradient == "hessian_aware"
        with tf.GradientTape(persistent=hessian_aware) as cross_tape:
            cross_tape.watch(z)
            with tf.GradientTape() as z_tape, forwards.at("linearization_point"):
                z_tape.watch(z)
                loss_at_z = scaled(ce_sum(model(x + z, training=True), y), loss_scale)
            scaled_grad_at_z = z_tape.gradient(loss_at_z, z)  # a function of theta, kept for the cross term
        grad_at_z = unscaled(scaled_grad_at_z, loss_scale)
        lower_level_solution = tf.stop_gradient(project(z + a * grad_at_z, x, self.eps))  # eq. 8
        batch_size = tf.cast(tf.shape(x)[0], tf.float32)
        # One forward/backward at delta* gives both the theta- and the delta-gradient of CE.
        with tf.GradientTape() as star_tape, forwards.at("lower_level_solution"):
            star_tape.watch(lower_level_solution)
            logits = model(x + lower_level_solution, training=True)
            loss_at_star = scaled(ce_sum(logits, y, self.smoothing("training")), loss_scale)
        grad_theta_star, grad_delta_star = star_tape.gradient(loss_at_star, [variables, lower_level_solution])
        mask = interior_mask(lower_level_solution, x, self.eps)
        # eqs. 10-11: d delta*/d theta^T g = (1/lambda) grad_theta <grad_delta CE(z), H g>, Hessian-free.
        direction = tf.stop_gradient(mask * unscaled(grad_delta_star, loss_scale))  # H g
        if hessian_aware:  # lambda (lambda I - grad_dd CE(z))^-1 H g on the interior; lambda cancels below
            direction = lmbda * hessian_aware_solve(
                lambda v: unscaled(cross_tape.gradient(scaled_grad_at_z, z, output_gradients=v), loss_scale),
                direction, mask, lmbda, self.cg_steps)
        # The cross term is linear in the cotangent, so constant factors go on its result: 1/(lambda B) always,
        # and under loss scaling (float16) also max|H g|, so that the double backward runs on a cotangent of
        # size 1 (small gradients would underflow) while the primal S grad_at_z carries the loss scale S.
        peak = 1.0 if loss_scale is None else tf.maximum(tf.reduce_max(tf.abs(direction)), 1e-30)
        cotangent = direction if loss_scale is None else direction / peak
        cross_term = cross_tape.gradient(scaled_grad_at_z, variables, output_gradients=cotangent)
        implicit_weight = peak / (lmbda * batch_size)
        grads = [
            g / batch_size if cross is None else g / batch_size + tf.cast(implicit_weight, cross.dtype) * cross
            for g, cross in zip(grad_theta_star, cross_term)
        ]
        del cross_tape
        return Step(grads, x + lower_level_solution, logits)


def hessian_aware_solve(hessian_vector_product, rhs: tf.Tensor, mask: tf.Tensor, lmbda: float,
                        steps: int) -> tf.Tensor:
    """u with M (lambda I - grad_dd CE) M u = rhs on the interior coordinates M, by `steps` of conjugate gradient.

    The Hessian-aware implicit gradient of Table A4: the lower-level stationarity condition differentiated without
    the Hessian-free approximation grad_dd CE = 0. The batch is one system (BatchNorm couples examples in training
    mode). A direction of non-positive curvature (lambda too small for the system to be positive
    definite) leaves the iterate where it is; the start is the Hessian-free rhs / lambda.
    """
    def apply(v):
        return mask * (lmbda * v - tf.stop_gradient(hessian_vector_product(v)))

    def dot(a, b):
        return tf.reduce_sum(a * b)

    solution = rhs / lmbda  # the Hessian-free solution: a warm start that CG then corrects
    residual = rhs - apply(solution)
    search = residual
    residual_norm = dot(residual, residual)
    for _ in range(steps):
        applied = apply(search)
        curvature = dot(search, applied)
        step = tf.where(curvature > 0, residual_norm / tf.maximum(curvature, 1e-30), 0.0)
        solution = solution + step * search
        residual = residual - step * applied
        new_norm = dot(residual, residual)
        search = residual + tf.math.divide_no_nan(new_norm, residual_norm) * search
        residual_norm = new_norm
    return solution
