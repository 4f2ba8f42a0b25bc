"""Square Attack, L-inf (Andriushchenko et al. 2020), score-based random search as used in AutoAttack.

Start from vertical stripes x + eps * (random sign per column and channel); then, per query, set a random
s x s window to a vertex of the eps-ball (one random sign per channel) and keep it if the margin loss
z_y - max_{j != y} z_j decreases or the point becomes misclassified. The window side follows
s = round(sqrt(p * h * w)), with p halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 from
p_init. Points are dropped from the search as soon as they are misclassified. Images must be NHWC.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (LogitsFn, as_inputs, batches, cached, derive_seed, predict,
                                                  spec)

P_SCHEDULE_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, iteration: tf.Tensor, n_queries: int, rescale: bool) -> tf.Tensor:
    """Fraction of pixels changed at this query: p_init / 2^(number of schedule boundaries passed)."""
    it = tf.cast(iteration, tf.float64)
    if rescale:  # adapt the 10000-query schedule to the budget (off in AutoAttack)
        it = tf.floor(it / n_queries * 10000.0)
    passed = tf.reduce_sum(tf.cast(it > tf.constant(P_SCHEDULE_BOUNDARIES, tf.float64), tf.float64))
    return p_init / tf.pow(tf.constant(2.0, tf.float64), passed)


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Margin z_y - max_{j != y} z_j (negative iff misclassified)."""
    true = tf.one_hot(y, tf.shape(logits)[1]) > 0.5
    z_y = tf.reduce_sum(tf.where(true, logits, 0.0), axis=1)
    z_other = tf.reduce_max(tf.where(true, -np.inf, logits), axis=1)
    return z_y - z_other


def _build_single_run(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], n_queries: int, p_init: float,
                      rescale: bool) -> Callable:
    """Trace one Square Attack run over a batch: returns (x_best, margin_min, queries used per point)."""
    if len(feature_shape) != 3:
        raise ValueError(f"Square Attack needs NHWC images, got per-example shape {feature_shape}")
    h, w, c = feature_shape

    def margin_of(images, labels):
        return margin(tf.cast(logits_fn(images), tf.float32), labels)

    def random_sign(shape, seed):
        return tf.where(tf.random.stateless_uniform(shape, seed=seed) < 0.5, -1.0, 1.0)

    def run(x, y, eps, seed):
        n = tf.shape(x)[0]
        x_best = tf.clip_by_value(x + eps * random_sign([n, 1, w, c], seed), 0.0, 1.0)  # vertical stripes
        margin_min = margin_of(x_best, y)
        queries = tf.ones([n])
        rows = tf.range(h)[None, :, None, None]
        cols = tf.range(w)[None, None, :, None]

        def body(i, x_best, margin_min, queries):
            index = tf.where(margin_min > 0.0)[:, 0]
            x_cur, x_best_cur = tf.gather(x, index), tf.gather(x_best, index)
            y_cur, margin_cur = tf.gather(y, index), tf.gather(margin_min, index)
            m = tf.shape(index)[0]
            p = p_selection(p_init, i, n_queries, rescale)
            s = tf.cast(tf.maximum(tf.round(tf.sqrt(p * h * w)), 1.0), tf.int32)
            s = tf.minimum(s, min(h, w))
            seed_i = tf.random.experimental.stateless_fold_in(seed, i)
            corner = tf.random.stateless_uniform([m, 2], seed=tf.random.experimental.stateless_fold_in(seed_i, 0))
            # Offsets uniform in {0, ..., h - s}: the reference draws from {0, ..., h - s - 1} and so never
            # places a window touching the last row/column (see BUILD_NOTES).
            vh = tf.minimum(tf.cast(corner[:, 0] * tf.cast(h - s + 1, tf.float32), tf.int32), h - s)
            vw = tf.minimum(tf.cast(corner[:, 1] * tf.cast(w - s + 1, tf.float32), tf.int32), w - s)
            vh, vw = vh[:, None, None, None], vw[:, None, None, None]
            window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            signs = random_sign([m, 1, 1, c], tf.random.experimental.stateless_fold_in(seed_i, 1))
            x_new = x_best_cur + tf.where(window, 2.0 * eps * signs, 0.0)
            x_new = tf.clip_by_value(tf.minimum(tf.maximum(x_new, x_cur - eps), x_cur + eps), 0.0, 1.0)
            margin_new = margin_of(x_new, y_cur)
            improved = tf.logical_or(margin_new < margin_cur, margin_new <= 0.0)
            scatter = index[:, None]
            x_best = tf.tensor_scatter_nd_update(
                x_best, scatter, tf.where(improved[:, None, None, None], x_new, x_best_cur))
            margin_min = tf.tensor_scatter_nd_update(margin_min, scatter, tf.where(improved, margin_new, margin_cur))
            queries = tf.tensor_scatter_nd_add(queries, scatter, tf.ones([m]))
            return i + 1, x_best, margin_min, queries

        def cond(i, x_best, margin_min, queries):
            return tf.logical_and(i < n_queries, tf.reduce_any(margin_min > 0.0))

        _, x_best, margin_min, queries = tf.while_loop(cond, body, (tf.constant(0), x_best, margin_min, queries))
        return x_best, margin_min, queries

    sig = [spec(feature_shape), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
           tf.TensorSpec([2], tf.int64)]
    return tf.function(run, input_signature=sig)


def square_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int = 5000,
                      p_init: float = 0.8, seed=(0, 0), rescale_schedule: bool = False) -> Dict[str, np.ndarray]:
    """One Square Attack run on one batch: x_best, margin_min (lowest margin found), queries used."""
    x, y = as_inputs(x, y)
    shape = tuple(x.shape[1:])
    run = cached(logits_fn, ("square", shape, n_queries, p_init, rescale_schedule),
                 lambda: _build_single_run(logits_fn, shape, n_queries, p_init, rescale_schedule))
    out = run(tf.constant(x), tf.constant(y), tf.constant(eps, tf.float32), tf.constant(np.asarray(seed, np.int64)))
    return {name: value.numpy() for name, value in zip(("x_best", "margin_min", "queries"), out)}


class SquareAttack:
    """Untargeted L-inf Square Attack with the margin loss, restarts on the points still correctly classified."""

    def __init__(self, logits_fn: LogitsFn, eps: float, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, rescale_schedule: bool = False, seed: int = 0):
        self.logits_fn, self.eps, self.n_queries, self.p_init = logits_fn, eps, n_queries, p_init
        self.n_restarts, self.rescale_schedule, self.seed = n_restarts, rescale_schedule, seed

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = ()) -> Tuple[np.ndarray, int]:
        """Adversarial batch (original where not broken); second value 0 (API parity with APGD)."""
        adv = x.copy()
        robust = predict(self.logits_fn, x, max(len(x), 1)) == y
        for restart in range(self.n_restarts):
            index = np.flatnonzero(robust)
            if len(index) == 0:
                break
            out = square_single_run(self.logits_fn, x[index], y[index], self.eps, self.n_queries, self.p_init,
                                    derive_seed(self.seed, *stream, restart), self.rescale_schedule)
            fooled = predict(self.logits_fn, out["x_best"], len(index)) != y[index]
            robust[index[fooled]] = False
            adv[index[fooled]] = out["x_best"][fooled]
        return adv, 0


def square(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int = 5000,
           p_init: float = 0.8, seed: int = 0, n_restarts: int = 1, batch_size: int = 256) -> np.ndarray:
    """Square Attack (L-inf): adversarial examples, the original where the attack fails."""
    x, y = as_inputs(x, y)
    attack = SquareAttack(logits_fn, eps, n_queries=n_queries, p_init=p_init, n_restarts=n_restarts, seed=seed)
    adv = x.copy()
    for number, part in enumerate(batches(len(x), batch_size)):
        adv[part] = attack.perturb(x[part], y[part], stream=(number,))[0]
    return adv
