"""Bounded retries with exponential backoff for calls to a model server: a transient failure (refused connection,
timeout, HTTP 5xx, gRPC UNAVAILABLE) is tried again a few times, then given up with what failed last."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class Transient(Exception):
    """A failure worth another attempt; the message says what failed."""


class GaveUp(Exception):
    """Every attempt failed transiently: the last failure, how many attempts and how long they took."""

    def __init__(self, reason: str, attempts: int, seconds: float):
        super().__init__(f"{reason} ({attempts} attempt{'s' if attempts > 1 else ''} over {seconds:.1f} s)")
        self.reason, self.attempts, self.seconds = reason, attempts, seconds


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first, waiting `backoff` s, then twice as long each time (at most
    `max_backoff`)."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {self.backoff}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry)."""
        return min(self.max_backoff, self.backoff * 2 ** retry)


def call(attempt: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> T:
    """attempt() until it returns or raises anything but Transient, at most policy.retries + 1 times; GaveUp after."""
    start, retry = clock(), 0
    while True:
        try:
            return attempt()
        except Transient as failure:
            if retry >= policy.retries:
                raise GaveUp(str(failure), retry + 1, clock() - start) from None
        sleep(policy.delay(retry))
        retry += 1
