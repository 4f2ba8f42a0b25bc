"""Helpers shared by the AutoAttack attacks: seeds, noise, traced-function cache, blocked loops, batching,
per-example norms."""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Dict, Hashable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

LogitsFn = Callable[[tf.Tensor], tf.Tensor]

_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_CACHE_SIZE = 64


def cached(logits_fn: LogitsFn, key: Tuple[Hashable, ...], build: Callable[[], Callable]) -> Callable:
    """Memoise `build()` per (logits_fn, key), so repeated calls reuse one traced tf.function.

    The cache holds `logits_fn` itself, so its id cannot be recycled while the entry lives.
    """
    full_key = (id(logits_fn),) + tuple(key)
    hit = _CACHE.get(full_key)
    if hit is not None and hit[0] is logits_fn:
        _CACHE.move_to_end(full_key)
        return hit[1]
    fn = build()
    _CACHE[full_key] = (logits_fn, fn)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def derive_seed(seed: int, *parts: int) -> np.ndarray:
    """A [2] int64 seed for stateless TF ops, a deterministic function of `seed` and the stream `parts`."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF] + [int(p) & 0xFFFFFFFF for p in parts])
    return state.generate_state(2, dtype=np.uint32).astype(np.int64)


def uniform_rows(seeds: Sequence[np.ndarray], n_points: int, feature_shape: Tuple[int, ...], group: np.ndarray,
                 point: np.ndarray) -> np.ndarray:
    """Per row, row `point` of U[-1, 1] noise of shape [n_points, *feature_shape] drawn with `seeds[group]`.

    Stateless draws fill their output in order, so this is also row `point` of any shorter draw that reaches it.
    """
    noise = np.empty([len(group), *feature_shape], np.float32)
    for g in np.unique(group):
        chosen = group == g
        draw = tf.random.stateless_uniform([n_points, *feature_shape], seed=seeds[g], minval=-1.0, maxval=1.0)
        noise[chosen] = tf.gather(draw, point[chosen]).numpy()
    return noise


@dataclasses.dataclass(frozen=True)
class Engine:
    """A traced attack loop over a batch of rows, run in blocks so that callers see progress:
    start(*inputs, init) -> state; steps(*inputs, state, n) -> the state after n more iterations (fewer at the end
    of the budget). `row_axes` names each state entry's row axis (None: shared by all rows)."""

    start: Callable
    steps: Callable
    row_axes: Mapping[str, Optional[int]]


def run_in_blocks(engine: Engine, inputs: Tuple[tf.Tensor, ...], init, n_iter: int, block: int,
                  done: Callable[[int], None],
                  needed: Optional[Callable[[Dict[str, tf.Tensor], np.ndarray], np.ndarray]] = None
                  ) -> Tuple[Dict[str, tf.Tensor], np.ndarray]:
    """All `n_iter` iterations of `engine`, `block` per call: (final state, indices of the rows it holds).

    After each call, `needed(state, kept)` may say which of the `kept` rows still matter; the others leave the
    batch there (rows are independent, so the rest is unchanged). `done(k)` counts finished row-iterations.
    """
    state, kept, finished = engine.start(*inputs, init), np.arange(int(inputs[0].shape[0])), 0
    while finished < n_iter:
        k = min(block, n_iter - finished)
        state = engine.steps(*inputs, state, tf.constant(k, tf.int32))
        finished += k
        done(k * len(kept))
        if needed is None or finished == n_iter:
            continue
        keep = needed(state, kept)
        if not keep.all():
            done((n_iter - finished) * int((~keep).sum()))
            index = tf.constant(np.flatnonzero(keep))
            state = {name: value if engine.row_axes[name] is None else
                     tf.gather(value, index, axis=engine.row_axes[name]) for name, value in state.items()}
            inputs = tuple(tf.gather(value, index) if value.shape.rank else value for value in inputs)
            kept = kept[keep]
    return state, kept


def spec(feature_shape: Tuple[int, ...]) -> tf.TensorSpec:
    """TensorSpec of a float32 batch with unknown batch size, so one trace serves every batch size."""
    return tf.TensorSpec([None, *feature_shape], tf.float32)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` covering range(n)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def per_example(v: tf.Tensor, rank: int) -> tf.Tensor:
    """Reshape a [B] vector to [B, 1, ..., 1] so it broadcasts against a rank-`rank` batch."""
    return tf.reshape(v, [-1] + [1] * (rank - 1))


def linf(v: tf.Tensor) -> tf.Tensor:
    """Per-example L-infinity norm over all non-batch axes."""
    return tf.reduce_max(tf.abs(tf.reshape(v, [tf.shape(v)[0], -1])), axis=1)


def project_linf_box(x_adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    """Project onto the intersection of the L-inf ball of radius eps around x and the [0, 1] box."""
    return tf.clip_by_value(tf.minimum(tf.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)


def logits_fn_graph(logits_fn: LogitsFn, feature_shape: Tuple[int, ...]) -> Callable[[tf.Tensor], tf.Tensor]:
    """A cached tf.function computing logits for any batch size."""
    return cached(logits_fn, ("logits", feature_shape),
                  lambda: tf.function(lambda images: tf.cast(logits_fn(images), tf.float32),
                                      input_signature=[spec(feature_shape)]))


def logits_numpy(logits_fn: LogitsFn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of a numpy batch, computed `batch_size` examples at a time."""
    fn = logits_fn_graph(logits_fn, tuple(x.shape[1:]))
    if len(x) == 0:
        return np.zeros([0, 0], np.float32)
    return np.concatenate([fn(tf.constant(x[s], tf.float32)).numpy() for s in batches(len(x), batch_size)])


def predict(logits_fn: LogitsFn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Predicted labels (argmax of the logits) of a numpy batch."""
    if len(x) == 0:
        return np.zeros([0], np.int64)
    return logits_numpy(logits_fn, x, batch_size).argmax(axis=1)


def target_labels(logits: np.ndarray, rank: int) -> np.ndarray:
    """The class with the `rank`-th largest logit per row (rank 2 = runner-up), the AutoAttack target choice."""
    return np.argsort(logits, axis=1, kind="stable")[:, -rank]


def as_inputs(x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs to float32 images and int32 labels."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    return x, y
