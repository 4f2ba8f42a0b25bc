"""Auto-PGD, L-inf (Croce & Hein 2020, "Reliable evaluation ... parameter-free attacks", Alg. 1).

APGD-CE and APGD-DLR (untargeted) and APGD-T (targeted DLR loss over the top `n_target_classes` runner-up
classes). Step size starts at 2*eps and is halved at checkpoints p_j (spacing 0.22, shrinking by 0.03 down to
0.06 of the budget) when the loss oscillated (condition 1, rho = 0.75) or when the step was not halved at the
previous checkpoint and the best loss did not improve (condition 2); after halving, the iterate restarts from
the best point. Momentum alpha = 0.75 (none on the first step). Each batch is one tf.function; restarts and
target classes loop in Python over the points still correctly classified.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (LogitsFn, as_inputs, batches, cached, derive_seed, linf,
                                                  logits_numpy, per_example, project_linf_box, spec,
                                                  target_labels)

LOSSES = ("ce", "dlr", "dlr-targeted")


def ce_loss(logits: tf.Tensor, y: tf.Tensor, y_target: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy of the true class (y_target unused)."""
    del y_target
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def dlr_loss(logits: tf.Tensor, y: tf.Tensor, y_target: tf.Tensor) -> tf.Tensor:
    """Difference of Logits Ratio: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3), shift- and scale-invariant."""
    del y_target
    z_sorted = tf.sort(logits, axis=1)
    z_y = tf.gather(logits, y, batch_dims=1)
    top_is_y = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
    z_other = tf.where(top_is_y, z_sorted[:, -2], z_sorted[:, -1])
    return -(z_y - z_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_loss_targeted(logits: tf.Tensor, y: tf.Tensor, y_target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    z_sorted = tf.sort(logits, axis=1)
    z_y = tf.gather(logits, y, batch_dims=1)
    z_t = tf.gather(logits, y_target, batch_dims=1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


_LOSS_FNS: Dict[str, Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": dlr_loss_targeted}
_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4}


def checkpoint_schedule(n_iter: int) -> Tuple[int, int, int]:
    """(first checkpoint length, minimal length, decrement) = (0.22, 0.06, 0.03) * n_iter, each at least 1."""
    return max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)


def _build_single_run(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], loss: str, n_iter: int,
                      eot_iter: int, rho: float) -> Callable:
    """Trace one APGD run over a batch: returns (x_best, robust, loss_best, x_best_adv, n_zero_grad)."""
    loss_fn = _LOSS_FNS[loss]
    rank = len(feature_shape) + 1
    n_iter_2, n_iter_min, size_decr = checkpoint_schedule(n_iter)

    def loss_and_grad(x_adv, y, y_target):
        def once():
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = tf.cast(logits_fn(x_adv), tf.float32)
                loss_vec = loss_fn(logits, y, y_target)
                total = tf.reduce_sum(loss_vec)
            grad = tape.gradient(total, x_adv)
            return logits, loss_vec, tf.zeros_like(x_adv) if grad is None else grad

        logits, loss_vec, grad = once()
        if eot_iter == 1:
            return logits, loss_vec, grad

        def eot_body(j, logits, loss_vec, grad):  # EOT: average the gradient over eot_iter forward passes
            logits, loss_vec, grad_j = once()
            return j + 1, logits, loss_vec, grad + grad_j

        _, logits, loss_vec, grad = tf.while_loop(lambda j, *_: j < eot_iter, eot_body,
                                                  (tf.constant(1), logits, loss_vec, grad))
        return logits, loss_vec, grad / float(eot_iter)

    def run(x, y, y_target, eps, seed):
        batch = tf.shape(x)[0]
        t = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0)
        x_adv = tf.clip_by_value(x + eps * t / per_example(linf(t) + 1e-12, rank), 0.0, 1.0)
        logits, loss_vec, grad = loss_and_grad(x_adv, y, y_target)
        n_zero_grad = tf.reduce_sum(tf.cast(
            tf.equal(tf.reduce_sum(tf.abs(tf.reshape(grad, [batch, -1])), axis=1), 0.0), tf.int32))
        robust = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
        loss_steps = tf.tensor_scatter_nd_update(tf.zeros([n_iter + 1, batch]), [[0]], loss_vec[None])
        state = dict(
            i=tf.constant(0), x_adv=x_adv, x_adv_old=x_adv, grad=grad, grad_best=grad, x_best=x_adv,
            x_best_adv=x_adv, loss_best=loss_vec, robust=robust, step_size=2.0 * eps * tf.ones([batch]),
            loss_steps=loss_steps, counter=tf.constant(0), k=tf.constant(n_iter_2),
            loss_best_last_check=loss_vec, reduced_last_check=tf.ones([batch], tf.bool))

        def body(s):
            i = s["i"]
            momentum = tf.where(i > 0, 0.75, 1.0)
            x_cur, step = s["x_adv"], per_example(s["step_size"], rank)
            z = project_linf_box(x_cur + step * tf.sign(s["grad"]), x, eps)
            z = project_linf_box(x_cur + (z - x_cur) * momentum + (x_cur - s["x_adv_old"]) * (1.0 - momentum),
                                 x, eps)
            logits, loss_vec, grad = loss_and_grad(z, y, y_target)
            pred_ok = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
            robust = tf.logical_and(s["robust"], pred_ok)
            x_best_adv = tf.where(per_example(~pred_ok, rank), z, s["x_best_adv"])
            loss_steps = tf.tensor_scatter_nd_update(s["loss_steps"], [[i + 1]], loss_vec[None])
            improved = loss_vec > s["loss_best"]
            improved_b = per_example(improved, rank)
            x_best = tf.where(improved_b, z, s["x_best"])
            grad_best = tf.where(improved_b, grad, s["grad_best"])
            loss_best = tf.where(improved, loss_vec, s["loss_best"])

            counter, k = s["counter"] + 1, s["k"]
            at_check = tf.equal(counter, k)
            # Condition 1: the loss increased in at most rho * k of the last k steps.
            increased = tf.cast(loss_steps[1:] > loss_steps[:-1], tf.float32)
            steps = tf.range(n_iter)
            in_window = tf.cast(tf.logical_and(steps > i - k, steps <= i), tf.float32)
            n_increased = tf.reduce_sum(increased * in_window[:, None], axis=0)
            cond1 = n_increased <= tf.cast(k, tf.float32) * rho
            # Condition 2: step not reduced at the last checkpoint and no improvement of the best loss since.
            cond2 = tf.logical_and(~s["reduced_last_check"], s["loss_best_last_check"] >= loss_best)
            reduce = tf.logical_and(at_check, tf.logical_or(cond1, cond2))
            reduce_b = per_example(reduce, rank)
            return (dict(
                i=i + 1, x_adv=tf.where(reduce_b, x_best, z), x_adv_old=x_cur,
                grad=tf.where(reduce_b, grad_best, grad), grad_best=grad_best, x_best=x_best,
                x_best_adv=x_best_adv, loss_best=loss_best, robust=robust,
                step_size=tf.where(reduce, s["step_size"] / 2.0, s["step_size"]), loss_steps=loss_steps,
                counter=tf.where(at_check, 0, counter),
                k=tf.where(at_check, tf.maximum(k - size_decr, n_iter_min), k),
                loss_best_last_check=tf.where(at_check, loss_best, s["loss_best_last_check"]),
                reduced_last_check=tf.where(at_check, reduce, s["reduced_last_check"])),)

        state = tf.while_loop(lambda s: s["i"] < n_iter, body, (state,))[0]
        return state["x_best"], state["robust"], state["loss_best"], state["x_best_adv"], n_zero_grad

    sig = [spec(feature_shape), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
           tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64)]
    return tf.function(run, input_signature=sig)


def apgd_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, loss: str = "ce",
                    n_iter: int = 100, seed=(0, 0), y_target: Optional[np.ndarray] = None, eot_iter: int = 1,
                    rho: float = 0.75) -> Dict[str, np.ndarray]:
    """One APGD run on one batch; returns x_best (highest loss), loss_best, x_best_adv, robust, n_zero_grad."""
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; use one of {LOSSES}")
    x, y = as_inputs(x, y)
    shape = tuple(x.shape[1:])
    run = cached(logits_fn, ("apgd", shape, loss, n_iter, eot_iter, rho),
                 lambda: _build_single_run(logits_fn, shape, loss, n_iter, eot_iter, rho))
    y_target = y if y_target is None else np.asarray(y_target, np.int32)
    out = run(tf.constant(x), tf.constant(y), tf.constant(y_target), tf.constant(eps, tf.float32),
              tf.constant(np.asarray(seed, np.int64)))
    names = ("x_best", "robust", "loss_best", "x_best_adv", "n_zero_grad")
    return {name: value.numpy() for name, value in zip(names, out)}


class APGDAttack:
    """Untargeted APGD (CE or DLR loss) with restarts on the points still correctly classified."""

    def __init__(self, logits_fn: LogitsFn, eps: float, loss: str = "ce", n_iter: int = 100, n_restarts: int = 1,
                 eot_iter: int = 1, rho: float = 0.75, seed: int = 0):
        if loss not in ("ce", "dlr"):
            raise ValueError(f"untargeted APGD uses loss 'ce' or 'dlr', got {loss!r}")
        self.logits_fn, self.eps, self.loss, self.n_iter = logits_fn, eps, loss, n_iter
        self.n_restarts, self.eot_iter, self.rho, self.seed = n_restarts, eot_iter, rho, seed

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = ()) -> Tuple[np.ndarray, int]:
        """Adversarial batch (original where not broken) and the number of zero-gradient starts."""
        logits = logits_numpy(self.logits_fn, x, max(len(x), 1))
        adv, robust, n_zero = x.copy(), logits.argmax(axis=1) == y, 0
        if len(x) and logits.shape[1] < _MIN_CLASSES[self.loss]:
            raise ValueError(f"the {self.loss.upper()} loss needs at least {_MIN_CLASSES[self.loss]} classes")
        for restart in range(self.n_restarts):
            index = np.flatnonzero(robust)
            if len(index) == 0:
                break
            out = apgd_single_run(self.logits_fn, x[index], y[index], self.eps, self.loss, self.n_iter,
                                  derive_seed(self.seed, *stream, restart), eot_iter=self.eot_iter, rho=self.rho)
            fooled = ~out["robust"]
            robust[index[fooled]] = False
            adv[index[fooled]] = out["x_best_adv"][fooled]
            n_zero += int(out["n_zero_grad"])
        return adv, n_zero


class APGDTargetedAttack:
    """APGD-T: targeted DLR loss towards each of the `n_target_classes` classes ranked 2, 3, ... at the clean point."""

    def __init__(self, logits_fn: LogitsFn, eps: float, n_iter: int = 100, n_restarts: int = 1,
                 n_target_classes: int = 9, eot_iter: int = 1, rho: float = 0.75, seed: int = 0):
        self.logits_fn, self.eps, self.n_iter, self.n_restarts = logits_fn, eps, n_iter, n_restarts
        self.n_target_classes, self.eot_iter, self.rho, self.seed = n_target_classes, eot_iter, rho, seed

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = ()) -> Tuple[np.ndarray, int]:
        """Adversarial batch (original where not broken) and the number of zero-gradient starts."""
        logits = logits_numpy(self.logits_fn, x, max(len(x), 1))
        adv, robust, n_zero = x.copy(), logits.argmax(axis=1) == y, 0
        if len(x) == 0:
            return adv, 0
        n_classes = logits.shape[1]
        if n_classes < _MIN_CLASSES["dlr-targeted"]:
            raise ValueError("the targeted DLR loss needs at least 4 classes")
        for target_rank in range(2, min(self.n_target_classes, n_classes - 1) + 2):
            for restart in range(self.n_restarts):
                index = np.flatnonzero(robust)
                if len(index) == 0:
                    return adv, n_zero
                y_target = target_labels(logits[index], target_rank)
                out = apgd_single_run(self.logits_fn, x[index], y[index], self.eps, "dlr-targeted", self.n_iter,
                                      derive_seed(self.seed, *stream, target_rank, restart), y_target=y_target,
                                      eot_iter=self.eot_iter, rho=self.rho)
                fooled = ~out["robust"]
                robust[index[fooled]] = False
                adv[index[fooled]] = out["x_best_adv"][fooled]
                n_zero += int(out["n_zero_grad"])
        return adv, n_zero


def _run_batched(attack, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    """Run `attack.perturb` batch by batch; warn (as the reference does) on zero gradients."""
    x, y = as_inputs(x, y)
    adv, n_zero = x.copy(), 0
    for number, part in enumerate(batches(len(x), batch_size)):
        adv[part], zeros = attack.perturb(x[part], y[part], stream=(number,))
        n_zero += zeros
    if n_zero and getattr(attack, "loss", "dlr") != "ce":
        warnings.warn(zero_gradient_message(n_zero))
    return adv


def zero_gradient_message(n_zero: int) -> str:
    """The reference's zero-gradient warning text."""
    return (f"there are {n_zero} points with zero gradient! This might lead to unreliable evaluation with "
            "gradient-based attacks.")


def apgd(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, loss: str = "ce", n_iter: int = 100,
         n_restarts: int = 1, seed: int = 0, eot_iter: int = 1, batch_size: int = 256) -> np.ndarray:
    """Untargeted APGD (loss 'ce' or 'dlr'): adversarial examples, the original where the attack fails."""
    attack = APGDAttack(logits_fn, eps, loss=loss, n_iter=n_iter, n_restarts=n_restarts, eot_iter=eot_iter,
                        seed=seed)
    return _run_batched(attack, x, y, batch_size)


def apgd_targeted(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_target_classes: int = 9,
                  n_iter: int = 100, n_restarts: int = 1, seed: int = 0, eot_iter: int = 1,
                  batch_size: int = 256) -> np.ndarray:
    """APGD-T with the targeted DLR loss: adversarial examples, the original where the attack fails."""
    attack = APGDTargetedAttack(logits_fn, eps, n_iter=n_iter, n_restarts=n_restarts,
                                n_target_classes=n_target_classes, eot_iter=eot_iter, seed=seed)
    return _run_batched(attack, x, y, batch_size)
