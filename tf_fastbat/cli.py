"""The one runner of the command-line tools: defines the tool's flags, parses them, and turns every user error (a
flag that fails its check, a UsageError from the library) into one line, `<tool>: error: <message>`, and exit
status 2, before any work where the input allows it. Process-wide settings (oneDNN) are made here, at the edge."""

from __future__ import annotations

import re
import sys
from typing import Callable, List, Optional

from absl import app, flags

from tf_fastbat.errors import UsageError, one_line
from tf_fastbat.runtime import prefer_onednn

_ABSL_PREFIX = re.compile(r"^flags? [^:]*: (?=--)")  # absl's "flag --eps=0.03: " before a validator's message


def fail(tool: str, message: str) -> None:
    """Print the one line and exit with status 2."""
    sys.stderr.write(f"{tool}: error: {one_line(message)}\n")
    sys.exit(2)


def flag_error_message(error: flags.Error) -> str:
    """A flag error as the validator worded it (absl prefixes the flag and its value, which the message names)."""
    return _ABSL_PREFIX.sub("", one_line(error))


def run(tool: str, define_flags: Callable[[], None], main: Callable[[List[str]], None],
        argv: Optional[List[str]] = None) -> None:
    """Run `main(argv)` as the command `tool` (e.g. "tf_fastbat.train") with the flags `define_flags` defines."""
    prefer_onednn()
    define_flags()

    def parse(arguments: List[str]) -> List[str]:
        try:
            return flags.FLAGS(arguments)
        except flags.Error as error:
            fail(tool, flag_error_message(error))

    def guarded(arguments: List[str]) -> None:
        if len(arguments) > 1:
            fail(tool, f"unexpected arguments: {' '.join(arguments[1:])}")
        try:
            main(arguments)
        except (UsageError, FileNotFoundError) as error:
            fail(tool, str(error))

    app.run(guarded, argv=argv, flags_parser=parse)


def validator(flag: str, check: Callable, message: Optional[Callable] = None) -> None:
    """Register a check of --`flag`'s value, run when the flags are parsed: `check(value)` returns False (the
    message is then `message(value)`) or raises UsageError with its own one-line message."""
    def validate(value) -> bool:
        try:
            ok = check(value)
        except UsageError as error:
            raise flags.ValidationError(str(error)) from error
        if not ok:
            raise flags.ValidationError(message(value))
        return True

    flags.register_validator(flag, validate)
