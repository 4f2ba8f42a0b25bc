"""BatchNorm moving averages as the official loop leaves them, without paying for its duplicate forwards.

The official trainers run some training-mode forwards twice on the same batch and weights (Fast-BAT at delta*,
GradAlign on the clean batch), and each forward updates the moving averages r <- m r + (1 - m) s. A forward here
stands for every official forward with the same input; its momentum is chosen so that the sequence of forwards
here leaves exactly the official weights on r and on each forward's batch statistics s.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Sequence

from tf_fastbat.running_averages import moving_average_momentum


def statistics_weights(official: Sequence[str], momentum: float) -> Dict[str, float]:
    """The weight of each input's batch statistics in the moving average after the official forwards."""
    weights: Dict[str, float] = {}
    for position, name in enumerate(official):
        later = len(official) - 1 - position
        weights[name] = weights.get(name, 0.0) + (1.0 - momentum) * momentum ** later
    return weights


def equivalent_momenta(official: Sequence[str], ours: Sequence[str], momentum: float) -> Dict[str, float]:
    """Momenta for our forwards (each input once, in `ours` order) that leave the official moving averages.

    Solved from the last forward back: forward i gets weight (1 - m_i) times the product of the later m_j.
    """
    if len(set(ours)) != len(ours) or not set(official) <= set(ours):
        raise ValueError(f"forwards {list(ours)} must list each of {sorted(set(official))} once")
    weights = statistics_weights(official, momentum)
    momenta: Dict[str, float] = {}
    later_product = 1.0
    for name in reversed(ours):
        momenta[name] = 1.0 - weights.get(name, 0.0) / later_product if later_product > 0 else 1.0
        later_product *= momenta[name]
    return momenta


class OfficialForwards:
    """`with forwards.at(name):` around each of our training-mode forwards, named by its input."""

    def __init__(self, official: Sequence[str], ours: Sequence[str]):
        equivalent_momenta(official, ours, 0.9)  # refuses an inconsistent pair at construction
        self.official, self.ours = tuple(official), tuple(ours)

    @contextlib.contextmanager
    def at(self, name: str) -> Iterator[None]:
        if name not in self.ours:
            raise ValueError(f"forward {name!r} is not one of {list(self.ours)}")
        with moving_average_momentum(lambda m: equivalent_momenta(self.official, self.ours, m)[name]):
            yield
