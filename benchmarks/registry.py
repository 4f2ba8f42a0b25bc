"""The registered training methods, as the benchmarks see them: their names (tf_fastbat.methods.NAMES, in
registry order) and labels (each class's `label`), read once in a child process so that a benchmark's own process
stays free of TensorFlow until it chooses its CPU kernels."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = ("import json; from tf_fastbat import methods; "
          "print(json.dumps({name: methods.label(name) for name in methods.NAMES}))")


@functools.lru_cache(maxsize=None)
def _labels() -> Dict[str, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def method_names() -> List[str]:
    """Every registered method, in registry order."""
    return list(_labels())


def label(name: str) -> str:
    """A registered method's label ("Fast-BAT")."""
    return _labels()[name]
