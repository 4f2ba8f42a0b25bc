"""Library errors name parameters ("eps=8: must be ..."); the command-line runner words a leading parameter that is
one of the running tool's flags as that flag ("--eps=8: must be ..."), wherever a library error becomes the tool's
one line: a flag's check, a flag parser, a check run by a multi-flag validator, and the tool's main."""

import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from conftest import ROOT
from tf_fastbat import cli


@pytest.fixture
def defined(monkeypatch):
    """flags.FLAGS as a fresh set holding the flags eps and model_name, and model_name's deprecated name model."""
    values = flags.FlagValues()
    flags.DEFINE_float("eps", 8.0, "eps", flag_values=values)
    flags.DEFINE_string("model_name", "tf_fastbat", "name", flag_values=values)
    flags.DEFINE_flag(cli._Renamed("model", values["model_name"]), flag_values=values)
    monkeypatch.setattr(flags, "FLAGS", values)
    return values


@pytest.mark.parametrize("message,expected", [
    ("eps=8: must be a fraction in (0, 1]", "--eps=8: must be a fraction in (0, 1]"),
    ("model_name='3': must be a plain directory name", "--model_name='3': must be a plain directory name"),
    ("eps is required", "--eps is required"),
    ("width_multiplier=-1: must be positive", "width_multiplier=-1: must be positive"),  # not a flag here
    ("model=run/: no such file or directory", "model=run/: no such file or directory"),  # only a deprecated name
    ("eps: fgsm_pgi keeps state per training example", "eps: fgsm_pgi keeps state per training example"),
    ("the model outputs shape (2,)", "the model outputs shape (2,)"),
    ("--eps=8: already a flag", "--eps=8: already a flag"),
    ("Eps=8: not a parameter name", "Eps=8: not a parameter name"),
    ("/data/x.npz: file not found", "/data/x.npz: file not found"),
    ("", ""),
])
def test_flag_form_words_a_leading_parameter_that_is_a_flag_as_the_flag(defined, message, expected):
    assert cli.flag_form(message) == expected


TOOL = textwrap.dedent('''
    import sys
    from absl import flags
    from tf_fastbat import cli
    from tf_fastbat.errors import UsageError

    def library_check(name, value):
        if value < 0:
            raise UsageError(f"{name}={value:g}: must be >= 0")
        return True

    def define():
        flags.DEFINE_float("eps", 8.0, "eps")
        cli.validator("eps", lambda v: library_check("eps", v))
        flags.DEFINE_integer("steps", 1, "steps")
        cli.validator("steps", lambda v: v >= 1, lambda v: f"steps={v}: must be >= 1")
        flags.DEFINE_integer("restarts", 1, "restarts")
        flags.register_multi_flags_validator(["steps", "restarts"], lambda v: library_check("restarts", v["restarts"]))
        flags.DEFINE_integer("workers", 1, "workers")

    def main(argv):
        raise UsageError({raised!r})

    cli.run("probe", define, main, argv=["probe", *sys.argv[1:]])
''')


@pytest.mark.parametrize("args,raised,line", [
    (["--eps=-1"], "", "probe: error: --eps=-1: must be >= 0"),  # a flag's check raising the library's error
    (["--steps=0"], "", "probe: error: --steps=0: must be >= 1"),  # a flag's check worded as a parameter
    (["--restarts=-2"], "", "probe: error: --restarts=-2: must be >= 0"),  # a multi-flag validator
    ([], "workers=0: must be >= 1", "probe: error: --workers=0: must be >= 1"),  # the tool's main
    ([], "dataset=npz:x: file not found", "probe: error: dataset=npz:x: file not found"),  # not a flag of probe
    ([], "training loss became nan", "probe: error: training loss became nan"),
])
def test_the_runner_words_library_errors_as_flags(args, raised, line):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", TOOL.replace("{raised!r}", repr(raised)), *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert [text for text in result.stderr.splitlines() if text.startswith("probe: error:")] == [line]
    assert "Traceback" not in result.stderr
