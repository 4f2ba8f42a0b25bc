"""ELLE-A (Abad Rocamora et al., ICLR 2024): FGSM training plus an adaptive local-linearity penalty.

After LIONS-EPFL/ELLE core/utils/train.py (Trainer.loss with reg ELLE, Trainer.train with lambda_schedule onoff):
  x_adv = x + r u0 + a sign(grad CE(f(x + r u0)))      u0 ~ U[-eps, eps]^d; r = input_noise_rate (0: plain FGSM)
          (no [0, 1] clip; with `clamp` a projection onto the eps-ball only)
  x_a, x_b = x + U[-eps, eps]^d, x + U[-eps, eps]^d,  alpha ~ U[0, 1) per example,  x_c = (1 - alpha) x_a + alpha x_b
  E     = mean_i (l(x_c) - (1 - alpha) l(x_a) - alpha l(x_b))^2   per-example CE l, one forward of [x_a; x_b; x_c]
  loss  = CE(f(x_adv), y) + lambda E
ELLE-A, after the step: if more than 2 earlier E and E > mean + sensitivity * std of all earlier E (population
std), lambda = lambda_max, else lambda *= decay_rate; then E joins the history. lambda starts at 0. ELLE
(lambda_schedule constant) keeps lambda = lin_reg.
The official Trainer.train then calls optimizer.step() twice with this gradient, its per-batch scheduler stepped in
between (`optimizer_steps_per_batch` = 2, which the trainer passes to optim.CoupledSGD).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat import fields
from tf_fastbat.methods import global_batch, state
from tf_fastbat.methods.base import Method, Step
from tf_fastbat.fields import FromFlag, at_least, hparam, one_of, whole, within
from tf_fastbat.methods.common import ce_mean, input_gradient, scaled
from tf_fastbat.methods.statistics import OfficialForwards

SCHEDULES = ("onoff", "constant")
LAMBDA_MAX_ONOFF = 4000.0  # scripts/run_elle-a_cifar10.sh, every eps
STATE = ("lambda", "count", "mean", "m2")  # lambda and Welford's running count, mean and sum of squared deviations
# The official loop's training-mode forwards: the attack's, the training input's, the triplets', and a clean one
# (for its accuracy metric). Without input noise the attack's input is x itself, so one forward stands for both.
FORWARDS_CLEAN_START = OfficialForwards(official=("clean", "adversarial", "triplets", "clean"),
                                        ours=("clean", "adversarial", "triplets"))
FORWARDS_NOISY_START = OfficialForwards(official=("start", "adversarial", "triplets", "clean"),
                                        ours=("start", "adversarial", "triplets", "clean"))
SALT_A, SALT_B, SALT_ALPHA = 1, 2, 3  # stateless streams of the triplets, apart from the trainer's noise


def default_constant_lambda(eps: float) -> float:
    """scripts/run_elle_cifar10.sh: 1000 up to eps 8/255, 5000 up to 20/255, 10000 beyond."""
    eps_255 = eps * 255.0
    return 1000.0 if eps_255 <= 8 + 1e-6 else 5000.0 if eps_255 <= 20 + 1e-6 else 10000.0


def linearity_error(per_example_losses: tf.Tensor, alpha: tf.Tensor, batch: tf.Tensor) -> tf.Tensor:
    """Per-example (l_c - (1 - alpha) l_a - alpha l_b)^2 from the losses of [x_a; x_b; x_c]."""
    l_a, l_b, l_c = per_example_losses[:batch], per_example_losses[batch:2 * batch], per_example_losses[2 * batch:]
    return tf.square(l_c - ((1.0 - alpha) * l_a + alpha * l_b))


def adaptive_update(variables, error: tf.Tensor, lambda_max: float, decay_rate: float, sensitivity: float) -> None:
    """ELLE-A's rule on the batch's error E (already global): raise lambda on a spike, else decay; record E."""
    error = tf.cast(error, tf.float64)
    lam, count, mean, m2 = (variables[name].read_value() for name in STATE)
    std = tf.sqrt(tf.maximum(m2, 0.0) / tf.maximum(count, 1.0))
    spike = tf.logical_and(count > 2.0, error > mean + sensitivity * std)
    state.assign(variables["lambda"], tf.where(spike, tf.constant(lambda_max, tf.float64), lam * decay_rate))
    count = count + 1.0
    new_mean = mean + (error - mean) / count
    state.assign(variables["count"], count)
    state.assign(variables["mean"], new_mean)
    state.assign(variables["m2"], m2 + (error - mean) * (error - new_mean))


@dataclasses.dataclass(frozen=True)
class ElleA(Method):
    attack_lr: Optional[float] = fields.attack_lr("eps (the official scripts' --attack-step = --attack-eps)")
    input_noise_rate: float = hparam(0.0, "ELLE: the FGSM starts at x + rate U[-eps, eps] (official 0: from x; 2: "
                                     "N-FGSM + ELLE-A).", flag="elle_input_noise_rate", check=at_least(0))
    clamp: bool = hparam(False, "ELLE: project the FGSM point onto the eps-ball (official: no).", flag="elle_clamp")
    lambda_schedule: str = hparam("onoff", "ELLE: onoff is ELLE-A (lambda raised to lin_reg on a linearity-error "
                                  "spike, decayed otherwise); constant is ELLE.", check=one_of(SCHEDULES))
    # onoff: lambda_max (None: 4000); constant: lambda (None: the scripts' table)
    lin_reg: Optional[float] = hparam(None, "ELLE-A's lambda_max / ELLE's lambda.", type=float, check=at_least(0),
                                      default_note="the official scripts: ELLE-A 4000; ELLE 1000 up to eps 8, 5000 "
                                      "up to 20, 10000 beyond")
    decay_rate: float = hparam(0.99, "ELLE-A: lambda's factor per step without a spike.", flag="elle_decay_rate",
                               check=within(0, 1))
    sensitivity: float = hparam(2.0, "ELLE-A: a spike is an error above mean + this many std.",
                                flag="elle_sensitivity", check=at_least(0))
    seed: int = hparam(0, "Seed of the triplet draws.", own_flag=False, from_flag=FromFlag("seed"))
    # The official trainer calls optimizer.step() twice per batch with the same gradient (its per-batch scheduler
    # stepped in between); 1: one step, as every other method here.
    optimizer_steps_per_batch: int = hparam(
        2, "ELLE: SGD steps per batch with the batch's gradient. The official trainer (core/utils/train.py) calls "
        "optimizer.step() twice, its per-batch scheduler stepped in between (the second step takes the next step's "
        "lr and momentum and the weight decay of the updated weights); 1: one step, as every other method here.",
        flag="elle_optimizer_steps", check=whole(1))

    name = "elle_a"
    label = "ELLE-A"  # in tables and figures
    # FastAT_Benchmark's elle.py smooths the training CE only (its FGSM and the triplet losses use plain CE).
    smoothed_losses = ("training",)

    def regularization(self) -> float:
        """lambda_max of ELLE-A, or ELLE's fixed lambda."""
        if self.lin_reg is not None:
            return self.lin_reg
        return LAMBDA_MAX_ONOFF if self.lambda_schedule == "onoff" else default_constant_lambda(self.eps)

    def state_spec(self, num_examples, input_shape, num_classes=None):
        return {name: ((), tf.float64) for name in STATE} if self.lambda_schedule == "onoff" else {}

    def current_lambda(self, context) -> tf.Tensor:
        if self.lambda_schedule == "constant":
            return tf.constant(self.regularization(), tf.float32)
        return tf.cast(context.state["lambda"].read_value(), tf.float32)

    def triplets(self, x: tf.Tensor, step: tf.Tensor):
        """(x_a, x_b, alpha [B, 1, 1, 1]): this replica's slice of the step's global-batch draws."""
        shape = tf.shape(x)
        x_a = x + global_batch.uniform(global_batch.step_seed(self.seed, step, SALT_A), shape, -self.eps, self.eps)
        x_b = x + global_batch.uniform(global_batch.step_seed(self.seed, step, SALT_B), shape, -self.eps, self.eps)
        alpha = global_batch.uniform(global_batch.step_seed(self.seed, step, SALT_ALPHA), shape[:1], 0.0, 1.0)
        return x_a, x_b, tf.reshape(alpha, [-1, 1, 1, 1])

    def step(self, model, x, y, noise, context, loss_scale=None):
        if context is None:
            raise ValueError("elle_a needs the trainer's step context (its triplets and lambda follow the step)")
        forwards = FORWARDS_CLEAN_START if self.input_noise_rate == 0 else FORWARDS_NOISY_START
        attack_lr = self.eps if self.attack_lr is None else self.attack_lr
        start = tf.zeros_like(x) if self.input_noise_rate == 0 else self.input_noise_rate * noise
        with forwards.at("clean" if self.input_noise_rate == 0 else "start"):
            gradient = input_gradient(model, x, y, start, loss_scale)  # the batch sum's: the mean's signs
        delta = start + attack_lr * tf.sign(gradient)
        if self.clamp:
            delta = tf.clip_by_value(delta, -self.eps, self.eps)
        x_adv = tf.stop_gradient(x + delta)
        x_a, x_b, alpha = self.triplets(x, context.step)
        x_c = (1.0 - alpha) * x_a + alpha * x_b
        batch = tf.shape(x)[0]
        lam = self.current_lambda(context)
        with tf.GradientTape() as tape:
            with forwards.at("adversarial"):
                logits = model(x_adv, training=True)
            with forwards.at("triplets"):
                triplet_logits = tf.cast(model(tf.concat([x_a, x_b, x_c], axis=0), training=True), tf.float32)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.tile(tf.cast(y, tf.int32), [3]),
                                                                    triplet_logits)
            errors = linearity_error(losses, tf.reshape(alpha, [-1]), batch)
            loss = scaled(ce_mean(logits, y, self.smoothing("training")) + lam * tf.reduce_mean(errors), loss_scale)
        grads = tape.gradient(loss, model.trainable_variables)
        if self.input_noise_rate != 0:
            with forwards.at("clean"):
                model(x, training=True)  # the official loop's clean forward: its batch statistics only
        if self.lambda_schedule == "onoff":
            error = state.global_mean(tf.reduce_sum(errors), batch)
            adaptive_update(context.state, error, self.regularization(), self.decay_rate, self.sensitivity)
        return Step(grads, x_adv, logits)
