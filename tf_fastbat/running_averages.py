"""The momentum of the BatchNorm moving-average update in the current forward pass: a scope that a training method
sets around each of its forwards (tf_fastbat.methods.statistics) and that tf_fastbat.models.batch_norm.BatchNorm
reads. Thread-local, because MirroredStrategy runs each replica's step in its own thread, and a scope, because a
layer cannot take per-call arguments through a functional model."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional

_SCOPE = threading.local()


@contextlib.contextmanager
def moving_average_momentum(momentum_of: Callable[[float], float]) -> Iterator[None]:
    """Inside, a BatchNorm whose own momentum is m updates its moving averages with momentum_of(m)."""
    previous = getattr(_SCOPE, "momentum_of", None)
    _SCOPE.momentum_of = momentum_of
    try:
        yield
    finally:
        _SCOPE.momentum_of = previous


def effective_momentum(momentum: float) -> float:
    """The momentum a BatchNorm with `momentum` uses in this forward."""
    momentum_of: Optional[Callable[[float], float]] = getattr(_SCOPE, "momentum_of", None)
    return momentum if momentum_of is None else momentum_of(momentum)
