"""Transfer (black-box) attacks, Table 5: PGD adversarial examples crafted on a surrogate, scored on the victim.

An example counts as robust when the victim classifies both the clean image and every transferred adversarial
image (one per restart) correctly, so that transfer RA <= SA like every other robust accuracy in the report.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.pgd import PGD

LogitsFn = Callable[[tf.Tensor], tf.Tensor]
DEFAULT_STEPS = 20


def transfer_name(surrogate_label: str) -> str:
    """The report's key: "transfer-<surrogate name>"."""
    return f"transfer-{surrogate_label}"


def transfer_robust_mask(surrogate_fn: LogitsFn, victim_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
                         steps: int = DEFAULT_STEPS, restarts: int = 1, step_size: Optional[float] = None,
                         seed: int = 0, batch_size: int = 256,
                         progress: Optional[Callable[[int, int, int], None]] = None) -> np.ndarray:
    """Boolean per example: the victim is right on x and on the surrogate's PGD-`steps` examples of each restart.

    The surrogate attacks its own loss with the true labels (random start, step eps/4 unless given).
    `progress(restart, done, attacked)` follows each batch: `done` of the `attacked` examples of this restart.
    """
    step_size = eps / 4.0 if step_size is None else step_size
    y = np.asarray(y)
    surrogate, victim = PGD(surrogate_fn, batch_size), PGD(victim_fn, batch_size)
    robust = victim.predict(x) == y
    if eps == 0 or steps == 0:
        return robust
    for restart in range(restarts):
        remaining = np.flatnonzero(robust)
        for begin in range(0, len(remaining), batch_size):
            index = remaining[begin:begin + batch_size]
            x_adv = surrogate.perturb(x[index], y[index], eps, steps, step_size,
                                      [seed, restart * 1_000_003 + int(index[0])])
            robust[index] &= victim.predict(x_adv) == y[index]
            if progress is not None:
                progress(restart, begin + len(index), len(remaining))
    return robust


__all__ = ["transfer_robust_mask", "transfer_name", "DEFAULT_STEPS"]
