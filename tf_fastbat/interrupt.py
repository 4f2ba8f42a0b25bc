"""SIGTERM and SIGINT during training: noted, so that the run saves a backup at the next step boundary and stops."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first SIGTERM/SIGINT received while installed; a second one gets the default action (stop now)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Handlers for SIGTERM and SIGINT inside the block, the previous ones after it (only the main thread can
        install handlers; elsewhere the block runs without them)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        try:
            yield self
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            self._previous = {}


def name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """128 + the signal number, the shells' convention for a process ended by that signal (143 for SIGTERM)."""
    return 128 + int(signum)
