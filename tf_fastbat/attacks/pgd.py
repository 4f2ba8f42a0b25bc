"""PGD-K-R evaluation (Madry et al. 2018): K signed steps of eps/4 from a random start, R restarts.

Per-example worst case over restarts; an example already broken is not attacked again.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.base import Attack, EngineCache, Outcome, restart_progress
from tf_fastbat.fields import hparam, whole
from tf_fastbat.linf import ce_sum, project

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def pgd_name(steps: int, restarts: int) -> str:
    """PGD-K-R's key: "pgd-50-10"."""
    return f"pgd-{steps}-{restarts}"


class PGD:
    """PGD with restarts against `logits_fn` (a callable from [0, 1] NHWC images to logits)."""

    def __init__(self, logits_fn: LogitsFn, batch_size: int = 256):
        self.logits_fn = logits_fn
        self.batch_size = batch_size
        self._attack = None
        self._argmax = None

    def _compile(self, image_shape) -> None:
        """tf.functions with a free batch dimension, so that shrinking batches of survivors never retrace."""
        images = tf.TensorSpec([None, *image_shape], tf.float32)
        scalar = tf.TensorSpec([], tf.float32)
        self._attack = tf.function(self._attack_batch, input_signature=[
            images, tf.TensorSpec([None], tf.int32), scalar, scalar, tf.TensorSpec([], tf.int32),
            tf.TensorSpec([2], tf.int64)])
        self._argmax = tf.function(lambda x: tf.argmax(self.logits_fn(x), axis=-1), input_signature=[images])

    def _attack_batch(self, x, y, eps, step_size, steps, seed):
        noise = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0) * eps
        delta = project(noise, x, eps)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                loss = ce_sum(self.logits_fn(x + delta), y)
            delta = project(delta + step_size * tf.sign(tape.gradient(loss, delta)), x, eps)
        return x + delta

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros([0], np.int64)
        if self._argmax is None:
            self._compile(x.shape[1:])
        return np.concatenate([self._argmax(tf.constant(x[i:i + self.batch_size])).numpy()
                               for i in range(0, len(x), self.batch_size)])

    def perturb(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int, step_size: float, seed) -> np.ndarray:
        """One restart on a batch: adversarial images (numpy)."""
        if self._attack is None:
            self._compile(x.shape[1:])
        return self._attack(tf.constant(x), tf.constant(np.asarray(y, np.int32)), tf.constant(eps, tf.float32),
                            tf.constant(step_size, tf.float32), tf.constant(steps, tf.int32),
                            tf.constant(seed, tf.int64)).numpy()

    def robust_mask(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 50, restarts: int = 10,
                    step_size: Optional[float] = None, seed: int = 0,
                    progress: Optional[Callable[[int, int, int], None]] = None) -> np.ndarray:
        """Boolean per example: still correctly classified after every restart.

        `progress(restart, done, attacked)` is called as each restart starts (done = 0; `attacked` are the examples
        still robust) and after each of its batches, so a restart with nothing left to attack reports (r, 0, 0).
        """
        step_size = eps / 4.0 if step_size is None else step_size
        y = np.asarray(y)
        robust = self.predict(x) == y
        if eps == 0 or steps == 0:
            return robust
        for restart in range(restarts):
            remaining = np.flatnonzero(robust)
            if progress is not None:
                progress(restart, 0, len(remaining))
            for start in range(0, len(remaining), self.batch_size):
                index = remaining[start:start + self.batch_size]
                x_adv = self.perturb(x[index], y[index], eps, steps, step_size,
                                     [seed, restart * 1_000_003 + int(index[0])])
                robust[index] &= self.predict(x_adv) == y[index]
                if progress is not None:
                    progress(restart, start + len(index), len(remaining))
        return robust


@dataclasses.dataclass(frozen=True)
class PGDOptions:
    steps: int = hparam(50, "PGD steps K (step size eps/4).", flag="pgd_steps", check=whole(0))
    restarts: int = hparam(10, "PGD random restarts R (per-example worst case).", flag="pgd_restarts",
                           check=whole(1))


class PGDAttack(Attack):
    """PGD-K-R behind the Attack interface: K steps of `step_size` (eps/4 by default), R restarts."""

    Options = PGDOptions

    def __init__(self, steps: int = 50, restarts: int = 10, step_size: Optional[float] = None, seed: int = 0,
                 batch_size: int = 256):
        self.steps, self.restarts, self.step_size, self.seed = steps, restarts, step_size, seed
        self.name = pgd_name(steps, restarts)
        self._engine = EngineCache(lambda logits_fn: PGD(logits_fn, batch_size))

    @classmethod
    def from_settings(cls, settings, options: PGDOptions, **_) -> "PGDAttack":
        return cls(options.steps, options.restarts, seed=settings.seed, batch_size=settings.batch_size)

    def settings(self) -> Dict:
        return {"implementation": "tf_fastbat.attacks.pgd.PGD", "steps": self.steps, "restarts": self.restarts,
                "step_size": "eps/4" if self.step_size is None else self.step_size, "random_start": True,
                "loss": "cross-entropy", "worst_case_over_restarts": True}

    def attack(self, logits_fn, x, y, eps, progress=None) -> Outcome:
        callback = restart_progress(progress, self.name, len(x), self.restarts)
        engine = self._engine(logits_fn)
        return Outcome(engine.robust_mask(x, y, eps, self.steps, self.restarts, self.step_size, self.seed, callback))
