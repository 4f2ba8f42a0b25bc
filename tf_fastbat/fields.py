"""Settings written once, as the fields of a dataclass: a training method's hyperparameters (tf_fastbat.methods)
and an evaluation attack's options (tf_fastbat.attacks). Each field's metadata (`hparam`) holds its help, its
command-line name, its unit and its checks. From it the library checks values itself (`validate`, one line naming
the parameter) and the tools make their flags, their help and parsing (method_flags, attack_flags), the chosen
method's hyperparameters and config.json's keys (tf_fastbat.config).

    @dataclasses.dataclass(frozen=True)
    class Toy(Method):
        strength: float = hparam(0.5, "How hard the toy pushes.", flag="toy_strength", check=at_least(0))

Fields without metadata work too: their flag is the field's name, its type the default's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

from tf_fastbat import units
from tf_fastbat.errors import UsageError

PIXEL = "pixel"  # a fraction of the [0, 1] pixel range in the library, typed in 1/255 units on the command line
METADATA_KEY = "tf_fastbat"


class HParamError(UsageError):
    """A hyperparameter value the method refuses: "lmbda=-1: must be >= 0". The command-line tools show the same
    problem under the flag's name and units (`for_flag`: "--lmbda=-1: must be >= 0")."""

    def __init__(self, name: str, value: Any, problem: str, unit: Optional[str] = None,
                 flag_problem: Optional[str] = None):
        self.name, self.value, self.problem, self.unit = name, value, problem, unit
        self.flag_problem = flag_problem or problem
        super().__init__(f"{name}={_shown(value)}: {problem}")

    def for_flag(self, flag: str) -> str:
        """The message for a value that came from --`flag` (pixel values back in 1/255 units)."""
        return f"--{flag}={shown_on_command_line(self.value, self.unit)}: {self.flag_problem}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check of one value: `problem(value, method)` is None when the value passes, else what is wrong."""

    problem: Callable[[Any, Any], Optional[str]]
    text: str = ""  # the rule in words, for help ("must be >= 0")
    choices: Optional[Tuple[str, ...]] = None  # a closed set of strings (the tool makes an enum flag)


def at_least(minimum: float) -> Rule:
    return Rule(lambda v, _: None if v >= minimum else f"must be >= {minimum:g}", f">= {minimum:g}")


def above(minimum: float) -> Rule:
    return Rule(lambda v, _: None if v > minimum else f"must be > {minimum:g}", f"> {minimum:g}")


def within(low: float, high: float, *, high_open: bool = False) -> Rule:
    """low <= v <= high (v < high with `high_open`)."""
    interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"

    def problem(value, _):
        inside = low <= value < high if high_open else low <= value <= high
        return None if inside else f"must be in {interval}"

    return Rule(problem, f"in {interval}")


def whole(minimum: int) -> Rule:
    """A whole number >= minimum (an int, or a float with no fraction)."""
    def problem(value, _):
        ok = not isinstance(value, bool) and float(value).is_integer() and value >= minimum
        return None if ok else f"must be a whole number >= {minimum}"

    return Rule(problem, f"a whole number >= {minimum}")


def one_of(choices: Sequence[str]) -> Rule:
    choices = tuple(choices)
    return Rule(lambda v, _: None if v in choices else f"choose one of {', '.join(choices)}",
                f"one of {', '.join(choices)}", choices)


def check(function: Callable[[Any], Optional[str]], text: str = "") -> Rule:
    """A per-field check function: `function(value)` returns None, or what is wrong with the value."""
    return Rule(lambda value, _: function(value), text)


def _smoothing_applies(value, method) -> Optional[str]:
    if value and not method.smoothed_losses:
        return f"{method.name} does not apply label smoothing (its smoothed_losses is empty)"
    return None


SMOOTHING_APPLIES = Rule(_smoothing_applies, "0 for a method without smoothed_losses")


@dataclasses.dataclass(frozen=True)
class FromFlag:
    """A value the training tool takes from another of its flags: `rule(value of --flag)`. For a field with a flag
    of its own, only when that flag is not given; for one without (`own_flag=False`), always."""

    flag: str
    rule: Callable[[Any], Any] = lambda value: value
    note: str = ""  # the rule in words, for help ("--epochs - 10, at least 1")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field's metadata says (see `hparam`)."""

    help: str = ""
    flag: Optional[str] = None
    type: Optional[type] = None
    unit: Optional[str] = None
    rules: Tuple[Rule, ...] = ()
    from_flag: Optional[FromFlag] = None
    own_flag: bool = True
    cli_maximum: Optional[float] = units.UNIT
    default_note: str = ""
    refused_elsewhere: bool = False

    @property
    def choices(self) -> Optional[Tuple[str, ...]]:
        return next((rule.choices for rule in self.rules if rule.choices), None)


def hparam(default: Any, help: str, *, flag: Optional[str] = None, type: Optional[type] = None,  # noqa: A002
           unit: Optional[str] = None, check: Union[Rule, Callable, Sequence[Rule], None] = None,
           from_flag: Optional[FromFlag] = None, own_flag: bool = True,
           cli_maximum: Optional[float] = units.UNIT, default_note: str = "",
           refused_elsewhere: bool = False) -> Any:
    """A dataclass field with its metadata.

    help: one or two sentences for --help. flag: the command-line name when the field's own would clash with
    another method's or the tool's (e.g. "pgi_lamda"); default the field's name. type: bool, int, float, str or
    tuple (of floats), needed when the default is None. unit: PIXEL for fractions of the pixel range (typed in 1/255
    units, at most `cli_maximum` of them). check: a Rule (at_least, above, within, whole, one_of), a function
    value -> problem or None, or a list of them; None values (the official default, chosen later) pass. from_flag:
    the value the tool takes from one of its own flags (--epochs, --seed) when this one is not given, or always
    with own_flag=False. default_note: how a None default is resolved, for help. refused_elsewhere: the tool
    refuses the flag for a method that does not have the field (rather than ignoring it).
    """
    if type is None:
        if default is None:
            raise TypeError(f"hparam({help[:30]!r}...): a None default needs type=")
        type = builtin_type(default)
    rules = () if check is None else tuple(_rule(c) for c in (check if isinstance(check, (list, tuple)) else [check]))
    spec = Spec(help, flag, type, unit, rules, from_flag, own_flag, cli_maximum, default_note, refused_elsewhere)
    return dataclasses.field(default=default, metadata={METADATA_KEY: spec})


ATTACK_LR_HELP = "Step size of the training attack."


def attack_lr(default_note: str, *, check: Union[Rule, Callable, Sequence[Rule], None] = None) -> Any:
    """The `attack_lr` field most attacking methods share (one --attack_lr flag): None means the method's official
    rule, `default_note` in words. A pixel fraction; a method that lists it in `fraction_fields` keeps it in (0, 1],
    others (Fast-BAT's non-sign step) give their own `check`. Methods without it refuse --attack_lr."""
    return hparam(None, ATTACK_LR_HELP, type=float, unit=PIXEL, check=check, cli_maximum=None,
                  default_note=default_note, refused_elsewhere=True)


def builtin_type(value: Any) -> type:
    for kind in (bool, int, float, str, tuple):
        if isinstance(value, kind):
            return kind
    raise TypeError(f"{value!r}: a hyperparameter is a bool, int, float, str or tuple")


def _rule(item: Union[Rule, Callable]) -> Rule:
    return item if isinstance(item, Rule) else check(item)


def spec_of(field: dataclasses.Field) -> Spec:
    """The field's metadata, or what a field without metadata gets (its name as flag, the default's type)."""
    spec = field.metadata.get(METADATA_KEY)
    if spec is not None:
        return spec
    default = None if field.default is dataclasses.MISSING else field.default
    return Spec(help=f"{field.name}.", type=None if default is None else builtin_type(default))


def flag_name(field: dataclasses.Field) -> Optional[str]:
    """The command-line name of the field's value: its own flag, else the flag it is taken from, else None."""
    spec = spec_of(field)
    if spec.own_flag:
        return spec.flag or field.name
    return spec.from_flag.flag if spec.from_flag else None


def validate(method) -> None:
    """Every field of the dataclass `method` (a training method, an attack's options) against its checks (pixel
    fractions: its `fraction_fields`, if any), the first failing one as an HParamError naming the parameter."""
    for field in dataclasses.fields(method):
        value, spec = getattr(method, field.name), spec_of(field)
        if field.name in getattr(method, "fraction_fields", ()):
            _check_fraction(method, field.name, value, spec)
        if value is None:
            continue
        for rule in spec.rules:
            problem = rule.problem(value, method)
            if problem:
                raise HParamError(field.name, value, problem, spec.unit)


def _check_fraction(method, name: str, value: Any, spec: Spec) -> None:
    """units.fraction's check and message in the library; in 1/255 units on the command line."""
    zero_ok = name == "eps" and method.eps_may_be_zero
    try:
        units.fraction(name, value, zero_ok=zero_ok)
    except UsageError as error:
        problem = str(error).split(": ", 1)[1]
        if name == "eps" and value == 0:
            flag_problem = (f"{method.name} attacks in an eps-ball; 0 leaves it nothing to attack "
                            "(train with the standard method)")
        else:
            flag_problem = f"must be in {'[' if zero_ok else '('}0, {units.UNIT:g}] (1/255 units)"
        raise HParamError(name, value, problem, PIXEL, flag_problem) from None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def shown_on_command_line(value: Any, unit: Optional[str] = None) -> str:
    """A value as it is typed: pixel fractions in 1/255 units, sequences as comma lists."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown_on_command_line(v, unit) for v in value)
    if unit == PIXEL and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * units.UNIT:.6g}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
