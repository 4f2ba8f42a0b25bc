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
        print("ok", path, flags.FLAGS.method, flagtypes.in_units(flags.FLAGS.eps), flags.FLAGS.architecture)
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


OFFICIAL = """
import glob, json
from absl import flags
from tf_fastbat import config, methods
config.define_training_flags()
out = {}
runs = sorted(glob.glob("flags/*_elle_a_*.cfg") + glob.glob("flags/*_fgsm_pgi_*.cfg"))
for path in runs + ["flags/table1_elle_a_eps8.cfg --elle_optimizer_steps=1"]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", "--flagfile=" + path.split()[0], *path.split()[1:]])
    method = methods.build(flags.FLAGS.method, **config.method_hparams(flags.FLAGS))
    out[path] = {"recorded": config.as_dict(flags.FLAGS), "steps": method.optimizer_steps_per_batch,
                 "step_size": method.step_size() * 255 if hasattr(method, "step_size") else None}
print(json.dumps(out))
"""


def test_the_newer_methods_flagfiles_train_as_the_official_code():
    """Issue 23: ELLE-A's recipes take the official trainer's two optimizer steps per batch (recorded in config.json
    as elle_optimizer_steps; --elle_optimizer_steps=1 gives one), every other method one; FGSM-PGI steps 8/255 at
    8/255 and 16/255 (FGSM_MEP.py's --alpha)."""
    import json

    result = subprocess.run([sys.executable, "-c", OFFICIAL], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"flags/table1_elle_a_eps8.cfg", "flags/table1_elle_a_eps16.cfg", "flags/table1_fgsm_pgi_eps16.cfg"} <= set(
        parsed)
    turned_off = parsed.pop("flags/table1_elle_a_eps8.cfg --elle_optimizer_steps=1")
    assert turned_off["steps"] == 1 and turned_off["recorded"]["elle_optimizer_steps"] == 1
    for path, values in parsed.items():
        elle = "_elle_a_" in path
        assert values["steps"] == (2 if elle else 1), path
        assert values["recorded"]["elle_optimizer_steps"] == 2, path
        if not elle:
            assert abs(values["step_size"] - 8.0) < 1e-9, path
