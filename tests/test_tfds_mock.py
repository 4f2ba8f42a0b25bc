"""The tensorflow_datasets paths end to end, offline: train a few steps, evaluate and export under
`tfds.testing.mock_data` (random examples shaped like the real sets), for the in-memory CIFAR-10 and the streamed
ImageNet."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

UNDER_MOCK = """
import sys
import tensorflow_datasets as tfds
from tf_fastbat import {tool}
with tfds.testing.mock_data(num_examples=int(sys.argv[1])):
    sys.argv = ["tf_fastbat.{tool}", *sys.argv[2:]]
    {tool}.console_main()
"""
TINY = ["--architecture=preact_resnet18", "--width_multiplier=0.0625", "--epochs=1", "--steps_per_epoch=2",
        "--batch_size=8", "--es_pgd_steps=1", "--es_pgd_restarts=1", "--es_num_examples=8", "--eval_pgd_steps=1",
        "--eval_pgd_restarts=1", "--eval_num_examples=8", "--tensorboard=false"]


def under_mock(tool: str, examples: int, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", UNDER_MOCK.format(tool=tool), str(examples), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("dataset,extra", [("cifar10", []), ("imagenet2012", ["--image_size=32"])])
def test_train_evaluate_and_export_a_tfds_dataset(tmp_path, dataset, extra):
    workdir, exports = tmp_path / "run", tmp_path / "exports"
    under_mock("train", 48, f"--dataset={dataset}", f"--workdir={workdir}", f"--export_dir={exports}", *TINY, *extra)
    report = json.loads((workdir / "report.json").read_text())
    assert report["dataset"] == dataset and report["num_examples"] == 8
    assert json.loads((workdir / "config.json").read_text())["image_shape"][:2] == ([32, 32])
    under_mock("evaluate", 48, f"--model={workdir}", "--num_examples=8", "--attacks=pgd", "--pgd_steps=1",
               "--pgd_restarts=1", "--plots=false", "--gradient_alignment=false")
    evaluation = json.loads((workdir / "evaluation.json").read_text())
    assert evaluation["dataset"] == dataset and evaluation["num_examples"] == 8
    assert set(evaluation["robust_accuracy"]) == {"pgd-1-1"}
    under_mock("export", 48, f"--model={workdir}", f"--export_dir={exports}", "--model_name=again",
               "--num_examples=8", "--pgd_steps=1")
    assert sorted(os.listdir(exports / "tf_fastbat")) == ["1", "2"]  # training's last and best
    metadata = json.loads((exports / "again" / "1" / "assets" / "metadata.json").read_text())
    assert metadata["dataset"] == dataset and metadata["evaluation"]["num_examples"] == 8
