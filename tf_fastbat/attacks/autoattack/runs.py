"""Runs of a per-point attack over groups (target classes, restarts), batched across groups.

The reference runs group after group, each on the points no earlier group broke. A run's outcome depends only
on its point, its group and its noise, so the runs can share one batch: rows (group, point) are taken in the
reference's order (group-major), at most `max_rows` at a time, and rows of points broken by an earlier batch
are dropped before they run, as the reference never runs them. A point's adversarial example is that of its
first breaking row in this order, the one the reference would keep.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, Optional

import numpy as np

Advance = Optional[Callable[[int], None]]  # called with the number of rows just finished or dropped


@dataclasses.dataclass(frozen=True)
class Rows:
    """One batch of runs: per row, its order in the schedule, its group and its point (index among the inputs)."""

    order: np.ndarray
    group: np.ndarray
    point: np.ndarray

    def __len__(self) -> int:
        return len(self.order)

    def take(self, index: np.ndarray) -> "Rows":
        """The rows at `index` (positions in this batch)."""
        return Rows(order=self.order[index], group=self.group[index], point=self.point[index])


def batch_size(n_rows: int, max_rows: int) -> int:
    """Rows per batch: the fewest batches of at most `max_rows`, balanced."""
    return math.ceil(n_rows / max(1, math.ceil(n_rows / max_rows))) if n_rows else 0


def schedule(n_points: int, n_groups: int, max_rows: int, broken: np.ndarray,
             dropped: Advance = None) -> Iterator[Rows]:
    """Batches of (group, point) rows in group-major order, skipping points `broken` (updated by the caller
    between batches) before each batch is formed; `dropped(n)` counts the rows skipped."""
    order = np.arange(n_points * n_groups)
    size = batch_size(len(order), max_rows)
    start = 0
    while start < len(order):
        rest = order[start:]
        alive = rest[~broken[rest % n_points]]
        taken = alive[:size]
        end = int(taken[-1]) + 1 if len(taken) else len(order)
        if dropped is not None and end - start > len(taken):
            dropped(end - start - len(taken))
        start = end
        if len(taken):
            yield Rows(order=taken, group=taken // n_points, point=taken % n_points)


def first_success(rows: Rows, fooled: np.ndarray) -> np.ndarray:
    """Indices (into `rows`) of each newly broken point's first breaking row, in schedule order."""
    hits = np.flatnonzero(fooled)
    _, first = np.unique(rows.point[hits], return_index=True)
    return hits[first]


def ran(rows: Rows, fooled: np.ndarray) -> np.ndarray:
    """Rows the reference would have run: those not preceded, in this batch, by a row breaking their point (so
    also the rows still needed once `fooled` marks the rows broken so far)."""
    first_break = np.full(int(rows.point.max()) + 1 if len(rows) else 0, np.iinfo(np.int64).max)
    for i in first_success(rows, fooled):
        first_break[rows.point[i]] = rows.order[i]
    return rows.order <= first_break[rows.point]
