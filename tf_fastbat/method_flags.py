"""The training tool's method flags, made from the methods' dataclasses (tf_fastbat.fields): one flag per
distinct field across the registered methods (a field several share, like eps or attack_lr, is one flag), with its
help, type, units and default; `hparams_from` reads the chosen method's fields back from the flag values (a field's
`from_flag` rule where the tool's own flags decide: NuAT's ramp from --epochs, the seeds from --seed), and the
method checks them itself: a value it refuses is reported under its flag's name. Nothing here names a method.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from absl import flags

from tf_fastbat import cli, flagtypes
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS


@dataclasses.dataclass
class MethodFlag:
    """One method flag: the fields (of one or more methods) it sets."""

    name: str
    spec: Any  # fields.Spec of its first declaration
    owners: List[Tuple[str, dataclasses.Field]]  # (method name, field)

    @property
    def methods(self) -> List[str]:
        return [method for method, _ in self.owners]

    def default(self) -> Any:
        """The owners' common default; None when they differ or when another flag decides it (from_flag)."""
        defaults = {repr(field.default) for _, field in self.owners}
        if self.spec.from_flag or len(defaults) != 1:
            return None
        return self.owners[0][1].default


def all_flags() -> List[MethodFlag]:
    """One flag per distinct flag name over the registered methods' fields that have a flag of their own."""
    from tf_fastbat import methods
    from tf_fastbat import fields

    by_name: Dict[str, MethodFlag] = {}
    for method_name, cls in methods.REGISTRY.items():
        for field in dataclasses.fields(cls):
            spec = fields.spec_of(field)
            if not field.init or not spec.own_flag:
                continue
            name = spec.flag or field.name
            if spec.type is None:
                raise TypeError(f"{cls.__name__}.{field.name}: a None default needs hparam(type=...)")
            entry = by_name.setdefault(name, MethodFlag(name, spec, []))
            first_method, first = entry.owners[0] if entry.owners else (method_name, field)
            if (spec.type, spec.unit) != (entry.spec.type, entry.spec.unit):
                raise TypeError(f"--{name}: {first_method}.{first.name} and {method_name}.{field.name} differ in "
                                f"type or unit; give one of them hparam(flag=<a prefixed name>)")
            entry.owners.append((method_name, field))
    return list(by_name.values())


def names() -> List[str]:
    """--method, the method flags and the tool's flags some field takes its value from: what `hparams_from` reads."""
    return ["method", *(flag.name for flag in all_flags()), *_from_flags()]


def _from_flags() -> List[str]:
    """The tool's flags some method field takes its value from (--epochs, --seed)."""
    from tf_fastbat import methods
    from tf_fastbat import fields

    taken = [fields.spec_of(f).from_flag.flag for cls in methods.REGISTRY.values() for f in dataclasses.fields(cls)
             if fields.spec_of(f).from_flag]
    return list(dict.fromkeys(taken))


def _method_flag_help(flag: MethodFlag) -> str:
    from tf_fastbat import methods
    from tf_fastbat import fields

    spec, text = flag.spec, flag.spec.help
    if spec.unit == fields.PIXEL:
        text += " In 1/255 units (8 means 8/255)."
    notes = [(method, fields.spec_of(field).default_note) for method, field in flag.owners
             if fields.spec_of(field).default_note]
    if len(flag.owners) == 1 and notes:
        text += f" Default: {notes[0][1]}."
    elif notes:
        text += " Default per method: " + "; ".join(f"{method}: {note}" for method, note in notes) + "."
    if spec.from_flag:
        text += f" Default: {spec.from_flag.note or '--' + spec.from_flag.flag}."
    if 1 < len(flag.owners) < len(methods.REGISTRY):
        text += f" Methods: {', '.join(flag.methods)}."
    return text


def _define_method_flag(flag: MethodFlag) -> None:
    flagtypes.DEFINE_field(flag.name, flag.spec, flag.default(), _method_flag_help(flag))


def groups() -> List[cli.Group]:
    """("Method", --method and the flags several methods share), then one group per method with flags of its own."""
    from tf_fastbat import methods

    generated = all_flags()
    shared = [flag for flag in generated if len(flag.owners) > 1]

    def define_shared() -> None:
        flags.DEFINE_enum("method", "fast_bat", list(methods.NAMES), "Training method.")
        for flag in shared:
            _define_method_flag(flag)

    def define_own(method: str):
        return lambda: [_define_method_flag(flag) for flag in generated if flag.methods == [method]]

    def define_check() -> None:
        flags.register_multi_flags_validator(names(), _check_method)

    own = [(f"Method {name}", define_own(name)) for name in methods.NAMES
           if any(flag.methods == [name] for flag in generated)]
    return [("Method (flags several methods share)", define_shared), *own, ("", define_check)]


def _check_method(values: Mapping[str, Any]) -> bool:
    try:
        build_method(values)
    except UsageError as error:
        raise flags.ValidationError(str(error)) from error
    return True


def hparams_from(values: Mapping[str, Any], method: str) -> Dict[str, Any]:
    """The hyperparameters of `method` from flag values (flag name -> value): its fields with a flag, each from its
    flag (or from_flag's rule when unset), and those taken from another flag (--epochs, --seed)."""
    from tf_fastbat import methods
    from tf_fastbat import fields

    hparams = {}
    for field in dataclasses.fields(methods.REGISTRY[method]):
        spec = fields.spec_of(field)
        if not field.init or (not spec.own_flag and not spec.from_flag):
            continue
        if spec.own_flag:
            name = spec.flag or field.name
            value = values[name]
            if value is None and spec.from_flag:
                value = spec.from_flag.rule(values[spec.from_flag.flag])
            elif value is None and field.default is not None:
                continue  # the flag is unset and the method has its own default (owners' defaults differ)
            elif value is not None and spec.type is tuple:
                value = _numbers(name, value)
        else:
            value = spec.from_flag.rule(values[spec.from_flag.flag])
        hparams[field.name] = value
    return hparams


def _numbers(flag: str, values: Sequence[str]) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise UsageError(f"--{flag}={','.join(values)}: not a list of numbers") from None


def build_method(values: Mapping[str, Any]):
    """The method the flag values choose, checked by the method itself; a refused value as one line naming its
    flag ("--lmbda=-1: must be >= 0"). A value given for a flag the method does not take is refused when the
    flag's field says so (attack_lr), else ignored (a base flagfile sets flags for every method)."""
    from tf_fastbat import methods
    from tf_fastbat import fields

    method = values["method"]
    for flag in all_flags():
        if flag.spec.refused_elsewhere and method not in flag.methods and values.get(flag.name) != flag.default():
            shown = fields.shown_on_command_line(values[flag.name], flag.spec.unit)
            raise UsageError(f"--{flag.name}={shown}: --method={method} does not take it (a hyperparameter of "
                             f"{', '.join(flag.methods)})")
    try:
        return methods.build(method, **hparams_from(values, method))
    except fields.HParamError as error:
        by_field = {f.name: f for f in dataclasses.fields(methods.REGISTRY[method])}
        flag = fields.flag_name(by_field[error.name]) if error.name in by_field else None
        raise UsageError(error.for_flag(flag) if flag else str(error)) from None
