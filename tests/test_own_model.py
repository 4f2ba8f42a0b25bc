"""A user's own architecture through the training tool (--model=path/to/model.keras): the whole recipe (early
stopping, a stopped run resumed to the weights an unbroken run reaches, the report, the export), and a model that
cannot train on the data refused with one line naming --model."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT

RECIPE = ["--dataset=bundled:cifar10_slice", "--method=fast_at", "--batch_size=16", "--epochs=2", "--steps_per_epoch=3",
          "--backup_every_steps=1", "--backup_every_seconds=0", "--es_num_examples=8", "--es_pgd_steps=1",
          "--es_pgd_restarts=1", "--eval_num_examples=16", "--eval_pgd_steps=2", "--eval_pgd_restarts=1",
          "--tensorboard=false"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def save_user_model(path, outputs=10, rescale=False) -> list:
    """A small Sequential classifier of the user's ([0, 1] NHWC images -> logits), saved; its initial weights."""
    keras.utils.set_random_seed(0)
    layers = [keras.Input((32, 32, 3))]
    if rescale:
        layers.append(keras.layers.Rescaling(1 / 255, name="to_unit"))
    layers += [keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="my_conv"), keras.layers.Flatten(name="flatten"),
               keras.layers.Dense(outputs, name="my_logits")]
    model = keras.Sequential(layers, name="my_net")
    model.save(path)
    return [np.array(w) for w in model.get_weights()]


def start(workdir, *args) -> subprocess.Popen:
    os.makedirs(workdir, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tf_fastbat.train", f"--workdir={workdir}", *args], cwd=ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "stderr.txt"), "a"))


def finish(process: subprocess.Popen, workdir) -> str:
    status = process.wait(timeout=600)
    text = open(os.path.join(workdir, "stderr.txt")).read()
    assert status == 0, text[-3000:]
    return text


def weights(path) -> list:
    return [np.array(w) for w in keras.models.load_model(path, compile=False).get_weights()]


@pytest.mark.slow  # end to end: three training subprocesses
def test_a_users_keras_model_trains_with_the_whole_recipe_and_resumes_exactly(tmp_path):
    user_file = str(tmp_path / "my_net.keras")
    initial = save_user_model(user_file)
    stopped, unbroken = str(tmp_path / "stopped"), str(tmp_path / "unbroken")
    args = [f"--model={user_file}", *RECIPE]

    process = start(stopped, *args)
    manifest = os.path.join(stopped, "backup", "step-0000000002", "manifest.json")
    deadline = time.time() + 300
    while not os.path.exists(manifest):
        assert process.poll() is None and time.time() < deadline, "no step-2 backup before the run ended"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143
    assert "interrupted by SIGTERM" in open(os.path.join(stopped, "stderr.txt")).read()
    resumed = finish(start(stopped, *args), stopped)
    assert "resuming from" in resumed and "deprecated" not in resumed
    finish(start(unbroken, *args, f"--export_dir={tmp_path / 'exports'}"), unbroken)

    last = os.path.join(stopped, "checkpoints", "last.keras")
    model = keras.models.load_model(last, compile=False)
    assert model.name == "my_net" and [layer.name for layer in model.layers] == ["my_conv", "flatten", "my_logits"]
    resumed_weights = weights(last)
    assert any(not np.array_equal(a, b) for a, b in zip(resumed_weights, initial))  # it trained
    for a, b in zip(resumed_weights, weights(os.path.join(unbroken, "checkpoints", "last.keras"))):
        np.testing.assert_array_equal(a, b)  # stopped and resumed = unbroken (CPU: deterministic ops)
    config = json.loads(open(os.path.join(stopped, "config.json")).read())
    assert (config["model"], config["architecture"], config["width_multiplier"]) == (user_file, None, None)
    report = json.loads(open(os.path.join(stopped, "report.json")).read())
    assert (report["model"], report["architecture"], report["num_examples"]) == (user_file, None, 16)
    assert set(report["checkpoints"]) == {"best", "last"} and set(report["robust_accuracy"]) == {"pgd-2-1"}
    assert os.path.isfile(os.path.join(stopped, "training_curves.png"))
    versions = sorted(os.listdir(tmp_path / "exports" / "tf_fastbat"))
    assert versions == ["1", "2"] and (tmp_path / "exports" / "tf_fastbat" / "2" / "saved_model.pb").exists()


@pytest.mark.parametrize("kind,message", [
    ("five_logits", "it gives 5 logits per image; the dataset has 10 classes"),
    ("rescaling", "its layer 'to_unit' divides by 255, but the tools give [0, 1] images; remove that layer"),
    ("missing", "no such file or directory"),
])
def test_a_model_that_cannot_train_on_the_data_gets_one_line_naming_model(tmp_path, kind, message):
    user_file = str(tmp_path / f"{kind}.keras")
    if kind != "missing":
        save_user_model(user_file, outputs=5 if kind == "five_logits" else 10, rescale=kind == "rescaling")
    result = subprocess.run([sys.executable, "-m", "tf_fastbat.train", f"--workdir={tmp_path / 'run'}",
                             f"--model={user_file}", *RECIPE], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if "tf_fastbat.train: error" in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0] == f"tf_fastbat.train: error: --model={user_file}: {message}"
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "config.json").exists()
