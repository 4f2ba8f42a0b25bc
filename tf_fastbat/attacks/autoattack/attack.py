"""AutoAttack behind the evaluation's Attack interface (tf_fastbat.attacks.base)."""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np

from tf_fastbat.attacks.autoattack._utils import predict
from tf_fastbat.attacks.autoattack.autoattack import VERSIONS, run_autoattack
from tf_fastbat.attacks.base import Attack, Outcome
from tf_fastbat.fields import hparam, one_of


AUTOATTACK_NAME = "autoattack"  # its report key


@dataclasses.dataclass(frozen=True)
class AutoAttackOptions:
    version: str = hparam("standard", "AutoAttack version.", flag="aa_version", check=one_of(tuple(VERSIONS)))


class AutoAttack(Attack):
    """The standard (or plus, rand) AutoAttack; its per-attack robust accuracy, seconds and warnings go in
    Outcome.details. At eps = 0 nothing is attacked: RA is SA by definition."""

    name = AUTOATTACK_NAME
    Options = AutoAttackOptions

    def __init__(self, version: str = "standard", seed: int = 0, batch_size: int = 256):
        self.version, self.seed, self.batch_size = version, seed, batch_size

    @classmethod
    def from_settings(cls, settings, options: AutoAttackOptions, **_) -> "AutoAttack":
        return cls(options.version, settings.seed, settings.batch_size)

    def settings(self) -> Dict:
        return {"implementation": "tf_fastbat.attacks.autoattack.run_autoattack", "norm": "Linf",
                "version": self.version}

    def attack(self, logits_fn, x, y, eps, progress=None) -> Outcome:
        if not len(x):
            return Outcome(np.zeros([0], bool), {"per_attack_robust_accuracy": {}, "seconds_per_attack": {},
                                                 "warnings": []})
        if eps == 0:
            return Outcome(predict(logits_fn, np.asarray(x, np.float32), self.batch_size) == np.asarray(y))
        result = run_autoattack(logits_fn, x, y, eps, version=self.version, batch_size=self.batch_size,
                                seed=self.seed, progress=progress, log=_print if progress is not None else None)
        return Outcome(result.robust_mask, {"robust_accuracy": result.robust_accuracy,
                                            "clean_accuracy": result.clean_accuracy,
                                            "per_attack_robust_accuracy": result.per_attack_robust_accuracy,
                                            "seconds_per_attack": result.seconds_per_attack,
                                            "warnings": list(result.warnings)})


def _print(line: str) -> None:
    """Each component attack's closing line (robust accuracy so far, seconds), beside the progress bars."""
    print(line, flush=True)
