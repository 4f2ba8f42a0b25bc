"""The evaluation tool's per-attack flags, made from each registered attack's `Options` dataclass
(tf_fastbat.attacks.base, fields declared with tf_fastbat.fields.hparam): one flag per option, named by the field's
`flag` (else `<attack>_<field>`), with its help, type, default and checks; `options_from` reads them back as
`evaluation.Settings.options`. Nothing here names an attack.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple

from absl import flags

from tf_fastbat import cli, fields, flagtypes
from tf_fastbat.errors import UsageError


class OptionFlag(NamedTuple):
    attack: str
    field: dataclasses.Field
    name: str  # the flag

    @property
    def spec(self) -> fields.Spec:
        return fields.spec_of(self.field)


def option_flags() -> List[OptionFlag]:
    """Every registered attack's options as flags, in registry order; two options may not share a flag name."""
    from tf_fastbat import attacks
    from tf_fastbat.attacks.base import attack_class

    found: Dict[str, OptionFlag] = {}
    for attack in attacks.names():
        for field in dataclasses.fields(attack_class(attack).Options):
            if not field.init:
                continue
            name = fields.spec_of(field).flag or f"{attack}_{field.name}"
            if name in found:
                raise TypeError(f"--{name}: an option of both {found[name].attack} and {attack}; give one of them "
                                "hparam(flag=<another name>)")
            found[name] = OptionFlag(attack, field, name)
    return list(found.values())


def _check(option: OptionFlag, value: Any) -> bool:
    """The attack's own check of one option value (attacks.base.options), its refusal under the flag's name."""
    from tf_fastbat.attacks.base import options

    try:
        options(option.attack, {option.field.name: value})
    except fields.HParamError as error:
        raise UsageError(error.for_flag(option.name)) from None
    return True


def define() -> None:
    """Define every option flag with its check (run when the flags are parsed)."""
    for option in option_flags():
        choices = f" One of {', '.join(option.spec.choices)}." if option.spec.choices else ""
        text = f"{option.spec.help}{choices} (--attacks={option.attack})"
        flagtypes.DEFINE_field(option.name, option.spec, option.field.default, text, enum=False)
        cli.validator(option.name, lambda v, o=option: _check(o, v))


def options_from(values) -> Dict[str, Dict[str, Any]]:
    """Each attack's options from the parsed flags (`values[flag].value`), for evaluation.Settings(options=...)."""
    chosen: Dict[str, Dict[str, Any]] = {}
    for option in option_flags():
        value = values[option.name].value  # pixel options are fractions already (flagtypes.DEFINE_eps)
        if option.spec.type is tuple and value is not None:
            value = tuple(float(v) for v in value)
        chosen.setdefault(option.attack, {})[option.field.name] = value
    return chosen
