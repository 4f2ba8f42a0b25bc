"""cleverhans' L-inf PGD (Madry et al. 2018) as an independent cross-check of the in-house PGD.

`cleverhans.tf2.attacks.projected_gradient_descent` with clip_min=0, clip_max=1, a uniform random start,
eps_iter = eps/4 and the true labels; `sanity_checks=False` because its checks fail under NumPy 2. The whole
attack on a batch is one tf.function (cleverhans' Python loop becomes a tf.while_loop under autograph because
nb_iter is a tensor), traced once per (eps, eps_iter) pair for any batch size and step count; eps stays a Python
float because cleverhans asserts `eps_iter <= eps` in Python.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.base import Attack, EngineCache, Outcome, restart_progress
from tf_fastbat.attacks.pgd import PGD
from tf_fastbat.fields import hparam, whole

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def cleverhans_name(steps: int, restarts: int = 1) -> str:
    """cleverhans' PGD: "cleverhans-pgd-50" (one restart) or "cleverhans-pgd-50-5"."""
    return f"cleverhans-pgd-{steps}" if restarts == 1 else f"cleverhans-pgd-{steps}-{restarts}"


class CleverhansPGD(PGD):
    """cleverhans PGD with restarts against `logits_fn`; per-example worst case, broken examples not re-attacked.

    Only the attack itself differs from the in-house PGD: restarts, bookkeeping and prediction are shared.
    """

    def __init__(self, logits_fn: LogitsFn, batch_size: int = 256):
        super().__init__(logits_fn, batch_size)
        self._attacks: Dict[Tuple[float, float], Callable] = {}

    def _attack_for(self, eps: float, eps_iter: float, image_shape) -> Callable:
        """The traced attack for one (eps, eps_iter); free batch size and step count."""
        key = (float(eps), float(eps_iter))
        if key not in self._attacks:
            from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

            logits_fn = lambda images: tf.cast(self.logits_fn(images), tf.float32)  # noqa: E731

            def attack(x, y, steps):
                return projected_gradient_descent(logits_fn, x, key[0], key[1], steps, np.inf, clip_min=0.0,
                                                  clip_max=1.0, y=y, targeted=False, rand_init=True,
                                                  sanity_checks=False)

            self._attacks[key] = tf.function(attack, input_signature=[
                tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.int32)])
        return self._attacks[key]

    def perturb(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int, eps_iter: float,
                seed=None) -> np.ndarray:
        """One cleverhans PGD run on a batch: adversarial images (numpy); its randomness is TF's global seed."""
        attack = self._attack_for(eps, eps_iter, x.shape[1:])
        return attack(tf.constant(x, tf.float32), tf.constant(np.asarray(y, np.int64)),
                      tf.constant(steps, tf.int32)).numpy()

    def robust_mask(self, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 50, restarts: int = 1,
                    eps_iter: Optional[float] = None, seed: int = 0,
                    progress: Optional[Callable[[int, int, int], None]] = None) -> np.ndarray:
        """Boolean per example: correctly classified and never broken in `restarts` runs.

        cleverhans draws its random start from TF's global generator, seeded here with `seed` so that a run
        repeats.
        """
        tf.random.set_seed(seed)
        return super().robust_mask(x, y, eps, steps, restarts, eps_iter, seed, progress)


@dataclasses.dataclass(frozen=True)
class CleverhansOptions:
    steps: int = hparam(50, "nb_iter of cleverhans' projected_gradient_descent.", flag="cleverhans_steps",
                        check=whole(0))
    restarts: int = hparam(1, "Random restarts of cleverhans' PGD.", flag="cleverhans_restarts", check=whole(1))


class CleverhansAttack(Attack):
    """cleverhans' PGD behind the Attack interface: nb_iter `steps`, eps_iter eps/4, `restarts` runs."""

    Options = CleverhansOptions

    def __init__(self, steps: int = 50, restarts: int = 1, seed: int = 0, batch_size: int = 256):
        self.steps, self.restarts, self.seed = steps, restarts, seed
        self.name = cleverhans_name(steps, restarts)
        self._engine = EngineCache(lambda logits_fn: CleverhansPGD(logits_fn, batch_size))

    @classmethod
    def from_settings(cls, settings, options: CleverhansOptions, **_) -> "CleverhansAttack":
        return cls(options.steps, options.restarts, settings.seed, settings.batch_size)

    def settings(self) -> Dict:
        return {"implementation": "cleverhans.tf2.attacks.projected_gradient_descent", "nb_iter": self.steps,
                "restarts": self.restarts, "eps_iter": "eps/4", "rand_init": True, "norm": "inf", "clip_min": 0.0,
                "clip_max": 1.0, "sanity_checks": False}

    def attack(self, logits_fn, x, y, eps, progress=None) -> Outcome:
        callback = restart_progress(progress, self.name, len(x), self.restarts)
        engine = self._engine(logits_fn)
        return Outcome(engine.robust_mask(x, y, eps, self.steps, self.restarts, seed=self.seed, progress=callback))
