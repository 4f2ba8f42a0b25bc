"""The one runner of the command-line tools: defines the tool's flags by group, parses them, and turns every user
error (a flag that fails its check, a UsageError from the library) into one line, `<tool>: error: <message>`, and
exit status 2, before any work where the input allows it. `--help` prints the tool's own flags by group (absl's
`--helpfull` still lists every flag in the process); an old flag name still works for a release and prints one
deprecation line. Process-wide settings (oneDNN) are made here, at the edge."""

from __future__ import annotations

import re
import sys
import textwrap
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app, flags

from tf_fastbat.errors import UsageError, one_line
from tf_fastbat.runtime import default_cpu_kernels

_PARAMETER = r"([a-z][a-z0-9_]*)(?==| is required)"  # a library message's leading parameter: "eps=8: ..."
_LEADING_PARAMETER = re.compile(f"^{_PARAMETER}")
# absl's "flag --eps=0.03: " before a validator's or a flag parser's message (which names the flag or parameter)
_ABSL_PREFIX = re.compile(f"^flags? [^:]*: (?=--|{_PARAMETER})")
HELP_ARGUMENTS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
WIDTH = 100

Group = Tuple[str, Callable[[], None]]  # (title, a function that defines the group's flags)
_GROUPS: List[Tuple[str, List[str]]] = []  # the running tool's groups: (title, flag names), in definition order
_RENAMED_FORMS: List[Tuple[str, str]] = []  # (old form, new form) of deprecated names, for --help


def fail(tool: str, message: str) -> None:
    """Print the one line and exit with status 2."""
    sys.stderr.write(f"{tool}: error: {one_line(message)}\n")
    sys.exit(2)


def flag_form(message: str) -> str:
    """A library message in the command line's words: the library names parameters ("eps=8: must be ..."); when
    the leading one is a flag of the running tool (not a deprecated name, which may mean something else) it
    becomes the flag ("--eps=8: must be ..."). Any other message is returned as it is."""
    match = _LEADING_PARAMETER.match(message)
    if match and match.group(1) in flags.FLAGS and not _is_renamed(flags.FLAGS[match.group(1)]):
        return f"--{message}"
    return message


def flag_error_message(error: flags.Error) -> str:
    """A flag error as the validator worded it (absl prefixes the flag and its value, which the message names)."""
    return flag_form(_ABSL_PREFIX.sub("", one_line(error)))


def define_groups(groups: Sequence[Group]) -> None:
    """Define each group's flags, remembering which flags each group defined (for --help and `tool_flags`)."""
    _GROUPS.clear()
    _RENAMED_FORMS.clear()
    for title, define in groups:
        before = set(flags.FLAGS)
        define()
        _GROUPS.append((title, [name for name in flags.FLAGS if name not in before]))


def tool_flags() -> List[str]:
    """The running tool's own flags in definition order, deprecated names left out."""
    return [name for _, names in _GROUPS for name in names if not _is_renamed(flags.FLAGS[name])]


class _Renamed(flags.Flag):
    """An old flag name: its value goes to the new flag (as absl's DEFINE_alias), and using it prints one
    deprecation line."""

    def __init__(self, old: str, target: flags.Flag):
        self._target = target
        super().__init__(target.parser, target.serializer, old, target.default, f"Deprecated: use --{target.name}.",
                         boolean=target.boolean)

    def parse(self, argument) -> None:
        self._target.parse(argument)
        self.present += 1

    def _parse_from_default(self, value):
        return value

    @property
    def value(self):
        return self._target.value

    @value.setter
    def value(self, value) -> None:
        self._target.value = value

    def deprecation(self) -> Optional[str]:
        if not self.present:
            return None
        return f"--{self.name} is deprecated and goes in the next release; use --{self._target.name}"


def _is_renamed(flag: flags.Flag) -> bool:
    return isinstance(flag, _Renamed)


def renamed(old: str, new: str) -> None:
    """Keep the old name `old` of the flag `new` working for a release (with a deprecation line when used)."""
    flags.DEFINE_flag(_Renamed(old, flags.FLAGS[new]))
    note_renamed(f"--{old}", f"--{new}")


def note_renamed(old_form: str, new_form: str) -> None:
    """List a deprecated form under --help (`renamed` does this itself)."""
    _RENAMED_FORMS.append((old_form, new_form))


def announce_deprecations(tool: str) -> None:
    """One line on stderr per deprecated name the command used (a flag's `deprecation()` returns it)."""
    seen = set()
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        note = getattr(flag, "deprecation", None)
        if id(flag) in seen or not callable(note):
            continue
        seen.add(id(flag))
        message = note()
        if message:
            sys.stderr.write(f"{tool}: {message}\n")


def _default_shown(flag: flags.Flag) -> str:
    if flag.default is None:
        return "unset"
    if flag.boolean:
        return "true" if flag.default else "false"
    shown = flag.serializer.serialize(flag.default) if flag.serializer else str(flag.default)
    return shown if shown != "" else '""'


def _flag_help(flag: flags.Flag) -> List[str]:
    choices = getattr(flag.parser, "enum_values", None)
    head = f"  --{flag.name}" + (f" ({'|'.join(choices)})" if choices else "") + f"  [default: {_default_shown(flag)}]"
    text = re.sub(r"^<[^>]*>: ", "", flag.help or "")  # absl puts an enum's choices before its help; shown above
    body = textwrap.wrap(text, WIDTH - 6)
    return [head] + [f"      {line}" for line in body]


def help_text(tool: str, description: str = "", positional: Optional[str] = None) -> str:
    """The tool's flags by group, each with its default and help; then the deprecated names."""
    lines = [f"usage: {tool} [flags]" + (f" [{positional} ...]" if positional else "")]
    if description:
        lines += ["", *textwrap.wrap(description, WIDTH)]
    for title, names in _GROUPS:
        current = [flags.FLAGS[name] for name in names if not _is_renamed(flags.FLAGS[name])]
        if current:
            lines += ["", f"{title}:"]
            for flag in current:
                lines += _flag_help(flag)
    if _RENAMED_FORMS:
        lines += ["", "Deprecated names (still accepted for one release, with a note on stderr):"]
        lines += [f"  {old} -> {new}" for old, new in _RENAMED_FORMS]
    lines += ["", "Also: --flagfile=FILE reads flags from a file; --helpfull lists every flag in the process."]
    return "\n".join(lines)


def _description(main: Callable) -> str:
    doc = (sys.modules.get(main.__module__).__doc__ or "") if main.__module__ in sys.modules else ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def run(tool: str, define_flags: Callable[[], None], main: Callable[[List[str]], object],
        argv: Optional[List[str]] = None, positional: Optional[str] = None) -> None:
    """Run `main(argv)` as the command `tool` (e.g. "tf_fastbat.train") with the flags `define_flags` defines (by
    group when it calls `define_groups`). `positional`: the name of the positional arguments the tool takes (none:
    any is refused). main's return value is the exit status."""
    default_cpu_kernels()
    before = set(flags.FLAGS)
    _GROUPS.clear()
    _RENAMED_FORMS.clear()
    define_flags()
    if not _GROUPS:
        _GROUPS.append(("Flags", [name for name in flags.FLAGS if name not in before]))
    arguments = list(sys.argv if argv is None else argv)
    if any(argument in HELP_ARGUMENTS for argument in arguments[1:]):
        print(help_text(tool, _description(main), positional))
        sys.exit(0)

    def parse(arguments: List[str]) -> List[str]:
        try:
            remaining = flags.FLAGS(arguments)
        except flags.Error as error:
            fail(tool, flag_error_message(error))
        except UsageError as error:  # a library check a multi-flag validator ran
            fail(tool, flag_form(one_line(error)))
        announce_deprecations(tool)
        return remaining

    def guarded(arguments: List[str]):
        if len(arguments) > 1 and not positional:
            fail(tool, f"unexpected arguments: {' '.join(arguments[1:])}")
        try:
            return main(arguments)
        except (UsageError, FileNotFoundError) as error:
            fail(tool, flag_form(one_line(error)))

    app.run(guarded, argv=arguments, flags_parser=parse)


def validator(flag: str, check: Callable, message: Optional[Callable] = None) -> None:
    """Register a check of --`flag`'s value, run when the flags are parsed: `check(value)` returns False (the
    message is then `message(value)`) or raises UsageError with its own one-line message."""
    def validate(value) -> bool:
        try:
            ok = check(value)
        except UsageError as error:  # a library check: its message names the parameter
            raise flags.ValidationError(flag_form(one_line(error))) from error
        if not ok:
            raise flags.ValidationError(flag_form(message(value)))
        return True

    flags.register_validator(flag, validate)
