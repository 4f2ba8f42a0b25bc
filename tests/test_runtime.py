"""Process-wide settings: importing the package changes nothing; the tools' runner keeps TensorFlow's Eigen CPU
kernels unless the user chose oneDNN's, and only while TensorFlow is not yet imported; the issue's heap-corruption
reproducer runs safely through the tools' runner, and the shapes at risk are named."""

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
    ("pass", None, "0"),  # TensorFlow not imported yet: Eigen's kernels (oneDNN's can corrupt the heap)
    ("pass", "1", "1"),  # the user's choice wins
    ("import tensorflow", None, "None"),  # too late to matter: left alone rather than set misleadingly
])
def test_the_tools_runner_defaults_to_eigen_kernels(first, user, expected):
    assert python(RUNNER.format(first=first), **({"TF_ENABLE_ONEDNN_OPTS": user} if user else {})) == expected


# The reproducer (an 8-channel strided 1x1 convolution, odd batch) as PreActResNet-18 at width 0.125 has it,
# run through the tools' runner with the user's environment free of TF_ENABLE_ONEDNN_OPTS: it must finish (with
# oneDNN's kernels the process aborts with "corrupted double-linked list" or "free(): invalid next size").
REPRODUCER = """
import os
from tf_fastbat import cli

def main(argv):
    import keras, tensorflow as tf
    from tf_fastbat import models
    model = models.build("preact_resnet18", width_multiplier=0.125)
    x = tf.random.uniform((15, 32, 32, 3))
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=True))
        tape.gradient(loss, [x] + model.trainable_variables)
    conv = keras.layers.Conv2D(16, 1, strides=2)
    h = tf.random.uniform((15, 32, 32, 8))
    with tf.GradientTape() as tape:
        tape.watch(h)
        y = tf.reduce_sum(conv(h))
    tape.gradient(y, h)
    print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "finished")

cli.run("probe", lambda: None, main, ["probe"])
"""


def test_the_heap_corruption_reproducer_runs_through_the_tools_runner():
    assert python(REPRODUCER) == "0 finished"


HAZARDS = """
import os, sys
os.environ["TF_ENABLE_ONEDNN_OPTS"] = sys.argv[1]
from tf_fastbat import models, runtime
for width in (0.125, 0.25):
    model = models.build("preact_resnet18", width_multiplier=width)
    print(width, runtime.onednn_hazards(model), bool(runtime.onednn_warning(model)))
"""


def test_the_models_at_risk_are_named_and_warned_about_only_with_onednn():
    """PreActResNet-18's only strided 1x1 convolutions are the shortcuts of stages 2-4, fed 64w, 128w and 256w
    channels: at width 0.125 the stage-2 shortcut has 8 (at risk), at width 0.25 none has fewer than 16."""
    def run(flag):
        result = subprocess.run([sys.executable, "-c", HAZARDS, flag], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()[-2:]

    assert run("1") == ["0.125 ['stage2_block1_shortcut'] True", "0.25 [] False"]
    assert run("0") == ["0.125 ['stage2_block1_shortcut'] False", "0.25 [] False"]
