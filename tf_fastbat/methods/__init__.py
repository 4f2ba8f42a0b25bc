"""Training methods: `build(name, **hparams)` returns an object with `gradients(model, x, y, noise)`.

A method is one file (a frozen dataclass subclassing `Method`, its hyperparameters the fields, each declared with
`fields.hparam`) and one registry line: its class in REGISTRY below, or `register(cls)` from any module.
"""

from __future__ import annotations

import dataclasses

from tf_fastbat import fields
from tf_fastbat.methods.base import Method
from tf_fastbat.methods.elle import ElleA
from tf_fastbat.methods.fast_at import FastAT
from tf_fastbat.methods.fast_at_ga import FastATGA
from tf_fastbat.methods.fast_bat import FastBAT
from tf_fastbat.methods.fgsm_pgi import FGSMPGI
from tf_fastbat.methods.liet import LIET
from tf_fastbat.methods.n_fgsm import NFGSM
from tf_fastbat.methods.nu_at import NuAT
from tf_fastbat.methods.pgd import PGD
from tf_fastbat.methods.standard import Standard

REGISTRY = {cls.name: cls for cls in (FastBAT, FastAT, FastATGA, PGD, NFGSM, Standard, FGSMPGI, NuAT, ElleA, LIET)}
NAMES = tuple(REGISTRY)


def register(cls: type) -> type:
    """Add a method class (a dataclass subclassing Method with a unique `name`) to REGISTRY and NAMES; returns it.

    The training tool then offers it as a --method choice, with a flag per hyperparameter (tf_fastbat.config).
    """
    global NAMES
    if not (isinstance(cls, type) and issubclass(cls, Method) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r}: a method is a dataclass subclassing tf_fastbat.methods.Method")
    if REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    NAMES = tuple(REGISTRY)
    return cls


def build(name: str, **hparams) -> Method:
    """The method `name` with the given hyperparameters (eps and step sizes as fractions of 1, in (0, 1]); others,
    and eps=8-style values, are refused."""
    if name not in REGISTRY:
        raise ValueError(f"method={name!r}: unknown; choose one of {', '.join(NAMES)}")
    cls = REGISTRY[name]
    accepted = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ValueError(f"method={name} does not take {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    method = cls(**hparams)
    fields.validate(method)  # also for a method whose own __post_init__ does not run Method's
    return method


def label(name: str) -> str:
    """The registered method's name in tables and figures ("Fast-BAT" for fast_bat)."""
    if name not in REGISTRY:
        raise ValueError(f"method={name!r}: unknown; choose one of {', '.join(NAMES)}")
    return REGISTRY[name].label


__all__ = ["build", "fields", "label", "Method", "NAMES", "REGISTRY", "register"]
