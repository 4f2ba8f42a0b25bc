"""The one interface every robustness measurement goes through, and the registry of --attacks names.

An attack is built once from the evaluation's shared settings (seed, batch size, surrogate) and its own `Options`
(a dataclass whose fields, declared with tf_fastbat.fields.hparam, are also the evaluation tool's flags and are
checked here), and then attacks any model given as `logits_fn`, a callable from [0, 1] NHWC float32 images to
logits. `robust_mask` says, per example, whether the model is right on it and the attack did not change that.
Adding an attack: one `Attack` subclass (with its `Options`) and one `register(name, AttackClass)`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Type, Union

import numpy as np

from tf_fastbat import fields

LogitsFn = Callable  # [0, 1] NHWC float32 images -> logits
Progress = Callable[[str, int, int], None]  # (stage, done, total): "apgd-ce", 3, 8


@dataclasses.dataclass
class Outcome:
    """What an attack found: the robust mask, and anything it reports beside it (AutoAttack's per-attack figures)."""

    robust: np.ndarray
    details: Dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of an attack that has none of its own."""


class Attack:
    """An evaluation attack: `name` is its report key, `Options` its own options, `from_settings` how the
    evaluation builds it, `settings()` how it ran, `attack(...)` the work."""

    name: str = "attack"
    Options: Type = NoOptions  # a frozen dataclass of fields.hparam fields: the attack's options and their checks

    @classmethod
    def from_settings(cls, settings, options, surrogate_fn: Optional[LogitsFn] = None,
                      surrogate_label: Optional[str] = None) -> "Attack":
        """The attack from the evaluation's shared `settings` (tf_fastbat.evaluation.Settings: seed, batch_size,
        surrogate) and its checked `options` (an instance of `Options`)."""
        raise NotImplementedError

    def settings(self) -> Dict:
        raise NotImplementedError

    def attack(self, logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
               progress: Optional[Progress] = None) -> Outcome:
        """Attack every example at radius `eps` (a fraction of 1); progress(stage, done, total) as it goes."""
        raise NotImplementedError

    def robust_mask(self, logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float,
                    progress: Optional[Progress] = None) -> np.ndarray:
        return self.attack(logits_fn, x, y, eps, progress).robust


# --attacks name -> the attack class, or "module:Class" imported only when asked for (cleverhans and AutoAttack
# load only if their attack is used).
_REGISTRY: Dict[str, Union[str, Type[Attack]]] = {
    "pgd": "tf_fastbat.attacks.pgd:PGDAttack",
    "cleverhans_pgd": "tf_fastbat.attacks.cleverhans_pgd:CleverhansAttack",
    "autoattack": "tf_fastbat.attacks.autoattack.attack:AutoAttack",
    "transfer": "tf_fastbat.attacks.transfer:TransferAttack",
}


def register(name: str, attack: Union[str, Type[Attack]]) -> None:
    """Make `name` an --attacks choice (its options become the evaluation tool's flags): an Attack subclass, or
    "module:Class" naming one."""
    _REGISTRY[name] = attack


def names() -> tuple:
    return tuple(_REGISTRY)


def attack_class(name: str) -> Type[Attack]:
    """The Attack subclass registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"attack={name!r}: unknown; choose from {', '.join(_REGISTRY)}")
    found = _REGISTRY[name]
    if isinstance(found, str):
        module, _, attribute = found.partition(":")
        found = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    return found


def options(name: str, given: Optional[Mapping[str, Any]] = None):
    """The options of attack `name`: its `Options` defaults, with the `given` values (field name -> value),
    checked by the fields' rules (fields.HParamError naming the option, e.g. "steps=-1: must be ...")."""
    cls = attack_class(name).Options
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(given or {}) - known)
    if unknown:
        raise ValueError(f"{name} options {', '.join(unknown)}: unknown; {name} takes "
                         f"{', '.join(sorted(known)) or 'none'}")
    chosen = cls(**(given or {}))
    fields.validate(chosen)
    return chosen


def build(name: str, settings, surrogate_fn: Optional[LogitsFn] = None,
          surrogate_label: Optional[str] = None) -> Attack:
    """The attack registered as `name`, built from the evaluation's settings and its options there
    (`settings.options[name]`, defaults for the rest)."""
    given = (getattr(settings, "options", None) or {}).get(name, {})
    return attack_class(name).from_settings(settings, options(name, given), surrogate_fn=surrogate_fn,
                                            surrogate_label=surrogate_label)


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
