"""An attack's progress as `progress(attack, done, total)` calls, in point-iterations (APGD, FAB) or
point-queries (Square); a point broken early counts its remaining work as done, so the rate gives an ETA."""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, int], None]  # (attack, done, total), e.g. ("apgd-t", 12000, 27900)


class AttackProgress:
    """Accumulates one attack's finished work and reports it: once at the start (done = 0, so that timers start
    with the attack), after every block of iterations, and once at the end (done = total)."""

    def __init__(self, progress: Optional[ProgressFn], attack: str, total: int):
        self.progress, self.attack, self.total, self.done = progress, attack, max(int(total), 1), 0
        if progress is not None:
            progress(attack, 0, self.total)

    def __call__(self, units: int) -> None:
        """`units` more point-iterations are finished (or no longer needed)."""
        if units <= 0:
            return
        self.done = min(self.done + int(units), self.total)
        if self.progress is not None and self.done < self.total:
            self.progress(self.attack, self.done, self.total)

    def finish(self) -> None:
        """The attack is over: report it complete, exactly once."""
        self.done = self.total
        if self.progress is not None:
            self.progress(self.attack, self.total, self.total)
