"""Process-wide settings: importing the package changes nothing; the tools' runner turns on oneDNN's CPU kernels
unless the user chose, and only while TensorFlow is not yet imported."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

IMPORT_PACKAGE = "import os; before = dict(os.environ); import tf_fastbat; print(dict(os.environ) == before)"
# TensorFlow sets variables of its own on import (TF2_BEHAVIOR...): every module is imported after it.
IMPORT_ALL = ("import os, pkgutil, importlib, tensorflow, keras, tf_fastbat; before = dict(os.environ); "
              "[importlib.import_module(m.name) for m in pkgutil.walk_packages(tf_fastbat.__path__, 'tf_fastbat.') "
              "if not m.name.endswith(('torch_import', 'convert'))]; print(dict(os.environ) == before)")
RUNNER = ("import os, sys; {first}; from tf_fastbat import cli; "
          "cli.run('probe', lambda: None, lambda argv: print(os.environ.get('TF_ENABLE_ONEDNN_OPTS')), ['probe'])")


def python(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**base, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_package_leaves_the_environment_alone():
    assert python(IMPORT_PACKAGE) == "True"


def test_importing_every_module_leaves_the_environment_alone():
    assert python(IMPORT_ALL) == "True"


@pytest.mark.parametrize("first,user,expected", [
    ("pass", None, "1"),  # TensorFlow not imported yet: oneDNN on
    ("pass", "0", "0"),  # the user's choice wins
    ("import tensorflow", None, "None"),  # too late to matter: left alone rather than set misleadingly
])
def test_the_tools_runner_prefers_onednn(first, user, expected):
    assert python(RUNNER.format(first=first), **({"TF_ENABLE_ONEDNN_OPTS": user} if user else {})) == expected
