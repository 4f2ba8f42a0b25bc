"""The one error type for input a user can fix: a bad setting, file or dataset. Its message is one line that names
the parameter ("eps=8: must be ...") or the file, never a command-line flag; the command-line runner
(tf_fastbat.cli) words a leading parameter as its flag ("--eps=8: must be ..."), prints the line and exits with
status 2."""

from __future__ import annotations


class UsageError(ValueError):
    """Input that cannot work, reported before (or instead of) any work; the message names the parameter or file."""


def one_line(message: str) -> str:
    """The first line of a message, for errors whose cause (a library's exception) spans several."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""
