"""eps and attack step sizes as flags: typed in 1/255 units like the official code (--eps=8 means 8/255), parsed
into fractions of the [0, 1] pixel range, which is what the library takes. The unit conversion lives here only."""

from __future__ import annotations

from typing import List, Optional, Sequence

from absl import flags

from tf_fastbat.errors import UsageError
from tf_fastbat.units import UNIT


def to_fraction(flag: str, value: Optional[float], *, maximum: Optional[float] = None,
                noun: str = "eps and step sizes are") -> Optional[float]:
    """A 1/255-unit value as a fraction of 1; negative, above `maximum`, or in (0, 1) (almost surely already a
    fraction): refused with a message naming `flag` as a parameter ("eps=0.03: ..."; the command-line runner
    words it as the flag)."""
    if value is None:
        return None
    if value < 0 or (maximum is not None and value > maximum):
        limits = ">= 0" if maximum is None else f"in [0, {maximum:g}]"
        raise UsageError(f"{flag}={value:g}: must be {limits} (1/255 units)")
    if 0 < value < 1:
        raise UsageError(f"{flag}={value:g}: {noun} in 1/255 units (8 means 8/255); "
                         f"{value:g} looks like a fraction, did you mean {value * UNIT:g}?")
    return value / UNIT


def in_units(fraction: float) -> float:
    """A fraction of 1 in 1/255 units, as reports and config.json write it (8/255 -> 8.0)."""
    return round(fraction * UNIT, 6)


def fractions(flag: str, values: Sequence[str], noun: str = "eps is") -> List[float]:
    """A comma list of 1/255-unit values as fractions, duplicates dropped, each checked by `to_fraction`."""
    try:
        parsed = [float(v) for v in values]
    except ValueError as error:
        raise UsageError(f"{flag}={','.join(values)}: not a list of numbers (1/255 units, e.g. "
                         "4,8)") from error
    return list(dict.fromkeys(to_fraction(flag, value, maximum=UNIT, noun=noun) for value in parsed))


class _EpsParser(flags.ArgumentParser):
    """One value in 1/255 units -> a fraction."""

    syntactic_help = "a number in 1/255 units"

    def __init__(self, flag: str, maximum: Optional[float], noun: str):
        self.flag, self.maximum, self.noun = flag, maximum, noun

    def parse(self, argument):
        if argument is None:
            return None
        try:
            value = float(argument)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.flag}={argument}: not a number (1/255 units)") from error
        try:
            return to_fraction(self.flag, value, maximum=self.maximum, noun=self.noun)
        except UsageError as error:
            raise ValueError(str(error)) from error

    def flag_type(self) -> str:
        return "eps"


class _EpsListParser(flags.ArgumentParser):
    """A comma list in 1/255 units -> fractions."""

    syntactic_help = "a comma list of numbers in 1/255 units"

    def __init__(self, flag: str, noun: str):
        self.flag, self.noun = flag, noun

    def parse(self, argument):
        if isinstance(argument, list):
            return argument
        values = [v.strip() for v in str(argument).split(",") if v.strip()]
        try:
            return fractions(self.flag, values, self.noun)
        except UsageError as error:
            raise ValueError(str(error)) from error

    def flag_type(self) -> str:
        return "eps list"


class _InUnits(flags.ArgumentSerializer):
    """Writes a fraction back in 1/255 units (flagfiles, --helpfull)."""

    def serialize(self, value) -> str:
        if isinstance(value, list):
            return ",".join(f"{in_units(v):g}" for v in value)
        return "" if value is None else f"{in_units(value):g}"


def as_typed(flag: flags.Flag):
    """A flag's value as a record writes it: eps flags back in 1/255 units (lists too), others as they are."""
    value = flag.value
    if value is None or not isinstance(flag.serializer, _InUnits):
        return value
    return [in_units(v) for v in value] if isinstance(value, list) else in_units(value)


def DEFINE_eps(name: str, default: Optional[float], help: str, *, maximum: Optional[float] = UNIT,  # noqa: N802
               noun: str = "eps and step sizes are") -> None:
    """A flag typed in 1/255 units (`default` too) whose value is a fraction of 1."""
    flags.DEFINE(_EpsParser(name, maximum, noun), name, None if default is None else str(default), help,
                 serializer=_InUnits())


def DEFINE_eps_list(name: str, default: Sequence[float], help: str, *, noun: str = "eps is") -> None:  # noqa: N802
    """A comma-list flag typed in 1/255 units whose value is a list of fractions."""
    flags.DEFINE(_EpsListParser(name, noun), name, ",".join(f"{v:g}" for v in default), help, serializer=_InUnits())


def DEFINE_field(name: str, spec, default, help: str, *, enum: bool = True) -> None:  # noqa: N802
    """The flag of one dataclass field (tf_fastbat.fields.Spec): pixel fractions typed in 1/255 units, bool, int,
    float, str (an enum for a field with choices, unless `enum=False`: the choices are then checked by the field's
    rule) or a tuple of numbers as a comma list."""
    from tf_fastbat import fields

    if spec.unit == fields.PIXEL:
        DEFINE_eps(name, None if default is None else in_units(default), help, maximum=spec.cli_maximum)
    elif spec.type is bool:
        flags.DEFINE_boolean(name, default, help)
    elif spec.type is int:
        flags.DEFINE_integer(name, default, help)
    elif spec.type is float:
        flags.DEFINE_float(name, default, help)
    elif spec.type is str and spec.choices and enum:
        flags.DEFINE_enum(name, default, list(spec.choices), help)
    elif spec.type is str:
        flags.DEFINE_string(name, default, help)
    elif spec.type is tuple:
        flags.DEFINE_list(name, None if default is None else [f"{v:g}" for v in default], help)
    else:
        raise TypeError(f"{name}: no flag type for {spec.type!r} (bool, int, float, str or tuple)")
