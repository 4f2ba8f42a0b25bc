"""FAB, the Fast Adaptive Boundary attack, L-inf (Croce & Hein 2020, "Minimally distorted adversarial examples
with a fast adaptive boundary attack"), targeted (FAB-T, as in AutoAttack) and untargeted (AutoAttack+).

Each step linearises the decision boundary (towards the target class, or the closest class when untargeted),
projects both the current iterate and the original point onto that hyperplane within the [0, 1] box
(minimal L-inf step), and takes a convex combination biased towards the original point (alpha <= alpha_max),
overshooting by eta. Once misclassified, the best (smallest L-inf) point is kept and the iterate steps back
towards the original by the factor beta. A point counts as broken only if its best distance is <= eps.
The loop is traced once and run in blocks of iterations (progress); target classes and restarts are runs
batched together (`runs`).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (Engine, LogitsFn, as_inputs, batches, cached, derive_seed, linf,
                                                  logits_fn_graph, logits_numpy, per_example, predict, run_in_blocks,
                                                  spec, target_labels, uniform_rows)
from tf_fastbat.attacks.autoattack.runs import Rows, first_success, ran, schedule

_NO_ADV = 1e10
BLOCK = 10  # iterations per traced call: a progress update every BLOCK iterations


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
    dim = tf.shape(t)[1]
    negated, order = tf.math.top_k(-room, k=dim)  # tf.argsort's own kernel, keeping the sorted values
    room_sorted = -negated
    weight_sorted = tf.gather(tf.abs(w), order, batch_dims=1)
    cum_wr = tf.cumsum(weight_sorted * room_sorted, axis=1)
    cum_w = tf.cumsum(weight_sorted, axis=1)
    total_w = cum_w[:, -1:]
    g_at_breaks = cum_wr + room_sorted * (total_w - cum_w)
    n_below = tf.reduce_sum(tf.cast(g_at_breaks < c[:, None], tf.int32), axis=1)
    prev = tf.maximum(n_below - 1, 0)
    cum_wr_prev = tf.where(n_below > 0, tf.gather(cum_wr, prev, batch_dims=1), 0.0)
    cum_w_prev = tf.where(n_below > 0, tf.gather(cum_w, prev, batch_dims=1), 0.0)
    lam = (c - cum_wr_prev) / tf.maximum(total_w[:, 0] - cum_w_prev, 1e-12)
    lam = tf.where(n_below < dim, lam, tf.reduce_max(room, axis=1))
    return -tf.sign(w) * tf.minimum(lam[:, None], room)


def _build_engine(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], targeted: bool, n_iter: int,
                  alpha_max: float, eta: float, beta: float) -> Engine:
    """Trace the FAB loop over a batch of runs; the final state holds `adv` (the closest adversarial point
    found) and `best` (its L-inf distance, 1e10 if none) and `correct` (clean point correctly classified)."""
    rank = len(feature_shape) + 1
    shared_logits = logits_fn_graph(logits_fn, feature_shape)

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

    def start(x, y, y_target, eps, init):
        noise, random_start = init
        batch = tf.shape(x)[0]
        x_rand = tf.clip_by_value(x + 0.5 * eps * noise / per_example(linf(noise), rank), 0.0, 1.0)
        x1 = tf.where(per_example(random_start, rank), x_rand, x)
        clean = tf.argmax(shared_logits(x), axis=1, output_type=tf.int32)  # the already traced forward
        return dict(i=tf.constant(0), x1=x1, adv=x, best=tf.fill([batch], _NO_ADV), correct=tf.equal(clean, y))

    def steps(x, y, y_target, eps, state, n):
        del eps
        batch = tf.shape(x)[0]
        x0 = tf.reshape(x, [batch, -1])
        end = tf.minimum(state["i"] + n, n_iter)

        def body(s):
            x1 = s["x1"]
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
            better = tf.logical_and(is_adv, distance < s["best"])
            adv = tf.where(per_example(better, rank), x1, s["adv"])
            best = tf.where(better, distance, s["best"])
            x1 = tf.where(per_example(is_adv, rank), x + (x1 - x) * beta, x1)
            return (dict(i=s["i"] + 1, x1=x1, adv=adv, best=best, correct=s["correct"]),)

        return tf.while_loop(lambda s: s["i"] < end, body, (state,))[0]

    image = spec(feature_shape)
    inputs = [image, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)]
    state = dict(i=tf.TensorSpec([], tf.int32), x1=image, adv=image, best=tf.TensorSpec([None], tf.float32),
                 correct=tf.TensorSpec([None], tf.bool))
    init = (image, tf.TensorSpec([None], tf.bool))  # U[-1, 1] noise and whether to start from it
    return Engine(start=tf.function(start, input_signature=inputs + [init]),
                  steps=tf.function(steps, input_signature=inputs + [state, tf.TensorSpec([], tf.int32)]),
                  row_axes={name: None if name == "i" else 0 for name in state})


def _engine(logits_fn: LogitsFn, shape: Tuple[int, ...], targeted: bool, n_iter: int, alpha_max: float, eta: float,
            beta: float) -> Engine:
    return cached(logits_fn, ("fab", shape, targeted, n_iter, alpha_max, eta, beta),
                  lambda: _build_engine(logits_fn, shape, targeted, n_iter, alpha_max, eta, beta))


def _run(engine: Engine, x: np.ndarray, y: np.ndarray, y_target: np.ndarray, eps: float, noise: np.ndarray,
         random_start: np.ndarray, n_iter: int, done: Callable[[int], None] = lambda k: None,
         rows: Optional[Rows] = None) -> Dict[str, np.ndarray]:
    """One batch of FAB runs: `adv` (original where none found), `distance` (L-inf, 1e10 if none) and `kept`,
    the rows they are for: given the `rows` of a schedule, a run stops once an earlier run broke its point."""
    inputs = (tf.constant(x, tf.float32), tf.constant(y, tf.int32), tf.constant(y_target, tf.int32),
              tf.constant(eps, tf.float32))
    init = (tf.constant(noise, tf.float32), tf.constant(random_start, tf.bool))

    def needed(state, kept):
        return ran(rows.take(kept), state["correct"].numpy() & (state["best"].numpy() <= eps))

    state, kept = run_in_blocks(engine, inputs, init, n_iter, BLOCK, done, None if rows is None else needed)
    success = state["correct"].numpy() & (state["best"].numpy() < _NO_ADV)
    adv = np.where(success.reshape([-1] + [1] * (x.ndim - 1)), state["adv"].numpy(), x[kept])
    return {"adv": adv, "distance": np.where(success, state["best"].numpy(), _NO_ADV), "kept": kept}


def fab_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, targeted: bool = True,
                   y_target=None, n_iter: int = 100, seed=(0, 0), random_start: bool = False,
                   alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> Dict[str, np.ndarray]:
    """One FAB run on one batch: `adv` (original where none found) and `distance` (L-inf, 1e10 if none)."""
    x, y = as_inputs(x, y)
    shape = tuple(x.shape[1:])
    noise = tf.random.stateless_uniform(x.shape, seed=np.asarray(seed, np.int64), minval=-1.0, maxval=1.0).numpy()
    out = _run(_engine(logits_fn, shape, targeted, n_iter, alpha_max, eta, beta), x, y,
               y if y_target is None else np.asarray(y_target, np.int32), eps, noise, np.full(len(x), random_start),
               n_iter)
    return {"adv": out["adv"], "distance": out["distance"]}


class FABAttack:
    """FAB with restarts (random start from the second restart on), targeted over the runner-up classes or not."""

    def __init__(self, logits_fn: LogitsFn, eps: float, targeted: bool = True, n_target_classes: int = 9,
                 n_iter: int = 100, n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, seed: int = 0, max_rows: int = 256):
        self.logits_fn, self.eps, self.targeted, self.n_target_classes = logits_fn, eps, targeted, n_target_classes
        self.n_iter, self.n_restarts, self.seed, self.max_rows = n_iter, n_restarts, seed, max_rows
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def groups(self, n_classes: int) -> List[Tuple[int, int]]:
        """(target rank, restart) of each group of runs, in the reference's order; rank 0 means untargeted."""
        ranks = range(2, min(self.n_target_classes, n_classes - 1) + 2) if self.targeted else [0]
        return [(rank, restart) for rank in ranks for restart in range(self.n_restarts)]

    def work(self, n_points: int, n_classes: int) -> int:
        """Point-iterations needed for `n_points` correctly classified points (the progress total)."""
        return n_points * len(self.groups(n_classes)) * self.n_iter

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = (),
                done: Callable[[int], None] = lambda k: None) -> Tuple[np.ndarray, int]:
        """Adversarial batch within eps (original where not broken); second value 0 (API parity with APGD);
        `done(k)` as point-iterations finish."""
        adv = x.copy()
        if len(x) == 0:
            return adv, 0
        logits = logits_numpy(self.logits_fn, x, len(x))
        index = np.flatnonzero(logits.argmax(axis=1) == y)
        groups = self.groups(logits.shape[1])
        seeds = [derive_seed(self.seed, *stream, rank, restart) for rank, restart in groups]
        targets = np.stack([target_labels(logits[index], rank) if rank else y[index] for rank, _ in groups])
        restarts = np.array([restart for _, restart in groups])
        shape = tuple(x.shape[1:])
        engine = _engine(self.logits_fn, shape, self.targeted, self.n_iter, self.alpha_max, self.eta, self.beta)
        broken = np.zeros(len(index), bool)
        for rows in schedule(len(index), len(groups), self.max_rows, broken, lambda n: done(n * self.n_iter)):
            chosen = index[rows.point]
            noise = uniform_rows(seeds, len(index), shape, rows.group, rows.point)
            out = _run(engine, x[chosen], y[chosen], targets[rows.group, rows.point], self.eps, noise,
                       restarts[rows.group] > 0, self.n_iter, done, rows)
            rows, chosen = rows.take(out["kept"]), chosen[out["kept"]]
            within = np.abs(out["adv"] - x[chosen]).reshape(len(rows), -1).max(axis=1) <= self.eps
            fooled = (predict(self.logits_fn, out["adv"], len(rows)) != y[chosen]) & within
            first = first_success(rows, fooled)
            broken[rows.point[first]] = True
            adv[index[rows.point[first]]] = out["adv"][first]
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
                       n_restarts=n_restarts, seed=seed, max_rows=batch_size)
    return _run_batched(attack, x, y, batch_size)


def fab(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_iter: int = 100, n_restarts: int = 1,
        seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Untargeted FAB (L-inf): adversarial examples within eps, the original where the attack fails."""
    attack = FABAttack(logits_fn, eps, targeted=False, n_iter=n_iter, n_restarts=n_restarts, seed=seed,
                       max_rows=batch_size)
    return _run_batched(attack, x, y, batch_size)
