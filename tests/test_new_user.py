"""Issue 21's "show": the package as a new user meets it. A wheel of the checkout installed elsewhere (the
`installed` fixture) runs tests/new_user_program.py from an empty folder: the user's own Sequential model with
BatchNorm, a tf.data pipeline from the shared CIFAR-10 subset's uint8 arrays, Fast-BAT (eps 8/255) through
AdversarialTrainer with ModelCheckpoint and EarlyStopping, the best checkpoint reloaded, the library's evaluation.
Then the installed console scripts evaluate and export its classifier, and a plain TensorFlow process (no tf_fastbat
importable) serves the export. Every figure is checked against one computed here, independently of the program."""

import json
import shutil
import subprocess
import sysconfig
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fastbat import AdversarialTrainer  # registered: best.keras loads here
from conftest import ROOT, SHARED_SLICE

pytestmark = pytest.mark.slow  # end to end: a wheel, a training subprocess, two tools, a TensorFlow process

# What tests/new_user_program.py uses (its history.json records them; the first test compares).
TRAIN, VALIDATION, TEST = (0, 1024), (1024, 1280), (0, 256)
EPS_255, PGD_STEPS, PGD_RESTARTS, PGD_SEED = 8, 3, 1, 0
PGD_KEY, EPS_KEY = f"pgd-{PGD_STEPS}-{PGD_RESTARTS}", f"{EPS_255}/255"
TOLERANCE = dict(rtol=1e-6, atol=1e-6)  # the same weights and inputs, one forward against another

PLAIN_TENSORFLOW = textwrap.dedent("""
    # Run with python -S: no .pth file runs, so the venv's editable finder for the checkout is not installed; the
    # venv's site-packages (TensorFlow, NumPy) are appended by hand, and nothing else is on the path.
    import importlib.util, json, sys

    site_packages, saved_model_dir, inputs, outputs = sys.argv[1:]
    sys.path.append(site_packages)
    importable = importlib.util.find_spec("tf_fastbat") is not None
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)  # kept alive while its signature runs
    served = loaded.signatures["serving_default"](images=tf.constant(np.load(inputs)))
    np.savez(outputs, logits=served["logits"].numpy(), probabilities=served["probabilities"].numpy())
    print(json.dumps({"importable": importable, "tensorflow": tf.__version__,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "tf_fastbat")}))
""")


def cross_entropy(logits, labels) -> float:
    """Mean sparse cross-entropy on logits, in float64 NumPy."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_softmax[np.arange(len(labels)), np.asarray(labels, np.int64)]))


def count_correct(logits, labels) -> int:
    return int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels, np.int64)))


def logits_of(model, x) -> np.ndarray:
    return model(tf.constant(x), training=False).numpy()


@pytest.fixture(scope="module")
def data(cifar_slice):
    """The program's validation and test images ([0, 1] float32) and labels, cut here from the shared subset."""
    return {"x_val": cifar_slice["x_train"][slice(*VALIDATION)].astype(np.float32) / 255.0,
            "y_val": cifar_slice["y_train"][slice(*VALIDATION)].astype(np.int64),
            "x_test_uint8": cifar_slice["x_test"][slice(*TEST)], "y_test_uint8": cifar_slice["y_test"][slice(*TEST)],
            "x_test": cifar_slice["x_test"][slice(*TEST)].astype(np.float32) / 255.0,
            "y_test": cifar_slice["y_test"][slice(*TEST)].astype(np.int64)}


@pytest.fixture(scope="module")
def program(installed, cifar_slice, tmp_path_factory):
    """The user's program, copied into an empty folder and run there with the installed package."""
    folder = tmp_path_factory.mktemp("new_user")
    shutil.copy(ROOT / "tests" / "new_user_program.py", folder / "new_user_program.py")
    installed.run([installed.python, "new_user_program.py", SHARED_SLICE], cwd=folder, timeout=900)
    with np.load(folder / "logits.npz") as logits:
        arrays = {key: logits[key] for key in logits.files}
    return {"folder": folder, "record": json.loads((folder / "history.json").read_text()), "logits": arrays,
            "evaluation": json.loads((folder / "evaluation.json").read_text())}


@pytest.fixture(scope="module")
def classifier(program):
    """The plain classifier the program saved for the tools, loaded here with Keras alone."""
    return keras.models.load_model(program["folder"] / "classifier.keras", compile=False)


@pytest.fixture(scope="module")
def test_only(tmp_path_factory, data):
    """An npz holding only x_test and y_test (uint8, as the shared data): what evaluation says it needs."""
    path = tmp_path_factory.mktemp("test_only") / "test_only.npz"
    np.savez(path, x_test=data["x_test_uint8"], y_test=data["y_test_uint8"])  # no x_train, y_train
    return path


def test_the_program_ran_on_the_installed_package_with_the_slices_checked_here(program, installed):
    record = program["record"]
    assert record["tf_fastbat_file"].startswith(str(installed.target) + "/"), record["tf_fastbat_file"]
    assert {name: tuple(bounds) for name, bounds in record["slices"].items()} == \
        {"train": TRAIN, "validation": VALIDATION, "test": TEST}
    assert set(program["folder"].iterdir()) >= {program["folder"] / name for name in (
        "best.keras", "classifier.keras", "history.json", "logits.npz", "evaluation.json")}


def test_early_stopping_stopped_where_its_rule_replayed_on_the_recorded_val_loss_says(program):
    """EarlyStopping(monitor="val_loss", patience=1): training stops after the first epoch (not the first) whose
    val_loss is not below every earlier one; otherwise all epochs run."""
    record = program["record"]
    val_loss, max_epochs = record["history"]["val_loss"], record["max_epochs"]
    stop = next((e for e in range(1, max_epochs) if e < len(val_loss) and val_loss[e] >= min(val_loss[:e])), None)
    expected_epochs = max_epochs if stop is None else stop + 1
    assert len(val_loss) == expected_epochs, val_loss
    assert record["epochs"] == list(range(expected_epochs))
    assert record["stopped_epoch"] == (0 if stop is None else stop)
    for key in ("loss", "accuracy", "val_accuracy"):
        assert len(record["history"][key]) == expected_epochs and np.isfinite(record["history"][key]).all()


def test_the_recorded_val_loss_is_the_in_memory_models_cross_entropy_each_epoch(program, data):
    """The history is the model's: each epoch's val_loss is the clean cross-entropy of the logits the in-memory
    classifier gave at that epoch's end (recorded by the program), computed here."""
    per_epoch, val_loss = program["logits"]["per_epoch"], program["record"]["history"]["val_loss"]
    assert per_epoch.shape == (len(val_loss), len(data["y_val"]), 10)
    for epoch, logits in enumerate(per_epoch):
        assert cross_entropy(logits, data["y_val"]) == pytest.approx(val_loss[epoch], rel=1e-5), epoch
    np.testing.assert_array_equal(program["logits"]["in_memory"], per_epoch[-1])  # the model fit left in memory


def test_best_keras_is_the_epoch_of_least_val_loss(program, data):
    """best.keras, loaded here: its validation cross-entropy, computed here, is min(val_loss); its logits are the
    in-memory classifier's at that epoch, and those the program got from its own reload and from classifier.keras."""
    val_loss, logits = program["record"]["history"]["val_loss"], program["logits"]
    best = keras.models.load_model(program["folder"] / "best.keras")
    assert isinstance(best, AdversarialTrainer) and best.method.name == "fast_bat"
    assert best.method.eps == pytest.approx(8 / 255)
    here = logits_of(best.classifier, data["x_val"])
    assert cross_entropy(here, data["y_val"]) == pytest.approx(min(val_loss), rel=1e-5)
    best_epoch = int(np.argmin(val_loss))  # the first of equal minima: ModelCheckpoint saves on strict improvement
    np.testing.assert_allclose(here, logits["per_epoch"][best_epoch], **TOLERANCE)
    if best_epoch < len(val_loss) - 1:  # training went on past it: the model left in memory is another one
        assert np.abs(logits["in_memory"] - here).max() > 1e-3
    np.testing.assert_allclose(logits["best_reloaded"], here, **TOLERANCE)
    np.testing.assert_allclose(logits["classifier_reloaded"], here, **TOLERANCE)
    assert [layer.name for layer in best.classifier.layers][-2:] == ["features", "logits"]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in best.classifier.layers) == 2


def test_the_librarys_clean_accuracy_is_the_count_made_here(program, classifier, data):
    result = program["evaluation"]
    correct = count_correct(logits_of(classifier, data["x_test"]), data["y_test"])
    assert 0 < correct < len(data["y_test"])  # a trained model, neither broken nor perfect
    assert result["num_examples"] == len(data["y_test"])
    assert result["clean_accuracy"] == correct / len(data["y_test"])
    assert set(result["robust_accuracy"]) == {PGD_KEY} and set(result["robust_accuracy"][PGD_KEY]) == {EPS_KEY}
    assert 0.0 <= result["robust_accuracy"][PGD_KEY][EPS_KEY] <= result["clean_accuracy"]


def test_the_evaluation_tool_needs_only_the_test_arrays_and_agrees_with_the_library(
        program, classifier, data, installed, test_only, tmp_path):
    report = tmp_path / "tool" / "evaluation.json"
    installed.run([installed.script("tf-fastbat-evaluate"), f"--model={program['folder'] / 'classifier.keras'}",
                   f"--dataset=npz:{test_only}", f"--eps={EPS_255}", "--attacks=pgd", f"--pgd_steps={PGD_STEPS}",
                   f"--pgd_restarts={PGD_RESTARTS}", f"--seed={PGD_SEED}", "--plots=false",
                   "--gradient_alignment=false", f"--output={report}"], cwd=tmp_path, timeout=600)
    result = json.loads(report.read_text())
    correct = count_correct(logits_of(classifier, data["x_test"]), data["y_test"])
    assert result["num_examples"] == len(data["y_test"]) and result["model_kind"] == "keras"
    assert result["clean_accuracy"] == correct / len(data["y_test"])
    # The same PGD (steps, restarts, seed, batches) on the same classifier and images as the program's library call.
    assert result["robust_accuracy"] == program["evaluation"]["robust_accuracy"]


def test_the_export_serves_the_keras_logits_in_a_plain_tensorflow_process(
        program, classifier, data, installed, test_only, tmp_path):
    exports = tmp_path / "exports"
    installed.run([installed.script("tf-fastbat-export"), f"--model={program['folder'] / 'classifier.keras'}",
                   f"--export_dir={exports}", "--model_name=new_user", f"--dataset=npz:{test_only}",
                   f"--num_examples={len(data['y_test'])}", f"--eps={EPS_255}", f"--pgd_steps={PGD_STEPS}",
                   f"--pgd_restarts={PGD_RESTARTS}", f"--seed={PGD_SEED}"], cwd=tmp_path, timeout=600)
    assert sorted(p.name for p in (exports / "new_user").iterdir()) == ["1"]
    version = exports / "new_user" / "1"
    keras_logits = logits_of(classifier, data["x_test"])
    measured = json.loads((version / "assets" / "metadata.json").read_text())["evaluation"]
    assert measured["num_examples"] == len(data["y_test"])
    assert measured["clean_accuracy"] == count_correct(keras_logits, data["y_test"]) / len(data["y_test"])

    (tmp_path / "plain.py").write_text(PLAIN_TENSORFLOW)
    np.save(tmp_path / "images.npy", data["x_test"])
    env = {key: value for key, value in installed.env.items() if key != "PYTHONPATH"}
    process = subprocess.run([installed.python, "-S", tmp_path / "plain.py", sysconfig.get_paths()["purelib"],
                              version, tmp_path / "images.npy", tmp_path / "served.npz"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    found = json.loads(process.stdout.splitlines()[-1])
    assert found == {"importable": False, "tensorflow": tf.__version__, "loaded": []}
    with np.load(tmp_path / "served.npz") as served:
        np.testing.assert_allclose(served["logits"], keras_logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0, atol=1e-5)
