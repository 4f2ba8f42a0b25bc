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


class TransferPGD(PGD):
    """PGD restarts scored on the victim (`logits_fn`) with adversarial examples crafted on a surrogate."""

    def __init__(self, surrogate_fn: LogitsFn, victim_fn: LogitsFn, batch_size: int = 256):
        super().__init__(victim_fn, batch_size)
        self.surrogate = PGD(surrogate_fn, batch_size)

    def perturb(self, x, y, eps, steps, step_size, seed):
        return self.surrogate.perturb(x, y, eps, steps, step_size, seed)


def transfer_robust_mask(surrogate_fn: LogitsFn, victim_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
                         steps: int = DEFAULT_STEPS, restarts: int = 1, step_size: Optional[float] = None,
                         seed: int = 0, batch_size: int = 256,
                         progress: Optional[Callable[[int, int, int], None]] = None) -> np.ndarray:
    """Boolean per example: the victim is right on x and on the surrogate's PGD-`steps` examples of each restart.

    The surrogate attacks its own loss with the true labels (random start, step eps/4 unless given).
    `progress(restart, done, attacked)` follows each batch: `done` of the `attacked` examples of this restart.
    """
    return TransferPGD(surrogate_fn, victim_fn, batch_size).robust_mask(x, y, eps, steps, restarts, step_size, seed,
                                                                        progress)


__all__ = ["transfer_robust_mask", "transfer_name", "DEFAULT_STEPS"]
