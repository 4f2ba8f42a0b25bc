"""FAB, the Fast Adaptive Boundary attack, L-inf (Croce & Hein 2020, "Minimally distorted adversarial examples
with a fast adaptive boundary attack"), targeted (FAB-T, as in AutoAttack) and untargeted (AutoAttack+).

Each step linearises the decision boundary (towards the target class, or the closest class when untargeted),
projects both the current iterate and the original point onto that hyperplane within the [0, 1] box
(minimal L-inf step), and takes a convex combination biased towards the original point (alpha <= alpha_max),
overshooting by eta. Once misclassified, the best (smallest L-inf) point is kept and the iterate steps back
towards the original by the factor beta. A point counts as broken only if its best distance is <= eps.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (LogitsFn, as_inputs, batches, cached, derive_seed, linf,
                                                  logits_numpy, per_example, predict, spec, target_labels)

_NO_ADV = 1e10


def project_linf_hyperplane(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Minimal L-inf step d with <w, t + d> = b and t + d in [0, 1] (rows of [M, D] inputs).

    Moving every coordinate by lambda against the sign of w (clipped at the box) reduces |<w, t> - b| by
    g(lambda) = sum_i |w_i| min(lambda, room_i), piecewise linear and increasing; we solve g(lambda) = c
    exactly on the sorted breakpoints. If the hyperplane misses the box the step goes to the nearest corner.
    """
    c = tf.reduce_sum(w * t, axis=1) - b
    flip = tf.where(c >= 0.0, 1.0, -1.0)
    w, c = w * flip[:, None], c * flip  # now c >= 0 and <w, t + d> must decrease by c
    room = tf.where(w > 0.0, t, 1.0 - t)
    order = tf.argsort(room, axis=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(tf.abs(w), order, batch_dims=1)
    cum_wr = tf.cumsum(weight_sorted * room_sorted, axis=1)
    cum_w = tf.cumsum(weight_sorted, axis=1)
    total_w = cum_w[:, -1:]
    g_at_breaks = cum_wr + room_sorted * (total_w - cum_w)
    n_below = tf.reduce_sum(tf.cast(g_at_breaks < c[:, None], tf.int32), axis=1)
    dim = tf.shape(t)[1]
    prev = tf.maximum(n_below - 1, 0)
    cum_wr_prev = tf.where(n_below > 0, tf.gather(cum_wr, prev, batch_dims=1), 0.0)
    cum_w_prev = tf.where(n_below > 0, tf.gather(cum_w, prev, batch_dims=1), 0.0)
    lam = (c - cum_wr_prev) / tf.maximum(total_w[:, 0] - cum_w_prev, 1e-12)
    lam = tf.where(n_below < dim, lam, tf.reduce_max(room, axis=1))
    return -tf.sign(w) * tf.minimum(lam[:, None], room)


def _build_single_run(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], targeted: bool, n_iter: int,
                      alpha_max: float, eta: float, beta: float) -> Callable:
    """Trace one FAB run over a batch: returns (adversarial or original, best L-inf distance or 1e10)."""
    rank = len(feature_shape) + 1

    def diffs_and_grads(x1, y, y_target):
        """Logit differences f_j - f_y at x1 and their input gradients, flattened: [B, C], [B, C, D]."""
        batch = tf.shape(x1)[0]
        if targeted:
            with tf.GradientTape() as tape:
                tape.watch(x1)
                logits = tf.cast(logits_fn(x1), tf.float32)
                diff = tf.gather(logits, y_target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
                total = tf.reduce_sum(diff)
            grad = tape.gradient(total, x1)
            return diff[:, None], tf.reshape(grad, [batch, 1, -1])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x1)
            logits = tf.cast(logits_fn(x1), tf.float32)
            n_classes = logits.shape[-1]
            if n_classes is None:
                raise ValueError("untargeted FAB needs a static number of classes")
            class_sums = [tf.reduce_sum(logits[:, j]) for j in range(n_classes)]
        grads = tf.stack([tf.reshape(tape.gradient(s, x1), [batch, -1]) for s in class_sums], axis=1)
        del tape
        true_onehot = tf.one_hot(y, n_classes) > 0.5
        diff = logits - tf.gather(logits, y, batch_dims=1)[:, None]
        diff = tf.where(true_onehot, _NO_ADV, diff)
        grad_diff = grads - tf.gather(grads, y, batch_dims=1)[:, None, :]
        return diff, grad_diff

    def labels(images):
        return tf.argmax(tf.cast(logits_fn(images), tf.float32), axis=1, output_type=tf.int32)

    def run(x, y, y_target, eps, seed, random_start):
        batch = tf.shape(x)[0]
        x0 = tf.reshape(x, [batch, -1])
        t = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0)
        x_rand = tf.clip_by_value(x + 0.5 * eps * t / per_example(linf(t), rank), 0.0, 1.0)
        x1 = tf.where(random_start, x_rand, x)
        correct = tf.equal(labels(x), y)

        def body(i, x1, adv, best):
            diff, grad_diff = diffs_and_grads(x1, y, y_target)
            dist = tf.abs(diff) / (1e-12 + tf.reduce_sum(tf.abs(grad_diff), axis=2))
            closest = tf.argmin(dist, axis=1, output_type=tf.int32)
            w = tf.gather(grad_diff, closest, batch_dims=1)
            x1_flat = tf.reshape(x1, [batch, -1])
            b = -tf.gather(diff, closest, batch_dims=1) + tf.reduce_sum(w * x1_flat, axis=1)
            d3 = project_linf_hyperplane(tf.concat([x1_flat, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
            d1, d2 = tf.reshape(d3[:batch], tf.shape(x)), tf.reshape(d3[batch:], tf.shape(x))
            norms = tf.maximum(tf.reduce_max(tf.abs(d3), axis=1), 1e-8)
            a1, a2 = norms[:batch], norms[batch:]
            alpha = per_example(tf.minimum(tf.maximum(a1 / (a1 + a2), 0.0), alpha_max), rank)
            x1 = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x + eta * d2) * alpha, 0.0, 1.0)
            is_adv = tf.not_equal(labels(x1), y)
            distance = linf(x1 - x)
            better = tf.logical_and(is_adv, distance < best)
            adv = tf.where(per_example(better, rank), x1, adv)
            best = tf.where(better, distance, best)
            x1 = tf.where(per_example(is_adv, rank), x + (x1 - x) * beta, x1)
            return i + 1, x1, adv, best

        _, _, adv, best = tf.while_loop(lambda i, *_: i < n_iter, body,
                                        (tf.constant(0), x1, x, tf.fill([batch], _NO_ADV)))
        success = tf.logical_and(correct, best < _NO_ADV)
        return tf.where(per_example(success, rank), adv, x), tf.where(success, best, _NO_ADV)

    sig = [spec(feature_shape), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
           tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.bool)]
    return tf.function(run, input_signature=sig)


def fab_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, targeted: bool = True,
                   y_target=None, n_iter: int = 100, seed=(0, 0), random_start: bool = False,
                   alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> Dict[str, np.ndarray]:
    """One FAB run on one batch: `adv` (original where none found) and `distance` (L-inf, 1e10 if none)."""
    x, y = as_inputs(x, y)
    shape = tuple(x.shape[1:])
    run = cached(logits_fn, ("fab", shape, targeted, n_iter, alpha_max, eta, beta),
                 lambda: _build_single_run(logits_fn, shape, targeted, n_iter, alpha_max, eta, beta))
    y_target = y if y_target is None else np.asarray(y_target, np.int32)
    adv, distance = run(tf.constant(x), tf.constant(y), tf.constant(y_target), tf.constant(eps, tf.float32),
                        tf.constant(np.asarray(seed, np.int64)), tf.constant(random_start))
    return {"adv": adv.numpy(), "distance": distance.numpy()}


class FABAttack:
    """FAB with restarts (random start from the second restart on), targeted over the runner-up classes or not."""

    def __init__(self, logits_fn: LogitsFn, eps: float, targeted: bool = True, n_target_classes: int = 9,
                 n_iter: int = 100, n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, seed: int = 0):
        self.logits_fn, self.eps, self.targeted, self.n_target_classes = logits_fn, eps, targeted, n_target_classes
        self.n_iter, self.n_restarts, self.seed = n_iter, n_restarts, seed
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def _attack_rounds(self, robust, logits, x, y, stream, target_rank):
        """One pass over the restarts; updates `robust` and returns the broken points to write back."""
        found = {}
        for restart in range(self.n_restarts):
            index = np.flatnonzero(robust)
            if len(index) == 0:
                break
            y_target = target_labels(logits[index], target_rank) if self.targeted else None
            out = fab_single_run(self.logits_fn, x[index], y[index], self.eps, self.targeted, y_target,
                                 self.n_iter, derive_seed(self.seed, *stream, target_rank, restart),
                                 random_start=restart > 0, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta)
            adv = out["adv"]
            within = np.abs(adv - x[index]).reshape(len(index), -1).max(axis=1) <= self.eps
            fooled = (predict(self.logits_fn, adv, len(index)) != y[index]) & within
            robust[index[fooled]] = False
            found.update(zip(index[fooled].tolist(), adv[fooled]))
        return found

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = ()) -> Tuple[np.ndarray, int]:
        """Adversarial batch within eps (original where not broken); second value 0 (API parity with APGD)."""
        adv = x.copy()
        if len(x) == 0:
            return adv, 0
        logits = logits_numpy(self.logits_fn, x, len(x))
        robust = logits.argmax(axis=1) == y
        ranks = range(2, min(self.n_target_classes, logits.shape[1] - 1) + 2) if self.targeted else [0]
        for target_rank in ranks:
            for i, point in self._attack_rounds(robust, logits, x, y, stream, target_rank).items():
                adv[i] = point
        return adv, 0


def _run_batched(attack: FABAttack, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    x, y = as_inputs(x, y)
    adv = x.copy()
    for number, part in enumerate(batches(len(x), batch_size)):
        adv[part] = attack.perturb(x[part], y[part], stream=(number,))[0]
    return adv


def fab_targeted(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_target_classes: int = 9,
                 n_iter: int = 100, n_restarts: int = 1, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """FAB-T (L-inf): adversarial examples within eps, the original where the attack fails."""
    attack = FABAttack(logits_fn, eps, targeted=True, n_target_classes=n_target_classes, n_iter=n_iter,
                       n_restarts=n_restarts, seed=seed)
    return _run_batched(attack, x, y, batch_size)


def fab(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_iter: int = 100, n_restarts: int = 1,
        seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Untargeted FAB (L-inf): adversarial examples within eps, the original where the attack fails."""
    attack = FABAttack(logits_fn, eps, targeted=False, n_iter=n_iter, n_restarts=n_restarts, seed=seed)
    return _run_batched(attack, x, y, batch_size)
