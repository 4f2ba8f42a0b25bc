"""Every flagfile in flags/ parses and passes the pre-flight checks (no dataset needed)."""

import os
import subprocess
import sys

from conftest import ROOT

CHECK = """
import glob, sys
from absl import flags
from tf_fastbat import config, flagtypes
config.define_training_flags()
failures = []
for path in sorted(glob.glob("flags/*.cfg")):
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", "--flagfile=" + path])
        config.validate_training(flags.FLAGS)
        print("ok", path, flags.FLAGS.method, flagtypes.in_units(flags.FLAGS.eps), flags.FLAGS.model)
    except Exception as error:
        failures.append(f"{path}: {error}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_flagfile_parses_and_validates():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = [l for l in result.stdout.splitlines() if l.startswith("ok ")]
    assert len(lines) == len(list((ROOT / "flags").glob("*.cfg")))
    assert "ok flags/table1_fast_bat_eps16.cfg fast_bat 16.0 preact_resnet18" in lines
    assert "ok flags/table4_wrn16_8_pgd.cfg pgd 8.0 wrn16_8" in lines
