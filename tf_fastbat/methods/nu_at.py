"""NuAT (Sriramanan et al., NeurIPS 2021): a nuclear-norm-guided single-step attack and a nuclear-norm training loss.

After val-iisc/NuAT CIFAR10/NuAT_cifar10.py, per batch:
  out    = f(x), training mode (the attack's reference logits)
  x0     = clip(x + B sign(0.5 - u), 0, 1), u ~ U[0, 1)                   Bernoulli start, B = 4/255 at eps 8
  x1     = clip(x0 + a sign(grad_x0 [CE(f_eval(x0)) + lambda_a ||out - f_eval(x0)||_* / B_n]), 0, 1)
           the model in eval mode; lambda_a = lambda on the odd batches of each epoch (counted from 0 at
           its start), 0 on the even ones; a = 8/255 at eps 8
  x_adv  = clip(x + clip(x1 - x, -eps, eps), 0, 1)
  loss   = CE(f(x), y) + lambda ||f(x) - f(x_adv)||_* / B_n        (f(x_adv) then f(x), training mode)
with ||.||_* the nuclear norm of the B_n x classes logit matrix and lambda = nuc_max * min(e, R) / R in epoch e
(0-based): the official run adds nuc_max / (epochs - 10) after each of its first epochs - 10 epochs.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from tf_fastbat.methods import global_batch
from tf_fastbat import fields
from tf_fastbat.methods.base import Method, Step
from tf_fastbat.fields import PIXEL, FromFlag, above, at_least, hparam
from tf_fastbat.methods.common import ce_mean, project, scaled, unscaled

NUC_MAX = 4.5  # NuAT_cifar10.py's Nuc_max (FastAT_Benchmark's reading uses 4.0)
OFFICIAL_EPOCHS = 100  # the official CIFAR-10 run; its ramp lasts OFFICIAL_EPOCHS - 10 epochs


def nuclear_norm(matrix: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(||M||_*, U V^T): the sum of singular values and its gradient (the subgradient torch's SVD backward gives)."""
    s, u, v = tf.linalg.svd(matrix, full_matrices=False)
    return tf.reduce_sum(s), tf.matmul(u, v, transpose_b=True)


def nuclear_surrogate(difference: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(sum(G * D), ||D_global||_*) for this replica's rows D of the global logit-difference matrix D_global.

    G is this replica's rows of U V^T of D_global (held constant), so sum(G * D) has the gradient of ||D_global||_*
    with respect to this replica's rows; summed over replicas it is the whole gradient. On one device it is
    ||D||_* itself, in value and gradient.
    """
    offset, _ = global_batch.layout(tf.shape(difference)[0])
    value, direction = nuclear_norm(global_batch.gather(difference))
    local = tf.stop_gradient(direction[offset:offset + tf.shape(difference)[0]])
    return tf.reduce_sum(local * difference), value


@dataclasses.dataclass(frozen=True)
class NuAT(Method):
    init_magnitude: Optional[float] = hparam(None, "NuAT's Bernoulli start magnitude B_val.", flag="nuc_init",
                                             type=float, unit=PIXEL, cli_maximum=None,
                                             default_note="eps / 2, the official 4 at eps 8")
    attack_lr: Optional[float] = fields.attack_lr("eps (the official Feps = 8 at eps 8)")
    nuc_max: float = hparam(NUC_MAX, "NuAT's final nuclear-norm weight lambda (official NuAT_cifar10.py: 4.5).",
                            check=at_least(0))
    # R: lambda reaches nuc_max after R epochs (official: epochs - 10)
    nuc_ramp_epochs: float = hparam(OFFICIAL_EPOCHS - 10.0, "NuAT: lambda rises by nuc_max / R per epoch for R "
                                    "epochs.", check=above(0),
                                    from_flag=FromFlag("epochs", lambda epochs: float(max(epochs - 10, 1)),
                                                       "the official rule R = --epochs - 10, at least 1"))

    name = "nu_at"
    label = "NuAT"  # in tables and figures
    needs_epoch = True  # lambda ramps per epoch; the attack alternates within each epoch
    # FastAT_Benchmark's nu_at.py uses its smoothed criterion for the attack's CE and the training CE.
    smoothed_losses = ("attack", "training")

    def start_magnitude(self) -> float:
        return 0.5 * self.eps if self.init_magnitude is None else self.init_magnitude

    def step_size(self) -> float:
        return self.eps if self.attack_lr is None else self.attack_lr

    def nuc_reg(self, epoch_index: tf.Tensor) -> tf.Tensor:
        """lambda in 0-based epoch e: nuc_max * min(e, R) / R (0 in the first epoch, as in the official loop)."""
        epochs = tf.cast(epoch_index, tf.float32)
        return self.nuc_max * tf.minimum(epochs, self.nuc_ramp_epochs) / self.nuc_ramp_epochs

    def attack(self, model, x, y, noise, reference, attack_reg, loss_scale=None) -> tf.Tensor:
        """x_adv from the Bernoulli start: one signed step on CE + attack_reg * nuclear norm, in eval mode.

        `noise` is U[-eps, eps] = eps (2u - 1), so sign(-noise) is the official sign(0.5 - u) of the same u. The
        objective is the official batch mean (per replica: the signs are per example), whose loss-scaled gradient
        stays in float16's range where the batch sum's (4.5 times larger with the nuclear term) can overflow.
        """
        start = tf.clip_by_value(x + self.start_magnitude() * tf.sign(-noise), 0.0, 1.0)
        with tf.GradientTape() as tape:
            tape.watch(start)
            logits = tf.cast(model(start, training=False), tf.float32)
            surrogate, _ = nuclear_surrogate(reference - logits)
            local_batch = tf.cast(tf.shape(x)[0], tf.float32)
            objective = scaled(ce_mean(logits, y, self.smoothing("attack")) + attack_reg * surrogate / local_batch,
                               loss_scale)
        gradient = unscaled(tape.gradient(objective, start), loss_scale)
        stepped = tf.clip_by_value(start + self.step_size() * tf.sign(gradient), 0.0, 1.0)
        return x + project(stepped - x, x, self.eps)

    def step(self, model, x, y, noise, context, loss_scale=None):
        if (context is None or tf.get_static_value(context.epoch_index) == -1 or context.epoch_step is None
                or tf.get_static_value(context.epoch_step) == -1):
            raise ValueError("nu_at needs the trainer's step context with the epoch (assemble with steps_per_epoch): "
                             "its lambda follows the epoch and its attack alternates within each epoch")
        nuc_reg = self.nuc_reg(context.epoch_index)
        # The official `counter`, set to 0 at each epoch's start: the nuclear term on the epoch's odd batches. (The
        # global step's parity differs from it in every other epoch when an epoch has an odd number of batches.)
        attack_reg = tf.where(tf.equal(context.epoch_step % 2, 1), nuc_reg, 0.0)
        # Three forwards in the official order, so that the eval-mode attack sees the moving averages the official
        # one sees (updated by the first clean forward) and the final averages match too.
        reference = tf.stop_gradient(tf.cast(model(x, training=True), tf.float32))
        x_adv = tf.stop_gradient(self.attack(model, x, y, noise, reference, attack_reg, loss_scale))
        with tf.GradientTape() as tape:
            adversarial_logits = model(x_adv, training=True)
            clean_logits = model(x, training=True)
            surrogate, _ = nuclear_surrogate(tf.cast(clean_logits, tf.float32) - tf.cast(adversarial_logits,
                                                                                         tf.float32))
            # Per replica: CE over its examples plus its share of lambda ||D||_* / B_n, both per local example;
            # the trainer weights each replica by its share of the global batch.
            local_batch = tf.cast(tf.shape(x)[0], tf.float32)
            loss = scaled(ce_mean(clean_logits, y, self.smoothing("training")) + nuc_reg * surrogate / local_batch,
                          loss_scale)
        grads = tape.gradient(loss, model.trainable_variables)
        return Step(grads, x_adv, adversarial_logits)
