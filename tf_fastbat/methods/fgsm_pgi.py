"""FGSM-PGI (Jia et al., ECCV 2022), the FGSM-MEP variant its code and FastAT_Benchmark run: each example's FGSM
starts from its perturbation of the previous epoch (a momentum-guided prior), and a regularizer ties the logits at
the adversarial point to those at that initialization.

Per step, for the batch's stored perturbation d and momentum m (random corners clip(+-alpha, -eps, eps) and m = 0 in
every `epochs_reset`-th epoch, the official reset; alpha = 8/255 at every eps by default, as FGSM_MEP.py's):
    g = grad_d CE(x + d)                      (the init point is not clipped to the image box, as officially)
    m' = g / ||g||_1 + decay m                (L1 norm of the whole global batch)
    d_adv = clip_box(clip_eps(d + alpha sign(g)))   trains;   d' = clip_box(clip_eps(d + alpha sign(m'))) is stored
    loss = CE(f(x + d_adv), y) + lamda MSE(f(x + d_adv), f(x + d))   (both logits carry gradient)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat import fields
from tf_fastbat.methods.base import Method, Step, StepContext
from tf_fastbat.fields import at_least, hparam, within
from tf_fastbat.methods.common import ce_mean, ce_sum, scaled, unscaled
from tf_fastbat.methods.state import global_sum, write_rows


OFFICIAL_ALPHA = 8.0 / 255.0  # FGSM_MEP.py's --alpha default, independent of --epsilon


def clip_box(delta: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """clamp(delta, -x, 1 - x): the official form of keeping x + delta in [0, 1] (bitwise as in their code)."""
    return tf.clip_by_value(delta, -x, 1.0 - x)


@dataclasses.dataclass(frozen=True)
class FGSMPGI(Method):
    attack_lr: Optional[float] = fields.attack_lr(  # alpha
        "8 at every eps (FGSM_MEP.py's --alpha, which also sets its reset corners; FastAT_Benchmark's fgsm_pgi.py "
        "steps by eps)")
    lamda: float = hparam(10.0, "FGSM-PGI weight of the prior-guided regularizer, the MSE between the logits at the "
                          "adversarial and at the initialization point (official --lamda 10).", flag="pgi_lamda",
                          check=at_least(0))
    momentum_decay: float = hparam(0.3, "FGSM-PGI decay of each example's stored gradient momentum (official "
                                   "--momentum_decay 0.3).", flag="pgi_momentum_decay", check=within(0, 1))
    epochs_reset: int = hparam(40, "FGSM-PGI: every this many epochs the stored perturbations restart from random "
                               "corners and the momenta from zero (official --epochs_reset 40).",
                               flag="pgi_epochs_reset", check=at_least(1))

    name = "fgsm_pgi"
    label = "FGSM-PGI"  # in tables and figures
    needs_index = True
    needs_epoch = True  # the stored perturbations restart every epochs_reset epochs
    # The official code smooths both losses (its factor 0.6 is torch's label_smoothing 4/9); FastAT_Benchmark too.
    smoothed_losses = ("attack", "training")

    def step_size(self) -> float:
        """alpha: the FGSM step and the reset corners' magnitude (official: 8/255 whatever the eps)."""
        return OFFICIAL_ALPHA if self.attack_lr is None else self.attack_lr

    def state_spec(self, num_examples, input_shape, num_classes=None):
        shape = (int(num_examples), *input_shape)
        return {"delta": (shape, tf.float32), "momentum": (shape, tf.float32)}

    def initialization(self, noise: tf.Tensor, context: StepContext):
        """(d, m): the stored prior, or random corners and zero momentum in a reset epoch."""
        alpha = self.step_size()
        reset = tf.equal(tf.math.floormod(context.epoch_index, self.epochs_reset), 0)
        random_start = tf.clip_by_value(alpha * tf.sign(noise), -self.eps, self.eps)
        delta = tf.where(reset, random_start, tf.gather(context.state["delta"], context.index))
        momentum = tf.where(reset, tf.zeros_like(noise), tf.gather(context.state["momentum"], context.index))
        return delta, momentum

    def step(self, model, x, y, noise, context: StepContext, loss_scale=None):
        if context is None or context.index is None:
            raise ValueError("fgsm_pgi needs the trainer's StepContext with example positions")
        alpha, eps = self.step_size(), self.eps
        delta, momentum = self.initialization(noise, context)
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            with tf.GradientTape() as attack_tape:
                attack_tape.watch(delta)
                init_logits = tf.cast(model(x + delta, training=True), tf.float32)
                attack_loss = scaled(ce_sum(init_logits, y, self.smoothing("attack")), loss_scale)
            with tape.stop_recording():
                gradient = unscaled(attack_tape.gradient(attack_loss, delta), loss_scale)
                norm = global_sum(tf.reduce_sum(tf.abs(gradient)))  # torch.norm(x_grad, p=1) of the batch
                momentum = tf.math.divide_no_nan(gradient, norm) + momentum * self.momentum_decay
                next_delta = clip_box(tf.clip_by_value(delta + alpha * tf.sign(momentum), -eps, eps), x)
                delta_adv = clip_box(tf.clip_by_value(delta + alpha * tf.sign(gradient), -eps, eps), x)
                x_adv = x + delta_adv
            logits = tf.cast(model(x_adv, training=True), tf.float32)
            prior = tf.reduce_mean(tf.square(logits - init_logits))
            loss = scaled(ce_mean(logits, y, self.smoothing("training")) + self.lamda * prior, loss_scale)
        grads = tape.gradient(loss, variables)
        write_rows(context.state["momentum"], context.index, momentum)
        write_rows(context.state["delta"], context.index, next_delta)
        return Step(grads, x_adv, logits)
