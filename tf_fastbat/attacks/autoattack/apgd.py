"""Auto-PGD, L-inf (Croce & Hein 2020, "Reliable evaluation ... parameter-free attacks", Alg. 1).

APGD-CE and APGD-DLR (untargeted) and APGD-T (targeted DLR loss over the top `n_target_classes` runner-up
classes). Step size starts at 2*eps and is halved at checkpoints p_j (spacing 0.22, shrinking by 0.03 down to
0.06 of the budget) when the loss oscillated (condition 1, rho = 0.75) or when the step was not halved at the
previous checkpoint and the best loss did not improve (condition 2); after halving, the iterate restarts from
the best point. Momentum alpha = 0.75 (none on the first step). The loop is traced once and run in blocks of
iterations (progress); restarts and target classes are runs batched together (`runs`), each from its own
random start.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (Engine, LogitsFn, as_inputs, batches, cached, derive_seed, linf,
                                                  logits_numpy, per_example, project_linf_box, run_in_blocks,
                                                  spec, target_labels, uniform_rows)
from tf_fastbat.attacks.autoattack.runs import Rows, first_success, ran, schedule

LOSSES = ("ce", "dlr", "dlr-targeted")
BLOCK = 10  # iterations per traced call: a progress update every BLOCK iterations


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


def _state_spec(feature_shape: Tuple[int, ...], n_iter: int) -> Dict[str, tf.TensorSpec]:
    """Signature of the APGD loop state, any number of rows."""
    image, vector = spec(feature_shape), tf.TensorSpec([None], tf.float32)
    flags, count = tf.TensorSpec([None], tf.bool), tf.TensorSpec([], tf.int32)
    return dict(i=count, x_adv=image, x_adv_old=image, grad=image, grad_best=image, x_best=image,
                x_best_adv=image, loss_best=vector, robust=flags, step_size=vector,
                loss_steps=tf.TensorSpec([n_iter + 1, None], tf.float32), counter=count, k=count,
                loss_best_last_check=vector, reduced_last_check=flags, zero_grad=flags)


def _build_engine(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], loss: str, n_iter: int, eot_iter: int,
                  rho: float) -> Engine:
    """Trace the APGD loop over a batch of runs; the final state holds x_best, robust, loss_best, x_best_adv and
    zero_grad (the gradient at the random start is zero)."""
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

    def start(x, y, y_target, eps, noise):
        batch = tf.shape(x)[0]
        x_adv = tf.clip_by_value(x + eps * noise / per_example(linf(noise) + 1e-12, rank), 0.0, 1.0)
        logits, loss_vec, grad = loss_and_grad(x_adv, y, y_target)
        zero_grad = tf.equal(tf.reduce_sum(tf.abs(tf.reshape(grad, [batch, -1])), axis=1), 0.0)
        robust = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
        loss_steps = tf.tensor_scatter_nd_update(tf.zeros([n_iter + 1, batch]), [[0]], loss_vec[None])
        return dict(
            i=tf.constant(0), x_adv=x_adv, x_adv_old=x_adv, grad=grad, grad_best=grad, x_best=x_adv,
            x_best_adv=x_adv, loss_best=loss_vec, robust=robust, step_size=2.0 * eps * tf.ones([batch]),
            loss_steps=loss_steps, counter=tf.constant(0), k=tf.constant(n_iter_2),
            loss_best_last_check=loss_vec, reduced_last_check=tf.ones([batch], tf.bool), zero_grad=zero_grad)

    def steps(x, y, y_target, eps, state, n):
        end = tf.minimum(state["i"] + n, n_iter)

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
            iters = tf.range(n_iter)
            in_window = tf.cast(tf.logical_and(iters > i - k, iters <= i), tf.float32)
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
                reduced_last_check=tf.where(at_check, reduce, s["reduced_last_check"]), zero_grad=s["zero_grad"]),)

        return tf.while_loop(lambda s: s["i"] < end, body, (state,))[0]

    inputs = [spec(feature_shape), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
              tf.TensorSpec([], tf.float32)]
    state = _state_spec(feature_shape, n_iter)
    row_axes = {name: None if not value.shape.rank else 1 if name == "loss_steps" else 0
                for name, value in state.items()}
    return Engine(start=tf.function(start, input_signature=inputs + [spec(feature_shape)]),
                  steps=tf.function(steps, input_signature=inputs + [state, tf.TensorSpec([], tf.int32)]),
                  row_axes=row_axes)


def _engine(logits_fn: LogitsFn, shape: Tuple[int, ...], loss: str, n_iter: int, eot_iter: int,
            rho: float) -> Engine:
    return cached(logits_fn, ("apgd", shape, loss, n_iter, eot_iter, rho),
                  lambda: _build_engine(logits_fn, shape, loss, n_iter, eot_iter, rho))


def _run(engine: Engine, x: np.ndarray, y: np.ndarray, y_target: np.ndarray, eps: float, noise: np.ndarray,
         n_iter: int, done: Callable[[int], None] = lambda k: None,
         rows: Optional[Rows] = None) -> Dict[str, np.ndarray]:
    """One batch of APGD runs from the random starts `noise` (U[-1, 1], shape of x); final state as numpy, with
    `kept`, the rows it holds: given the `rows` of a schedule, a run stops once an earlier run broke its point."""
    inputs = (tf.constant(x, tf.float32), tf.constant(y, tf.int32), tf.constant(y_target, tf.int32),
              tf.constant(eps, tf.float32))
    needed = None if rows is None else lambda state, kept: ran(rows.take(kept), ~state["robust"].numpy())
    state, kept = run_in_blocks(engine, inputs, tf.constant(noise, tf.float32), n_iter, BLOCK, done, needed)
    out = {name: state[name].numpy() for name in ("x_best", "robust", "loss_best", "x_best_adv", "zero_grad")}
    return {**out, "kept": kept}


def apgd_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, loss: str = "ce",
                    n_iter: int = 100, seed=(0, 0), y_target: Optional[np.ndarray] = None, eot_iter: int = 1,
                    rho: float = 0.75) -> Dict[str, np.ndarray]:
    """One APGD run on one batch; returns x_best (highest loss), loss_best, x_best_adv, robust, n_zero_grad."""
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; use one of {LOSSES}")
    x, y = as_inputs(x, y)
    shape = tuple(x.shape[1:])
    noise = tf.random.stateless_uniform(x.shape, seed=np.asarray(seed, np.int64), minval=-1.0, maxval=1.0)
    out = _run(_engine(logits_fn, shape, loss, n_iter, eot_iter, rho), x, y, y if y_target is None else y_target,
               eps, noise.numpy(), n_iter)
    out["n_zero_grad"] = int(out.pop("zero_grad").sum())
    del out["kept"]
    return out


class APGDAttack:
    """Untargeted APGD (CE or DLR loss) with restarts on the points still correctly classified."""

    targeted = False

    def __init__(self, logits_fn: LogitsFn, eps: float, loss: str = "ce", n_iter: int = 100, n_restarts: int = 1,
                 eot_iter: int = 1, rho: float = 0.75, seed: int = 0, max_rows: int = 256):
        if loss not in ("ce", "dlr"):
            raise ValueError(f"untargeted APGD uses loss 'ce' or 'dlr', got {loss!r}")
        self.logits_fn, self.eps, self.loss, self.n_iter = logits_fn, eps, loss, n_iter
        self.n_restarts, self.eot_iter, self.rho, self.seed = n_restarts, eot_iter, rho, seed
        self.n_target_classes, self.max_rows = 0, max_rows

    def groups(self, n_classes: int) -> List[Tuple[int, int]]:
        """(target rank, restart) of each group of runs, in the reference's order; rank 0 means untargeted."""
        ranks = range(2, min(self.n_target_classes, n_classes - 1) + 2) if self.targeted else [0]
        return [(rank, restart) for rank in ranks for restart in range(self.n_restarts)]

    def work(self, n_points: int, n_classes: int) -> int:
        """Point-iterations needed for `n_points` correctly classified points (the progress total)."""
        return n_points * len(self.groups(n_classes)) * self.n_iter

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = (),
                done: Callable[[int], None] = lambda k: None) -> Tuple[np.ndarray, int]:
        """Adversarial batch (original where not broken) and the number of zero-gradient starts; `done(k)` as
        point-iterations finish."""
        logits = logits_numpy(self.logits_fn, x, max(len(x), 1))
        adv, n_zero = x.copy(), 0
        if len(x) == 0:
            return adv, 0
        loss = "dlr-targeted" if self.targeted else self.loss
        if logits.shape[1] < _MIN_CLASSES[loss]:
            raise ValueError(f"the {loss} loss needs at least {_MIN_CLASSES[loss]} classes")
        index = np.flatnonzero(logits.argmax(axis=1) == y)
        groups = self.groups(logits.shape[1])
        seeds = [derive_seed(self.seed, *stream, *((rank,) if self.targeted else ()), restart)
                 for rank, restart in groups]
        targets = np.stack([target_labels(logits[index], rank) if rank else y[index] for rank, _ in groups])
        shape = tuple(x.shape[1:])
        engine = _engine(self.logits_fn, shape, loss, self.n_iter, self.eot_iter, self.rho)
        broken = np.zeros(len(index), bool)
        for rows in schedule(len(index), len(groups), self.max_rows, broken, lambda n: done(n * self.n_iter)):
            chosen = index[rows.point]
            noise = uniform_rows(seeds, len(index), shape, rows.group, rows.point)
            out = _run(engine, x[chosen], y[chosen], targets[rows.group, rows.point], self.eps, noise, self.n_iter,
                       done, rows)
            rows, fooled = rows.take(out["kept"]), ~out["robust"]
            n_zero += int((out["zero_grad"] & ran(rows, fooled)).sum())
            first = first_success(rows, fooled)
            broken[rows.point[first]] = True
            adv[index[rows.point[first]]] = out["x_best_adv"][first]
        return adv, n_zero


class APGDTargetedAttack(APGDAttack):
    """APGD-T: targeted DLR loss towards each of the `n_target_classes` classes ranked 2, 3, ... at the clean point."""

    targeted = True

    def __init__(self, logits_fn: LogitsFn, eps: float, n_iter: int = 100, n_restarts: int = 1,
                 n_target_classes: int = 9, eot_iter: int = 1, rho: float = 0.75, seed: int = 0,
                 max_rows: int = 256):
        super().__init__(logits_fn, eps, "dlr", n_iter, n_restarts, eot_iter, rho, seed, max_rows)
        self.n_target_classes = n_target_classes


def _run_batched(attack, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    """Run `attack.perturb` batch by batch; warn (as the reference does) on zero gradients."""
    x, y = as_inputs(x, y)
    adv, n_zero = x.copy(), 0
    for number, part in enumerate(batches(len(x), batch_size)):
        adv[part], zeros = attack.perturb(x[part], y[part], stream=(number,))
        n_zero += zeros
    if n_zero and (attack.targeted or attack.loss != "ce"):
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
                        seed=seed, max_rows=batch_size)
    return _run_batched(attack, x, y, batch_size)


def apgd_targeted(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_target_classes: int = 9,
                  n_iter: int = 100, n_restarts: int = 1, seed: int = 0, eot_iter: int = 1,
                  batch_size: int = 256) -> np.ndarray:
    """APGD-T with the targeted DLR loss: adversarial examples, the original where the attack fails."""
    attack = APGDTargetedAttack(logits_fn, eps, n_iter=n_iter, n_restarts=n_restarts,
                                n_target_classes=n_target_classes, eot_iter=eot_iter, seed=seed, max_rows=batch_size)
    return _run_batched(attack, x, y, batch_size)
