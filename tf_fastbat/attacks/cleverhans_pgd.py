"""cleverhans' L-inf PGD (Madry et al. 2018) as an independent cross-check of the in-house PGD.

`cleverhans.tf2.attacks.projected_gradient_descent` with clip_min=0, clip_max=1, a uniform random start,
eps_iter = eps/4 and the true labels; `sanity_checks=False` because its checks fail under NumPy 2. The whole
attack on a batch is one tf.function (cleverhans' Python loop becomes a tf.while_loop under autograph because
nb_iter is a tensor), traced once per (eps, eps_iter) pair for any batch size and step count; eps stays a Python
float because cleverhans asserts `eps_iter <= eps` in Python.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def cleverhans_name(steps: int, restarts: int = 1) -> str:
    """The report's key: "cleverhans-pgd-50" (one restart) or "cleverhans-pgd-50-5"."""
    return f"cleverhans-pgd-{steps}" if restarts == 1 else f"cleverhans-pgd-{steps}-{restarts}"


class CleverhansPGD:
    """cleverhans PGD with restarts against `logits_fn`; per-example worst case, broken examples not re-attacked."""

    def __init__(self, logits_fn: LogitsFn, batch_size: int = 256):
        self.logits_fn = logits_fn
        self.batch_size = batch_size
        self._attacks: Dict[Tuple[float, float], Callable] = {}
        self._argmax = None
        self._image_shape = None

    def _compile(self, image_shape) -> None:
        self._image_shape = tuple(image_shape)
        images = tf.TensorSpec([None, *image_shape], tf.float32)
        self._argmax = tf.function(lambda x: tf.argmax(self.logits_fn(x), axis=-1), input_signature=[images])

    def _attack_for(self, eps: float, eps_iter: float) -> Callable:
        """The traced attack for one (eps, eps_iter); free batch size and step count."""
        key = (float(eps), float(eps_iter))
        if key not in self._attacks:
            logits_fn = lambda images: tf.cast(self.logits_fn(images), tf.float32)  # noqa: E731

            def attack(x, y, steps):
                return projected_gradient_descent(logits_fn, x, key[0], key[1], steps, np.inf, clip_min=0.0,
                                                  clip_max=1.0, y=y, targeted=False, rand_init=True,
                                                  sanity_checks=False)

            self._attacks[key] = tf.function(attack, input_signature=[
                tf.TensorSpec([None, *self._image_shape], tf.float32), tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.int32)])
        return self._attacks[key]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels, batch by batch."""
        if not len(x):
            return np.zeros([0], np.int64)
        if self._argmax is None:
            self._compile(x.shape[1:])
        return np.concatenate([self._argmax(tf.constant(x[i:i + self.batch_size])).numpy()
                               for i in range(0, len(x), self.batch_size)])

    def perturb(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int, eps_iter: float) -> np.ndarray:
        """One cleverhans PGD run on a batch: adversarial images (numpy)."""
        if self._argmax is None:
            self._compile(x.shape[1:])
        attack = self._attack_for(eps, eps_iter)
        return attack(tf.constant(x, tf.float32), tf.constant(np.asarray(y, np.int64)),
                      tf.constant(steps, tf.int32)).numpy()

    def robust_mask(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 50, restarts: int = 1,
                    eps_iter: Optional[float] = None, seed: int = 0,
                    progress: Optional[Callable[[int, int, int], None]] = None) -> np.ndarray:
        """Boolean per example: correctly classified and never broken in `restarts` runs.

        cleverhans draws its random start from TF's global generator, seeded here with `seed` so that a run
        repeats. `progress(restart, done, attacked)` follows each batch: `done` of this restart's `attacked`.
        """
        eps_iter = eps / 4.0 if eps_iter is None else eps_iter
        y = np.asarray(y)
        robust = self.predict(x) == y
        if eps == 0 or steps == 0:
            return robust
        tf.random.set_seed(seed)
        for restart in range(restarts):
            remaining = np.flatnonzero(robust)
            for begin in range(0, len(remaining), self.batch_size):
                index = remaining[begin:begin + self.batch_size]
                x_adv = self.perturb(x[index], y[index], eps, steps, eps_iter)
                robust[index] &= self.predict(x_adv) == y[index]
                if progress is not None:
                    progress(restart, begin + len(index), len(remaining))
        return robust


__all__ = ["CleverhansPGD", "cleverhans_name"]
