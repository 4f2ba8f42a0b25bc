"""Progress of long measurements as text: one line per stage with the work done, the time spent and an ETA.

`ProgressBars(title)` is a `progress(stage, done, total)` callback (tf_fastbat.attacks.base.Progress). Its clock
starts when it is made, which is when the measurement starts, so that the time printed is the time spent even when
the first report comes at the end. No TensorFlow, no Keras.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, TextIO

Clock = Callable[[], float]
LOG_INTERVAL = 30.0  # seconds between two lines of one stage when the output is a file, not a terminal


def duration(seconds: float) -> str:
    """Seconds as a short human duration: "7.5 s", "2 min 05 s", "1 h 02 min"."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def eta(done: int, total: int, since_done: int, since_seconds: float) -> float:
    """Seconds left at the rate since a reference report (work since then over seconds since then); inf if unknown."""
    rate = (done - since_done) / since_seconds if since_seconds > 0 else 0.0
    return (total - done) / rate if rate > 0 else math.inf


class ProgressBars:
    """progress(stage, done, total) as a title line per stage and a progress line under it.

    On a terminal the line is redrawn after every call; in a file it is written at most every `interval` seconds,
    once the ETA has a steady rate (or `interval` into the stage), and when the stage completes (done >= total),
    which always writes "done/total (100%) in <time spent>". A stage starts at the previous call (or at
    construction), so that time before a stage's first report counts as its own. The ETA runs at the rate since the
    stage's first report of work once as much work again is done, so that the first block's tracing does not
    inflate it.
    """

    def __init__(self, title: str, stream: Optional[TextIO] = None, clock: Clock = time.perf_counter,
                 interval: float = LOG_INTERVAL, dynamic: Optional[bool] = None):
        self.title, self._stream, self.clock, self.interval = title, stream, clock, interval
        self.dynamic = dynamic
        self.start = self._last_call = clock()
        self.stage: Optional[str] = None
        self._stage_start, self._stage_done, self._written, self._open = self.start, 0, -math.inf, False
        self._first: Optional[tuple] = None  # (time, done) of the stage's first report of work
        self._finished: Optional[str] = None  # the stage that last completed: its repeated final reports are quiet

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout  # looked up when written: redirected or captured stdout is honoured

    def _is_dynamic(self) -> bool:
        if self.dynamic is not None:
            return self.dynamic
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        """Ends a line left open on a terminal (a stage that stopped before its total)."""
        if self._open:
            self._write("\n")
            self._open = False

    def line(self, done: int, total: int, now: float) -> str:
        """The progress line of the current stage at time `now`."""
        spent = now - self._stage_start
        percent = 100.0 * done / total if total else 100.0
        if done >= total:
            return f"  {self.stage}: {done}/{total} (100%) in {duration(spent)}"
        since_time, since_done = self._first if self._steady(done, now) else (self._stage_start, self._stage_done)
        left = eta(done, total, since_done, now - since_time)
        return f"  {self.stage}: {done}/{total} ({percent:.0f}%) - {duration(spent)} spent - ETA {duration(left)}"

    def _steady(self, done: int, now: float) -> bool:
        """Whether the work since the stage's first report of work (whose time includes tracing) is at least that
        report's own, so that the rate since then is a steady rate."""
        if self._first is None or now <= self._first[0]:
            return False
        return done - self._first[1] >= max(self._first[1] - self._stage_done, 1)

    def _due(self, done: int, now: float) -> bool:
        """Whether a log file gets an unfinished stage's line now: work done, `interval` since the last line, and a
        steady rate for the ETA (or `interval` into the stage)."""
        return done > self._stage_done and now - self._written >= self.interval and (
            self._steady(done, now) or now - self._stage_start >= self.interval)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage == self._finished and done >= total:
            return
        if stage != self.stage:
            self.close()
            self.stage, self._stage_start, self._stage_done, self._written = stage, self._last_call, done, -math.inf
            self._first = None
            self._write(f"{self.title}\n" if stage in self.title else f"{self.title}: {stage}\n")
        self._last_call = now
        finished = done >= total
        text = self.line(done, total, now)
        due = self._due(done, now)
        if self._first is None and done > self._stage_done:
            self._first = (now, done)
        if self._is_dynamic():
            self._write("\r" + text + ("\n" if finished else ""))
            self._open = not finished
        elif finished or due:
            self._write(text + "\n")
            self._written = now
        self._finished = stage if finished else None
        if finished:
            self.stage = None  # the next call, even of the same name, is a new stage


__all__ = ["ProgressBars", "duration", "eta"]
