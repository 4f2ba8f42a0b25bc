"""LIET (Pan et al., ICCV 2025): single-step training from a start that carries no label information.

After fzjcdt/LIET main.py (FastAT_Benchmark fast_at/liet.py runs the same loop). Per step, with CE_s the
cross-entropy under random label smoothing s (below) and one fresh draw per use:
  LI_c = eps sign(grad_v CE_s(f_inference(v), c)), v the gray image 0.5, for every class c   (label-indicative
         perturbation; recomputed at every li_update-th step of an epoch, counted from its first)
  d0   = LI_y with each coordinate replaced, with probability r ~ U[r_min, r_max) (one r per step), by
         U[-b eps, b eps] (b = 2 above 8/255, else 1)
  x0   = clip_[0,1](x - d0) or clip_[0,1](x + d0)                              (one fair coin per step)
  x'   = x0 + eps sign(grad_x0 CE_s(f(x0), y));  above 8/255 clip_[0,1](x'), else clip_[0,1](x + clip_eps(x' - x))
  loss = CE_s(f(x'), y) + lambda_e JS(softmax f(x0), softmax f(x'))            (both forwards carry gradient)
lambda_e = lambda (e + 1) / E in 0-based epoch e of E = ramp_epochs (the official loop adds lambda / epochs at
each epoch's start). JS: (KL(p || m) + KL(q || m)) / 2 with m = clamp((p + q) / 2, 0, 1), torch's kl_div batchmean.
CE_s's target: (1 - s) on the true class and s u_k / sum_k u_k on the others, u ~ U[0, 1) per row and use.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Tuple

import tensorflow as tf

from tf_fastbat.methods import global_batch, state
from tf_fastbat.methods.base import Method, Step, StepContext
from tf_fastbat.fields import FromFlag, at_least, check, hparam, within
from tf_fastbat.methods.common import scaled, unscaled

GRAY = 0.5  # the constant image whose class gradients give the label-indicative perturbation
# Stateless streams of the step's draws, apart from the trainer's noise (which gives the U[-b eps, b eps] values).
SALT_LI, SALT_MASK, SALT_SCALARS, SALT_ATTACK, SALT_TRAINING = 1, 2, 3, 4, 5


def is_large_eps(eps: float) -> bool:
    """The official switch `eps > 8` (in 1/255): wider noise, and the final point is not projected onto the ball."""
    return eps * 255.0 > 8.0 + 1e-6


def random_smoothing_targets(y: tf.Tensor, num_classes: int, smoothing: float, u: tf.Tensor) -> tf.Tensor:
    """The official CustomCrossEntropyLoss target from the U[0, 1) draw u [B, K], in its order of operations."""
    one_hot = tf.one_hot(tf.cast(y, tf.int32), num_classes, dtype=tf.float32)
    if smoothing <= 0:
        return one_hot
    target = one_hot * (1.0 - smoothing)
    others = tf.where(target != 0.0, tf.zeros_like(u), u * smoothing)
    return target + others / tf.reduce_sum(others, axis=1, keepdims=True) * smoothing


def smoothed_ce(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy against soft targets."""
    return -tf.reduce_sum(targets * tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), axis=-1)


def kl_batchmean(log_m: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
    """torch's F.kl_div(log_m, p, reduction='batchmean'): sum p (log p - log_m) / batch, 0 log 0 = 0."""
    return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_m) / tf.cast(tf.shape(p)[0], tf.float32)


def jensen_shannon(start_logits: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The consistency term between the start's and the adversarial point's predictions (batch mean)."""
    p, q = tf.nn.softmax(start_logits, axis=1), tf.nn.softmax(logits, axis=1)
    log_m = tf.math.log(tf.clip_by_value((p + q) / 2.0, 0.0, 1.0))
    return (kl_batchmean(log_m, p) + kl_batchmean(log_m, q)) / 2.0


def mask_ratio_problem(ratio) -> Optional[str]:
    """What is wrong with (r_min, r_max), or None."""
    try:
        low, high = (float(v) for v in ratio)
    except (TypeError, ValueError):
        return "give r_min,r_max"
    return None if 0.0 <= low <= high <= 1.0 else "give r_min,r_max with 0 <= r_min <= r_max <= 1"


class Settings(NamedTuple):
    """LIET's hyperparameters with the official defaults filled in."""
    consistency_weight: float  # lambda
    random_smoothing: float  # s
    mask_ratio: Tuple[float, float]  # (r_min, r_max)
    li_update: int


@dataclasses.dataclass(frozen=True)
class LIET(Method):
    # None: the official configs.yaml at CIFAR-10 (cifar10 for eps <= 8/255, cifar10-eps16 above)
    consistency_weight: Optional[float] = hparam(  # lambda
        None, "LIET consistency weight reached in the last epoch (rises by lambda / --epochs per epoch).",
        flag="liet_lambda", type=float, check=at_least(0), default_note="official 100, above eps 8: 20")
    random_smoothing: Optional[float] = hparam(  # s of CE_s
        None, "LIET random label smoothing s: 1 - s on the true class, s split at random over the others, drawn "
        "anew per loss.", flag="liet_smoothing", type=float, check=within(0, 1, high_open=True),
        default_note="official 0.6, above eps 8: 0.4")
    mask_ratio: Optional[Tuple[float, float]] = hparam(  # (r_min, r_max)
        None, "LIET r_min,r_max: each step replaces a U[r_min, r_max) share of the label-indicative start by noise.",
        flag="liet_mask_ratio", type=tuple, check=check(mask_ratio_problem, "0 <= r_min <= r_max <= 1"),
        default_note="official 0.1,0.5; above eps 8: 0,1")
    li_update: Optional[int] = hparam(
        None, "LIET: steps between label-indicative perturbations, counted from each epoch's first.",
        flag="liet_li_update", type=int, check=at_least(1), default_note="official 20; above eps 8: 10")
    # E of lambda_e (the official loop: its number of epochs)
    ramp_epochs: float = hparam(100.0, "LIET's E of lambda_e.", own_flag=False, from_flag=FromFlag("epochs", float))
    seed: int = hparam(0, "Seed of the step's draws.", own_flag=False, from_flag=FromFlag("seed"))

    name = "liet"
    label = "LIET"  # in tables and figures
    needs_epoch = True  # lambda ramps per epoch; the perturbations are renewed within each epoch

    def settings(self) -> Settings:
        large = is_large_eps(self.eps)
        return Settings(
            self.consistency_weight if self.consistency_weight is not None else 20.0 if large else 100.0,
            self.random_smoothing if self.random_smoothing is not None else 0.4 if large else 0.6,
            tuple(self.mask_ratio) if self.mask_ratio is not None else (0.0, 1.0) if large else (0.1, 0.5),
            self.li_update if self.li_update is not None else 10 if large else 20)

    def hparams(self) -> dict:
        settings = self.settings()._asdict()
        return {**super().hparams(), **settings, "mask_ratio": list(settings["mask_ratio"])}

    def state_spec(self, num_examples, input_shape, num_classes=None):
        if num_classes is None:
            raise ValueError("liet keeps one perturbation per class: state_spec needs num_classes")
        return {"label_indicative": ((int(num_classes), *input_shape), tf.float32)}

    def consistency_lambda(self, epoch_index: tf.Tensor) -> tf.Tensor:
        """lambda_e = (e + 1) lambda / E in 0-based epoch e (capped at lambda)."""
        lam = self.settings().consistency_weight
        epochs_done = tf.minimum(tf.cast(epoch_index, tf.float64) + 1.0, float(self.ramp_epochs))
        return tf.cast(epochs_done * (lam / float(self.ramp_epochs)), tf.float32)

    def label_indicative(self, model, step: tf.Tensor, shape: list,
                         loss_scale: Optional[tf.Tensor]) -> tf.Tensor:
        """eps sign of each class's gradient at the gray image, the model in inference mode (the same draw and
        result on every replica)."""
        num_classes = int(shape[0])
        gray = tf.fill(shape, tf.constant(GRAY, tf.float32))
        seed = global_batch.step_seed(self.seed, step, SALT_LI)
        u = tf.random.stateless_uniform([num_classes, num_classes], seed=seed)
        targets = random_smoothing_targets(tf.range(num_classes), num_classes, self.settings().random_smoothing, u)
        with tf.GradientTape() as tape:
            tape.watch(gray)
            loss = scaled(tf.reduce_sum(smoothed_ce(model(gray, training=False), targets)), loss_scale)
        return self.eps * tf.sign(unscaled(tape.gradient(loss, gray), loss_scale))

    def start(self, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor, li: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """x0: the label-indicative start of each example, partly replaced by noise, added or subtracted."""
        low, high = self.settings().mask_ratio
        scalars = tf.random.stateless_uniform([2], seed=global_batch.step_seed(self.seed, step, SALT_SCALARS))
        ratio = scalars[0] * (high - low) + low
        mask = global_batch.uniform(global_batch.step_seed(self.seed, step, SALT_MASK), tf.shape(x), 0.0, 1.0) < ratio
        wide_noise = noise * (2.0 if is_large_eps(self.eps) else 1.0)  # noise is U[-eps, eps]
        delta = tf.where(mask, wide_noise, tf.gather(li, tf.cast(y, tf.int32)))
        return tf.clip_by_value(tf.where(scalars[1] < 0.5, x - delta, x + delta), 0.0, 1.0)

    def final_point(self, x: tf.Tensor, x_adv: tf.Tensor) -> tf.Tensor:
        if is_large_eps(self.eps):
            return tf.clip_by_value(x_adv, 0.0, 1.0)
        return tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -self.eps, self.eps), 0.0, 1.0)

    def targets(self, y: tf.Tensor, num_classes: int, step: tf.Tensor, salt: int) -> tf.Tensor:
        """CE_s targets for this replica's rows of one global-batch draw."""
        shape = tf.stack([tf.shape(y)[0], num_classes])
        u = global_batch.uniform(global_batch.step_seed(self.seed, step, salt), shape, 0.0, 1.0)
        return random_smoothing_targets(y, num_classes, self.settings().random_smoothing, u)

    def step(self, model, x, y, noise, context: StepContext, loss_scale=None):
        if context is None or context.epoch_step is None or tf.get_static_value(context.epoch_index) == -1:
            raise ValueError("liet needs the trainer's step context with the epoch (assemble with steps_per_epoch): "
                             "its perturbations and lambda follow the epoch")
        variable = context.state["label_indicative"]
        num_classes, li_update = int(variable.shape[0]), self.settings().li_update
        li = tf.cond(tf.equal(tf.math.floormod(context.epoch_step, li_update), 0),
                     lambda: self.label_indicative(model, context.step, variable.shape.as_list(), loss_scale),
                     lambda: tf.identity(variable.read_value()))
        state.assign(variable, li)
        x0 = tf.stop_gradient(self.start(x, y, noise, li, context.step))
        attack_targets = self.targets(y, num_classes, context.step, SALT_ATTACK)
        training_targets = self.targets(y, num_classes, context.step, SALT_TRAINING)
        with tf.GradientTape() as tape:
            with tf.GradientTape() as attack_tape:
                attack_tape.watch(x0)
                start_logits = tf.cast(model(x0, training=True), tf.float32)
                attack_loss = scaled(tf.reduce_sum(smoothed_ce(start_logits, attack_targets)), loss_scale)
            with tape.stop_recording():
                gradient = unscaled(attack_tape.gradient(attack_loss, x0), loss_scale)
                x_adv = tf.stop_gradient(self.final_point(x, x0 + self.eps * tf.sign(gradient)))
            logits = tf.cast(model(x_adv, training=True), tf.float32)
            loss = tf.reduce_mean(smoothed_ce(logits, training_targets)) + \
                self.consistency_lambda(context.epoch_index) * jensen_shannon(start_logits, logits)
            loss = scaled(loss, loss_scale)
        return Step(tape.gradient(loss, model.trainable_variables), x_adv, logits)
