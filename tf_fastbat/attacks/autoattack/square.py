"""Square Attack, L-inf (Andriushchenko et al. 2020), score-based random search as used in AutoAttack.

Start from vertical stripes x + eps * (random sign per column and channel); then, per query, set a random
s x s window to a vertex of the eps-ball (one random sign per channel) and keep it if the margin loss
z_y - max_{j != y} z_j decreases or the point becomes misclassified. The window side follows
s = round(sqrt(p * h * w)), with p halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 from
p_init. Points are dropped from the search as soon as they are misclassified. Images must be NHWC.

Few points are left by the time Square runs, and their queries are sequential, so each forward pass would see a
small batch. Each point therefore evaluates its next K queries at once, all from its current best point, and
keeps the first that is accepted; the queries after it are discarded and evaluated again from the new best
point. This is the sequential search exactly (queries are rejected about 97% of the time), with batches of
about `max_rows` images. The loop is traced once and run in blocks of queries (progress).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.autoattack._utils import (Engine, LogitsFn, as_inputs, batches, cached, derive_seed,
                                                  logits_fn_graph, predict, spec)

P_SCHEDULE_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
BLOCK = 100  # queries per traced call: a progress update every BLOCK queries
MAX_SPECULATION = 8  # queries a point evaluates per forward pass, at most


def p_selection(p_init: float, iteration: tf.Tensor, n_queries: int, rescale: bool) -> tf.Tensor:
    """Fraction of pixels changed at these queries (any shape): p_init / 2^(schedule boundaries passed)."""
    it = tf.cast(iteration, tf.float64)
    if rescale:  # adapt the 10000-query schedule to the budget (off in AutoAttack)
        it = tf.floor(it / n_queries * 10000.0)
    passed = tf.reduce_sum(tf.cast(it[..., None] > tf.constant(P_SCHEDULE_BOUNDARIES, tf.float64), tf.float64),
                           axis=-1)
    return p_init / tf.pow(tf.constant(2.0, tf.float64), passed)


def speculation(n_active: int, max_rows: int) -> int:
    """Queries per point per forward pass: enough to fill about `max_rows` rows, between 1 and MAX_SPECULATION."""
    return int(min(MAX_SPECULATION, max(1, max_rows // max(n_active, 1))))


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Margin z_y - max_{j != y} z_j (negative iff misclassified)."""
    true = tf.one_hot(y, tf.shape(logits)[1]) > 0.5
    z_y = tf.reduce_sum(tf.where(true, logits, 0.0), axis=1)
    z_other = tf.reduce_max(tf.where(true, -np.inf, logits), axis=1)
    return z_y - z_other


def _build_engine(logits_fn: LogitsFn, feature_shape: Tuple[int, ...], n_queries: int, p_init: float,
                  rescale: bool, max_rows: int) -> Engine:
    """Trace the Square Attack loop over a batch; its state holds x_best, margin_min, the next query `q` of each
    point and the random draws of every (query, point). The loop stops once no point has queries left."""
    if len(feature_shape) != 3:
        raise ValueError(f"Square Attack needs NHWC images, got per-example shape {feature_shape}")
    h, w, c = feature_shape
    shared_logits = logits_fn_graph(logits_fn, feature_shape)  # already traced: the start adds no trace

    def margin_of(images, labels):
        return margin(tf.cast(logits_fn(images), tf.float32), labels)

    def random_sign(shape, seed):
        return tf.where(tf.random.stateless_uniform(shape, seed=seed) < 0.5, -1.0, 1.0)

    def draws(seed, n):
        """Window corners [Q, n, 2] and channel signs [Q, n, c]: query i's draws, row = the point's position."""
        def one(i):
            seed_i = tf.random.experimental.stateless_fold_in(seed, i)
            corner = tf.random.stateless_uniform([n, 2], seed=tf.random.experimental.stateless_fold_in(seed_i, 0))
            signs = random_sign([n, 1, 1, c], tf.random.experimental.stateless_fold_in(seed_i, 1))
            return corner, tf.reshape(signs, [n, c])

        return tf.map_fn(one, tf.range(n_queries), fn_output_signature=(tf.float32, tf.float32))

    def start(x, y, eps, seed):
        n = tf.shape(x)[0]
        x_best = tf.clip_by_value(x + eps * random_sign([n, 1, w, c], seed), 0.0, 1.0)  # vertical stripes
        corner, signs = draws(seed, n)
        return dict(x_best=x_best, margin_min=margin(shared_logits(x_best), y), q=tf.zeros([n], tf.int32),
                    corner=corner, signs=signs)

    def steps(x, y, eps, state, n_steps):
        rows = tf.range(h)[None, :, None, None]
        cols = tf.range(w)[None, None, :, None]

        def candidates(s, index, k):
            """The next k queries of each point in `index`, all from its current best point: [m * k] rows."""
            query = tf.gather(s["q"], index)[:, None] + tf.range(k)[None, :]
            point = tf.repeat(index, k)
            query_flat = tf.minimum(tf.reshape(query, [-1]), n_queries - 1)
            at = tf.stack([query_flat, tf.cast(point, tf.int32)], axis=1)
            corner, signs = tf.gather_nd(s["corner"], at), tf.gather_nd(s["signs"], at)
            p = p_selection(p_init, query_flat, n_queries, rescale)
            size = tf.cast(tf.maximum(tf.round(tf.sqrt(p * h * w)), 1.0), tf.int32)
            size = tf.minimum(size, min(h, w))
            # Offsets uniform in {0, ..., h - s}: the reference draws from {0, ..., h - s - 1} and so never
            # places a window touching the last row/column (see BUILD_NOTES).
            vh = tf.minimum(tf.cast(corner[:, 0] * tf.cast(h - size + 1, tf.float32), tf.int32), h - size)
            vw = tf.minimum(tf.cast(corner[:, 1] * tf.cast(w - size + 1, tf.float32), tf.int32), w - size)
            vh, vw, size = vh[:, None, None, None], vw[:, None, None, None], size[:, None, None, None]
            window = (rows >= vh) & (rows < vh + size) & (cols >= vw) & (cols < vw + size)
            x_cur, x_best_cur = tf.gather(x, point), tf.gather(s["x_best"], point)
            x_new = x_best_cur + tf.where(window, 2.0 * eps * signs[:, None, None, :], 0.0)
            x_new = tf.clip_by_value(tf.minimum(tf.maximum(x_new, x_cur - eps), x_cur + eps), 0.0, 1.0)
            return x_new, tf.gather(y, point), query < n_queries

        def body(step, s):
            index = tf.where(tf.logical_and(s["margin_min"] > 0.0, s["q"] < n_queries))[:, 0]
            m = tf.shape(index)[0]
            k = tf.clip_by_value(max_rows // tf.maximum(m, 1), 1, MAX_SPECULATION)
            x_new, y_new, valid = candidates(s, index, k)
            margin_new = tf.reshape(margin_of(x_new, y_new), [m, k])
            margin_cur = tf.gather(s["margin_min"], index)[:, None]
            accepted = tf.logical_and(tf.logical_or(margin_new < margin_cur, margin_new <= 0.0), valid)
            any_accepted = tf.reduce_any(accepted, axis=1)
            first = tf.argmax(tf.cast(accepted, tf.int32), axis=1, output_type=tf.int32)
            pick = tf.range(m) * k + first
            q_cur = tf.gather(s["q"], index)
            advance = tf.where(any_accepted, first + 1, tf.minimum(k, n_queries - q_cur))
            keep = any_accepted[:, None, None, None]
            scatter = index[:, None]
            x_best = tf.tensor_scatter_nd_update(
                s["x_best"], scatter, tf.where(keep, tf.gather(x_new, pick), tf.gather(s["x_best"], index)))
            margin_min = tf.tensor_scatter_nd_update(
                s["margin_min"], scatter, tf.where(any_accepted, tf.gather(tf.reshape(margin_new, [-1]), pick),
                                                   tf.gather(s["margin_min"], index)))
            q = tf.tensor_scatter_nd_add(s["q"], scatter, advance)
            return step + 1, dict(s, x_best=x_best, margin_min=margin_min, q=q)

        def cond(step, s):
            return tf.logical_and(step < n_steps, tf.reduce_any(tf.logical_and(s["margin_min"] > 0.0,
                                                                               s["q"] < n_queries)))

        return tf.while_loop(cond, body, (tf.constant(0), state))[1]

    inputs = [spec(feature_shape), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)]
    state = dict(x_best=spec(feature_shape), margin_min=tf.TensorSpec([None]), q=tf.TensorSpec([None], tf.int32),
                 corner=tf.TensorSpec([n_queries, None, 2]), signs=tf.TensorSpec([n_queries, None, c]))
    return Engine(start=tf.function(start, input_signature=inputs + [tf.TensorSpec([2], tf.int64)]),
                  steps=tf.function(steps, input_signature=inputs + [state, tf.TensorSpec([], tf.int32)]),
                  row_axes=dict(x_best=0, margin_min=0, q=0, corner=1, signs=1))


def _run(engine: Engine, x: np.ndarray, y: np.ndarray, eps: float, seed: np.ndarray, n_queries: int, max_rows: int,
         done: Callable[[int], None] = lambda k: None) -> Dict[str, np.ndarray]:
    """One Square Attack run on one batch, about BLOCK queries per point per call; `done(k)` counts
    point-queries, a point that becomes misclassified counting all its remaining queries as done."""
    inputs = (tf.constant(x, tf.float32), tf.constant(y, tf.int32), tf.constant(eps, tf.float32))
    state = engine.start(*inputs, tf.constant(np.asarray(seed, np.int64)))
    reported = 0
    while True:
        q, margin_min = state["q"].numpy(), state["margin_min"].numpy()
        active = (margin_min > 0.0) & (q < n_queries)
        progress = int(np.where(margin_min > 0.0, q, n_queries).sum())
        done(progress - reported)
        reported = progress
        if not active.any():
            break
        n_steps = max(1, BLOCK // speculation(int(active.sum()), max_rows))
        state = engine.steps(*inputs, state, tf.constant(n_steps, tf.int32))
    return {"x_best": state["x_best"].numpy(), "margin_min": margin_min, "queries": q + 1.0}


def _engine(logits_fn: LogitsFn, shape: Tuple[int, ...], n_queries: int, p_init: float, rescale: bool,
            max_rows: int) -> Engine:
    return cached(logits_fn, ("square", shape, n_queries, p_init, rescale, max_rows),
                  lambda: _build_engine(logits_fn, shape, n_queries, p_init, rescale, max_rows))


def square_single_run(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int = 5000,
                      p_init: float = 0.8, seed=(0, 0), rescale_schedule: bool = False,
                      max_rows: int = 256) -> Dict[str, np.ndarray]:
    """One Square Attack run on one batch: x_best, margin_min (lowest margin found), queries used."""
    x, y = as_inputs(x, y)
    return _run(_engine(logits_fn, tuple(x.shape[1:]), n_queries, p_init, rescale_schedule, max_rows), x, y, eps,
                seed, n_queries, max_rows)


class SquareAttack:
    """Untargeted L-inf Square Attack with the margin loss, restarts on the points still correctly classified."""

    def __init__(self, logits_fn: LogitsFn, eps: float, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, rescale_schedule: bool = False, seed: int = 0, max_rows: int = 256):
        self.logits_fn, self.eps, self.n_queries, self.p_init = logits_fn, eps, n_queries, p_init
        self.n_restarts, self.rescale_schedule, self.seed, self.max_rows = n_restarts, rescale_schedule, seed, max_rows

    def work(self, n_points: int, n_classes: int) -> int:
        """Point-queries needed for `n_points` correctly classified points (the progress total)."""
        del n_classes
        return n_points * self.n_restarts * self.n_queries

    def perturb(self, x: np.ndarray, y: np.ndarray, stream: Tuple[int, ...] = (),
                done: Callable[[int], None] = lambda k: None) -> Tuple[np.ndarray, int]:
        """Adversarial batch (original where not broken); second value 0 (API parity with APGD); `done(k)` as
        point-queries finish."""
        adv = x.copy()
        robust = predict(self.logits_fn, x, max(len(x), 1)) == y
        engine = _engine(self.logits_fn, tuple(x.shape[1:]), self.n_queries, self.p_init, self.rescale_schedule,
                         self.max_rows)
        n_correct = int(robust.sum())
        for restart in range(self.n_restarts):
            index = np.flatnonzero(robust)
            done((n_correct - len(index)) * self.n_queries)  # points broken by earlier restarts
            if len(index) == 0:
                continue
            out = _run(engine, x[index], y[index], self.eps, derive_seed(self.seed, *stream, restart), self.n_queries,
                       self.max_rows, done)
            fooled = predict(self.logits_fn, out["x_best"], len(index)) != y[index]
            robust[index[fooled]] = False
            adv[index[fooled]] = out["x_best"][fooled]
        return adv, 0


def square(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int = 5000,
           p_init: float = 0.8, seed: int = 0, n_restarts: int = 1, batch_size: int = 256) -> np.ndarray:
    """Square Attack (L-inf): adversarial examples, the original where the attack fails."""
    x, y = as_inputs(x, y)
    attack = SquareAttack(logits_fn, eps, n_queries=n_queries, p_init=p_init, n_restarts=n_restarts, seed=seed,
                          max_rows=batch_size)
    adv = x.copy()
    for number, part in enumerate(batches(len(x), batch_size)):
        adv[part] = attack.perturb(x[part], y[part], stream=(number,))[0]
    return adv
