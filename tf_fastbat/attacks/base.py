"""The one interface every robustness measurement goes through, and the registry of --attacks names.

An attack is built once from its settings and then attacks any model given as `logits_fn`, a callable from
[0, 1] NHWC float32 images to logits. `robust_mask` says, per example, whether the model is right on it and
the attack did not change that. Adding an attack: one `Attack` subclass and one `register(name, factory)`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, Optional, Union

import numpy as np

LogitsFn = Callable  # [0, 1] NHWC float32 images -> logits
Progress = Callable[[str, int, int], None]  # (stage, done, total): "apgd-ce", 3, 8


@dataclasses.dataclass
class Outcome:
    """What an attack found: the robust mask, and anything it reports beside it (AutoAttack's per-attack figures)."""

    robust: np.ndarray
    details: Dict = dataclasses.field(default_factory=dict)


class Attack:
    """An evaluation attack: `name` is its report key, `settings()` how it ran, `attack(...)` the work."""

    name: str = "attack"

    def settings(self) -> Dict:
        raise NotImplementedError

    def attack(self, logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
               progress: Optional[Progress] = None) -> Outcome:
        """Attack every example at radius `eps` (a fraction of 1); progress(stage, done, total) as it goes."""
        raise NotImplementedError

    def robust_mask(self, logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
                    progress: Optional[Progress] = None) -> np.ndarray:
        return self.attack(logits_fn, x, y, eps, progress).robust


Factory = Callable[..., Attack]  # factory(settings, surrogate_fn=None, surrogate_label=None) -> Attack
# --attacks name -> "module:factory", imported only when built (cleverhans loads only if its attack is used).
_REGISTRY: Dict[str, Union[str, Factory]] = {
    "pgd": "tf_fastbat.attacks.pgd:PGDAttack.from_settings",
    "cleverhans_pgd": "tf_fastbat.attacks.cleverhans_pgd:CleverhansAttack.from_settings",
    "autoattack": "tf_fastbat.attacks.autoattack.attack:AutoAttack.from_settings",
    "transfer": "tf_fastbat.attacks.transfer:TransferAttack.from_settings",
}


def register(name: str, factory: Union[str, Factory]) -> None:
    """Make `name` an --attacks choice; `factory(settings, surrogate_fn=, surrogate_label=)` builds the attack
    from tf_fastbat.evaluation.Settings (or is "module:attribute" naming such a factory)."""
    _REGISTRY[name] = factory


def names() -> tuple:
    return tuple(_REGISTRY)


def build(name: str, settings, surrogate_fn: Optional[LogitsFn] = None,
          surrogate_label: Optional[str] = None) -> Attack:
    """The attack registered as `name`, built from the evaluation settings."""
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = importlib.import_module(module)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    return factory(settings, surrogate_fn=surrogate_fn, surrogate_label=surrogate_label)


class EngineCache:
    """The traced engine of the model an attack object is working on: one model at a time, all its eps reuse it."""

    def __init__(self, make: Callable[[LogitsFn], object]):
        self._make = make
        self._for: Optional[LogitsFn] = None
        self._engine = None

    def __call__(self, logits_fn: LogitsFn):
        if self._for is not logits_fn:
            self._for, self._engine = logits_fn, self._make(logits_fn)
        return self._engine


def restart_progress(progress: Optional[Progress], stage: str, num_examples: int, restarts: int):
    """PGD's (restart, done, attacked) callback as progress(stage, example-restarts done, restarts x examples).

    An example no longer attacked (misclassified, or broken by an earlier restart) counts as done for this and every
    later restart at once, so that the rate, and the ETA, measure the attack work that is actually left.
    """
    if progress is None:
        return None
    total = num_examples * restarts

    def report(restart: int, done: int, attacked: int) -> None:
        progress(stage, restart * num_examples + done + (num_examples - attacked) * (restarts - restart), total)

    return report
