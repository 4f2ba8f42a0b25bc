"""The package's one import-time effect: oneDNN CPU kernels unless the user chose, and only before TensorFlow."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = "import os, {first}; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"


def probe(first: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**base, "PYTHONPATH": str(ROOT), **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("first,user,expected", [
    ("tf_fastbat", None, "1"),  # TensorFlow not imported yet: oneDNN on
    ("tf_fastbat", "0", "0"),  # the user's choice wins
    ("tensorflow, tf_fastbat", None, "None"),  # too late to matter: left alone rather than set misleadingly
])
def test_onednn_default(first, user, expected):
    assert probe(first, **({"TF_ENABLE_ONEDNN_OPTS": user} if user else {})) == expected
