"""Transfer (black-box) attacks, Table 5: PGD adversarial examples crafted on a surrogate, scored on the victim.

An example counts as robust when the victim classifies both the clean image and every transferred adversarial
image (one per restart) correctly, so that transfer RA <= SA like every other robust accuracy in the report.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tf_fastbat.attacks.base import Attack, EngineCache, Outcome, restart_progress
from tf_fastbat.attacks.pgd import PGD
from tf_fastbat.errors import UsageError
from tf_fastbat.fields import hparam, whole

LogitsFn = Callable[[tf.Tensor], tf.Tensor]
DEFAULT_STEPS = 20


def transfer_name(surrogate_label: Optional[str]) -> str:
    """Transfer from a surrogate: "transfer-<surrogate name>"."""
    return f"transfer-{surrogate_label}"


class TransferPGD(PGD):
    """PGD restarts scored on the victim (`logits_fn`) with adversarial examples crafted on a surrogate."""

    def __init__(self, surrogate_fn: LogitsFn, victim_fn: LogitsFn, batch_size: int = 256):
        super().__init__(victim_fn, batch_size)
        self.surrogate = PGD(surrogate_fn, batch_size)

    def perturb(self, x, y, eps, steps, step_size, seed):
        return self.surrogate.perturb(x, y, eps, steps, step_size, seed)


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    steps: int = hparam(DEFAULT_STEPS, "PGD steps on the surrogate.", flag="transfer_steps", check=whole(0))
    restarts: int = hparam(1, "Random restarts on the surrogate (an example is robust when every restart's "
                           "transferred image fails).", flag="transfer_restarts", check=whole(1))


class TransferAttack(Attack):
    """Transfer from a surrogate behind the Attack interface: the surrogate's PGD-`steps` examples, scored on the
    attacked model (the victim)."""

    Options = TransferOptions

    def __init__(self, surrogate_fn: LogitsFn, surrogate_label: str, steps: int = DEFAULT_STEPS, restarts: int = 1,
                 seed: int = 0, batch_size: int = 256, surrogate: Optional[str] = None):
        self.surrogate_fn, self.steps, self.restarts, self.seed = surrogate_fn, steps, restarts, seed
        self.surrogate, self.name = surrogate, transfer_name(surrogate_label)
        self._engine = EngineCache(lambda victim_fn: TransferPGD(surrogate_fn, victim_fn, batch_size))

    @classmethod
    def from_settings(cls, settings, options: TransferOptions, surrogate_fn=None, surrogate_label=None,
                      **_) -> "TransferAttack":
        if surrogate_fn is None:
            raise UsageError("attacks=transfer needs surrogate_fn, the logits function of the model whose adversarial "
                             "examples are transferred")
        return cls(surrogate_fn, surrogate_label, options.steps, options.restarts, settings.seed, settings.batch_size,
                   surrogate=getattr(settings, "surrogate", None))

    def settings(self) -> Dict:
        return {"implementation": "tf_fastbat.attacks.transfer.TransferPGD", "surrogate": self.surrogate,
                "steps": self.steps, "restarts": self.restarts, "step_size": "eps/4", "random_start": True,
                "robust": "victim right on the clean and the transferred images"}

    def attack(self, logits_fn, x, y, eps, progress=None) -> Outcome:
        callback = restart_progress(progress, self.name, len(x), self.restarts)
        engine = self._engine(logits_fn)
        return Outcome(engine.robust_mask(x, y, eps, self.steps, self.restarts, seed=self.seed, progress=callback))
