"""SavedModel export for TF Serving: the CLI on a training workdir, a fresh TensorFlow-only process reproducing
the Keras logits, the evaluation harness (PGD, AutoAttack) on the SavedModel alone, saved_model_cli, versions
that never touch older ones, atomic publication, and clear errors."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, SHARED_SLICE
from tf_fastbat import checkpoints, models
from tf_fastbat.attacks.pgd import PGD
from tf_fastbat.errors import UsageError
from tf_fastbat import publish
from tf_fastbat.serving import saved_model
from tf_fastbat.serving.loading import load_logits_fn, load_metadata
from tf_fastbat.serving.protocol import integer_versions

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
pytestmark = pytest.mark.slow  # end to end: exports, subprocesses, a fresh TensorFlow process
EPS_255 = 1.0  # the measurement's eps: PGD breaks some but not all correctly classified examples of these models
N = 64  # test examples measured
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def small_convnet() -> keras.Model:
    """Normalization, two conv-BN-ReLU layers, pooling and a linear head: the cheapest model for tests where the
    architecture does not matter (every export and attack trace costs a fraction of a ResNet's)."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Normalization(mean=[0.5] * 3, variance=[0.0625] * 3, name="normalize")(inputs)
    for filters, stride in ((8, 1), (16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def probed_classifier(seed: int, x_train: np.ndarray, y_train: np.ndarray, small: bool = False) -> keras.Model:
    """A width-8 PreActResNet-18 (or the small convnet), BN statistics moved by two updates, its linear head fit in
    closed form (ridge regression on the pooled features): a non-degenerate classifier without a training loop."""
    keras.utils.set_random_seed(seed)
    model = small_convnet() if small else models.build("preact_resnet18", width_multiplier=0.125,
                                                       mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    for batch in np.array_split(x_train[:128], 2):
        model(batch, training=True)
    features = keras.Model(model.input, model.get_layer("pool").output)
    f = np.concatenate([features(batch, training=False).numpy() for batch in np.array_split(x_train, 4)])
    mean, std = f.mean(0), f.std(0) + 1e-6
    z = (f - mean) / std
    w = np.linalg.solve(z.T @ z + 10.0 * np.eye(z.shape[1]), z.T @ (np.eye(10)[y_train] - 0.1))
    model.get_layer("logits").set_weights([(w / std[:, None]).astype(np.float32),
                                           (-(mean / std) @ w).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory, cifar_slice):
    """A workdir as train.py leaves it (best/last checkpoints, config.json, report.json) and the test arrays."""
    workdir = tmp_path_factory.mktemp("workdir")
    x_train = cifar_slice["x_train"][:512].astype(np.float32) / 255.0
    y_train = cifar_slice["y_train"][:512]
    # The best model is the architecture training produces; the last one (exported once, by export_after_training)
    # is the small convnet, to keep the tests fast.
    best, last = probed_classifier(1, x_train, y_train), probed_classifier(2, x_train, y_train, small=True)
    checkpoints.save_model_atomic(best, str(workdir / "checkpoints" / "best.keras"))
    checkpoints.save_model_atomic(last, str(workdir / "checkpoints" / "last.keras"))
    # config.json as training wrote it before the flags' renaming ("model" the architecture, eval_attack_step and
    # eval_restarts): an older run still exports with its own evaluation settings (record.current_settings).
    config = {"dataset": f"npz:{SHARED_SLICE}", "method": "fast_bat", "eps": 8.0, "seed": 5, "model": "preact_resnet18",
              "activation": "relu", "width_multiplier": 0.125, "epochs": 2, "eval_eps": [f"{EPS_255:g}"],
              "eval_attack_step": 3, "eval_restarts": 2, "eval_num_examples": N, "class_names": CIFAR_CLASSES,
              "method_hparams": {"eps": 8 / 255, "attack_lr": 5000 / 255, "lmbda": 10.0,
                                 "linearization": "pgd_nosign"}}
    checkpoints.write_json_atomic(config, str(workdir / "config.json"))
    training_best = {"clean_accuracy": 0.25, "robust_accuracy": {"pgd-3-2": {"1/255": 0.125}}, "num_examples": N,
                     "seed": 5}
    checkpoints.write_json_atomic({"checkpoints": {"best": training_best}}, str(workdir / "report.json"))
    x_test = cifar_slice["x_test"][:N].astype(np.float32) / 255.0
    return {"workdir": workdir, "best": best, "last": last, "config": config, "training_best": training_best,
            "x": x_test, "y": cifar_slice["y_test"][:N].astype(np.int64)}


@pytest.fixture(scope="module")
def reference(run):
    """PGD-3-2 (seed 5, eps 1/255) through the best Keras checkpoint: the independent side of the comparisons."""
    pgd = PGD(lambda images: run["best"](images, training=False))
    best = {"clean": pgd.predict(run["x"]) == run["y"],
            "robust": pgd.robust_mask(run["x"], run["y"], EPS_255 / 255, steps=3, restarts=2, seed=5)}
    assert 0 < best["robust"].sum() < best["clean"].sum(), \
        "the comparisons mean nothing unless PGD breaks some but not all correctly classified examples"
    return {"best": best}


def keras_logits(model, x):
    return model(x, training=False).numpy()


def export_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "tf_fastbat.export", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def png_bytes(image_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_uint8).save(buffer, format="PNG")
    return buffer.getvalue()


# Phase 1 imports TensorFlow only and loads the version as soon as its directory appears (the export runs
# meanwhile: a half-written version would fail to load); phase 2 is the evaluation harness.
FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys, time

    import numpy as np
    import tensorflow as tf

    saved_model_dir, inputs, outputs, *png_files = sys.argv[1:]
    deadline = time.time() + 600
    while not os.path.isdir(saved_model_dir) and time.time() < deadline:  # the export runs meanwhile
        time.sleep(0.2)
    arrays = np.load(inputs)
    loaded = tf.saved_model.load(saved_model_dir)
    images = loaded.signatures["serving_default"](images=tf.constant(arrays["x"]))
    png = [open(path, "rb").read() for path in png_files]
    encoded = loaded.signatures["predict_images_bytes"](image_bytes=tf.constant(png))
    phase1_modules = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_fastbat", "export"))

    from tf_fastbat.serving.loading import load_logits_fn
    from tf_fastbat.attacks.pgd import PGD
    from tf_fastbat.attacks.autoattack import run_autoattack

    logits_fn = load_logits_fn(saved_model_dir.rsplit("/", 1)[0])  # DIR/NAME: the newest version
    eps = float(arrays["eps"])
    robust = PGD(logits_fn).robust_mask(arrays["x"], arrays["y"], eps, steps=3, restarts=2, seed=5)
    aa = run_autoattack(logits_fn, arrays["x_aa"], arrays["y_aa"], eps, attacks_to_run=["apgd-ce"], seed=0)
    np.savez(outputs, logits=images["logits"].numpy(), probabilities=images["probabilities"].numpy(),
             classes=images["classes"].numpy(), png_logits=encoded["logits"].numpy(), pgd_robust=robust,
             aa_x_adv=aa.x_adv, aa_robust=aa.robust_mask)
    print(json.dumps({"phase1_modules": phase1_modules, "aa_warnings": aa.warnings,
                      "model_code_loaded": any(m.startswith("tf_fastbat.models") for m in sys.modules)}))
""")


WAIT_THEN_SHOW = textwrap.dedent("""
    import os, subprocess, sys, time

    cli, version_dir = sys.argv[1:]
    deadline = time.time() + 600
    while not os.path.isdir(version_dir) and time.time() < deadline:
        time.sleep(0.2)
    sys.exit(subprocess.call([cli, "show", "--all", "--dir", version_dir]))
""")


@pytest.fixture(scope="module")
def jobs(run, tmp_path_factory):
    """Started together, first thing: the export CLI on the workdir (DIR/tiny/1; dataset, eps and seed from its
    config.json), and two processes that wait for that version to appear, then run the fresh-process check and
    saved_model_cli on it. The in-process tests run meanwhile; the last tests of this file collect them."""
    export_dir, folder = tmp_path_factory.mktemp("exports"), tmp_path_factory.mktemp("fresh")
    version_dir = export_dir / "tiny" / "1"
    x, y = run["x"], run["y"]
    correct = np.flatnonzero(keras_logits(run["best"], x).argmax(1) == y)[:4]
    np.savez(folder / "in.npz", x=x, y=y, eps=EPS_255 / 255, x_aa=x[correct], y_aa=y[correct])
    uint8 = np.round(x[:5] * 255).astype(np.uint8)
    png_files = []
    for index, image in enumerate(uint8):
        png_files.append(str(folder / f"{index}.png"))
        with open(png_files[-1], "wb") as f:
            f.write(png_bytes(image))
    pipes = {"cwd": ROOT, "env": ENV, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = {
        "export": subprocess.Popen([sys.executable, "-m", "tf_fastbat.export", f"--model={run['workdir']}",
                                    f"--export_dir={export_dir}", "--model_name=tiny", f"--num_examples={N}",
                                    "--pgd_steps=3", "--pgd_restarts=2"], **pipes),
        "fresh": subprocess.Popen([sys.executable, "-c", FRESH_PROCESS, str(version_dir), str(folder / "in.npz"),
                                   str(folder / "out.npz"), *png_files], **pipes),
        "show": subprocess.Popen([sys.executable, "-c", WAIT_THEN_SHOW,
                                  os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                                  str(version_dir)], **pipes),
    }
    yield {**processes, "dir": export_dir, "version_dir": version_dir, "out": folder / "out.npz",
           "correct": correct, "png_images": uint8}
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cli_export(jobs):
    """The export CLI's result, once it has finished."""
    stdout, stderr = jobs["export"].communicate(timeout=600)
    assert jobs["export"].returncode == 0, stderr[-3000:]
    return {"dir": jobs["dir"], "version_dir": jobs["version_dir"], "stdout": stdout}


def tree_fingerprint(folder) -> dict:
    """path -> (sha256, mtime_ns) of every file under `folder`."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return found


def test_a_version_is_visible_only_complete_and_a_failed_export_leaves_nothing(run, jobs, tmp_path):
    model_dir = tmp_path / "tiny"
    (model_dir / "3").mkdir(parents=True)
    (model_dir / "3" / "saved_model.pb").write_bytes(b"someone else's version")
    before = tree_fingerprint(model_dir)
    seen = {}

    def evaluate(logits_fn):
        # Runs once the SavedModel is completely written (it loads and computes the Keras logits), before the
        # rename: no new version may be visible yet; then the measurement fails.
        seen["versions"] = integer_versions(str(model_dir))
        seen["hidden"] = [e for e in os.listdir(model_dir) if e.startswith(".")]
        seen["logits"] = logits_fn(run["x"][:4]).numpy()
        raise RuntimeError("measurement failed")

    with pytest.raises(RuntimeError, match="measurement failed"):
        saved_model.export_saved_model(run["last"], str(tmp_path), "tiny", {"dataset": "x"}, evaluate)
    assert seen["versions"] == (3,) and len(seen["hidden"]) == 1
    assert np.abs(seen["logits"] - keras_logits(run["last"], run["x"][:4])).max() <= 1e-4
    assert sorted(os.listdir(model_dir)) == ["3"] and tree_fingerprint(model_dir) == before


def test_export_after_training_adds_last_then_best_and_touches_no_older_version(run, reference, tmp_path):
    workdir = tmp_path / "workdir"  # a copy whose report.json holds what training measured on the best model
    shutil.copytree(run["workdir"], workdir)
    training_best = {"clean_accuracy": reference["best"]["clean"].mean(), "num_examples": N, "seed": 5,
                     "robust_accuracy": {"pgd-3-2": {"1/255": reference["best"]["robust"].mean()}}}
    checkpoints.write_json_atomic({"checkpoints": {"best": training_best}}, str(workdir / "report.json"))
    model_dir = tmp_path / "serving" / "tiny"
    for version in ("1", "7"):  # versions already there (their content is never read)
        (model_dir / version / "variables").mkdir(parents=True)
        (model_dir / version / "saved_model.pb").write_bytes(f"version {version}".encode())
        (model_dir / version / "variables" / "variables.index").write_bytes(b"index")
    before = tree_fingerprint(model_dir)
    exported = publish.export_after_training(str(workdir), str(tmp_path / "serving"), "tiny")
    assert exported == {"last": str(model_dir / "8"), "best": str(model_dir / "9")}
    assert sorted(os.listdir(model_dir)) == ["1", "7", "8", "9"], "no temporary directory may be left behind"
    after = tree_fingerprint(model_dir)
    assert {k: v for k, v in after.items() if k.split(os.sep)[0] in ("1", "7")} == before
    # The newest version (the one TF Serving serves by default) is the best model.
    newest = load_logits_fn(str(model_dir))
    assert newest.path == str(model_dir / "9")
    assert np.abs(newest(run["x"][:8]).numpy() - keras_logits(run["best"], run["x"][:8])).max() <= 1e-4
    last, best = load_metadata(str(model_dir / "8")), load_metadata(str(model_dir / "9"))
    assert (last["version"], last["checkpoint_kind"]) == (8, "last")
    assert (best["version"], best["checkpoint_kind"]) == (9, "best")
    # Each measured with the run's own evaluation settings (eval_eps 1, PGD-3-2, N examples, seed 5).
    assert last["evaluation"]["num_examples"] == best["evaluation"]["num_examples"] == N
    assert set(last["evaluation"]["robust_accuracy"]) == {"pgd-3-2"}
    assert best["evaluation"]["clean_accuracy"] == reference["best"]["clean"].mean()
    assert best["evaluation"]["robust_accuracy"] == {"pgd-3-2": {"1/255": reference["best"]["robust"].mean()}}
    assert best["evaluation"]["agrees_with_training_evaluation"] is True
    assert last["evaluation"]["agrees_with_training_evaluation"] is None  # report.json has no entry for it


def test_export_checkpoint_refuses_what_it_cannot_use(tmp_path):
    with zipfile.ZipFile(tmp_path / "fake.keras", "w") as archive:  # a zip archive, but not a Keras model
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UsageError, match="cannot load a Keras model"):
        publish.export_checkpoint(str(tmp_path / "fake.keras"), str(tmp_path / "out"), num_examples=0)
    with pytest.raises(UsageError, match="^num_examples=-1: must be >= 0"):
        publish.export_checkpoint(str(tmp_path / "fake.keras"), str(tmp_path / "out"), num_examples=-1)
    with pytest.raises(UsageError, match="must be a plain directory name"):
        saved_model.export_saved_model(small_convnet(), str(tmp_path), "12", {})
    assert not (tmp_path / "out").exists()


def test_cli_exports_the_best_model_with_metadata_measured_like_the_checkpoint(run, cli_export, reference):
    version_dir = cli_export["version_dir"]
    assert sorted(os.listdir(cli_export["dir"] / "tiny")) == ["1"], "no temporary directory may be left behind"
    assert {"saved_model.pb", "variables", "assets"} <= set(os.listdir(version_dir))
    assert f"exported {version_dir}" in cli_export["stdout"]
    meta = json.loads((version_dir / "assets" / "metadata.json").read_text())
    assert meta["version"] == 1 and meta["model_name"] == "tiny" and meta["checkpoint_kind"] == "best"
    assert meta["checkpoint"] == str(run["workdir"] / "checkpoints" / "best.keras")
    assert meta["dataset"] == run["config"]["dataset"] and meta["class_names"] == CIFAR_CLASSES
    assert meta["input_shape"] == [32, 32, 3] and meta["num_classes"] == 10
    assert meta["training"]["method"] == "fast_bat" and meta["training"]["hparams"]["lmbda"] == 10.0
    assert meta["training"]["eps"] == pytest.approx(8 / 255) and meta["eps"] == [pytest.approx(EPS_255 / 255)]
    assert meta["tensorflow_version"] == tf.__version__ and meta["preprocessing"] == "resize"
    np.testing.assert_allclose(meta["normalization"]["mean"], [0.49, 0.48, 0.45], atol=1e-6)
    np.testing.assert_allclose(meta["normalization"]["std"], [0.25, 0.24, 0.26], atol=1e-6)
    assert meta["training_evaluation"]["clean_accuracy"] == run["training_best"]["clean_accuracy"]
    # Measured on the artifact, with the workdir's seed 5 on its dataset's first N test examples: equal to PGD
    # through the Keras checkpoint.
    measured = meta["evaluation"]
    assert measured["num_examples"] == N and measured["measured_on"].startswith("the exported SavedModel")
    assert measured["seed"] == 5 and measured["dataset"] == run["config"]["dataset"]
    assert measured["clean_accuracy"] == reference["best"]["clean"].mean()
    assert measured["robust_accuracy"] == {"pgd-3-2": {"1/255": reference["best"]["robust"].mean()}}
    # Same examples, seed and attack as the workdir's report.json, whose (made-up) numbers differ: flagged.
    assert measured["agrees_with_training_evaluation"] is False


def test_bytes_signature_refuses_non_images_with_a_clear_message(cli_export):
    signature = tf.saved_model.load(str(cli_export["version_dir"])).signatures["predict_images_bytes"]
    good = png_bytes(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be a JPEG or PNG file; these indices are not:\] "
                                                             r"\[1 2\]"):
        signature(image_bytes=tf.constant([good, b"GIF89a not allowed", b""]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        signature(image_bytes=tf.constant([good[:60]]))  # a PNG header, then truncated


def test_load_logits_fn_errors_name_the_problem(tmp_path, cli_export):
    with pytest.raises(FileNotFoundError, match="no SavedModel directory at"):
        load_logits_fn(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a SavedModel"):
        load_logits_fn(str(tmp_path / "empty"))
    (tmp_path / "corrupt" / "4").mkdir(parents=True)
    (tmp_path / "corrupt" / "4" / "saved_model.pb").write_bytes(b"\x0a\xff garbage")
    with pytest.raises(UsageError, match=r"corrupt/4: TensorFlow cannot load this SavedModel \("):
        load_logits_fn(str(tmp_path / "corrupt"))
    with pytest.raises(UsageError, match=r"no signature 'nope' \(it has: predict_images_bytes, serving_default\)"):
        load_logits_fn(str(cli_export["version_dir"]), signature_name="nope")
    with pytest.raises(UsageError, match="input 'image_bytes' is string"):
        load_logits_fn(str(cli_export["version_dir"]), signature_name="predict_images_bytes")
    module = tf.Module()
    module.f = tf.function(lambda images: {"scores": tf.reduce_sum(images, [1, 2])},
                           input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32, name="images")])
    tf.saved_model.save(module, str(tmp_path / "foreign"), signatures={"serving_default": module.f})
    with pytest.raises(UsageError, match=r"has no 'logits' output \(it has: scores\)"):
        load_logits_fn(str(tmp_path / "foreign"))


def test_gradients_flow_through_the_loaded_signature(run, cli_export):
    """d logits[:, k] / d images through the SavedModel equals the gradient through the Keras model."""
    logits_fn = load_logits_fn(str(cli_export["version_dir"]))
    x = tf.constant(run["x"][:4])
    weights = tf.constant(np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32))
    gradients = []
    for fn in (logits_fn, lambda images: run["best"](images, training=False)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            objective = tf.reduce_sum(fn(x) * weights)
        gradients.append(tape.gradient(objective, x).numpy())
    assert np.abs(gradients[0]).max() > 0
    np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--model=/nonexistent/run"], "--model=/nonexistent/run: no such file or directory"),
    (["--model={tmp}"], "no checkpoints/best.keras or checkpoints/last.keras in this workdir"),
    (["--model={tmp}/model.h5"], "expected a training workdir or a .keras file"),
    (["--model={tmp}/broken.keras"], "not a .keras archive"),
    (["--model={tmp}/fake.keras", "--eps=0.03"], "--eps=0.03: eps is in 1/255 units"),
    (["--model={tmp}/fake.keras", "--num_examples=5"], "--dataset is required"),
    (["--model={tmp}/fake.keras", "--model_name=3"], "--model_name='3': must be a plain directory name"),
])
def test_cli_bad_input_gets_one_line(tmp_path, args, message):
    (tmp_path / "model.h5").write_bytes(b"x")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "fake.keras", "w") as archive:  # a zip, but not a Keras model
        archive.writestr("readme.txt", "hello")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = export_cli(*args, f"--export_dir={tmp_path}/out", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "tf_fastbat.export: error" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out" / "tf_fastbat" / "1")


# Collected last: these ran in the background while the in-process tests above ran.

def test_fresh_tensorflow_process_reproduces_the_keras_model_and_its_robustness(run, jobs, cli_export, reference):
    """Logits from tf.saved_model.load alone equal Keras; PGD through the signature equals PGD through Keras."""
    stdout, stderr = jobs["fresh"].communicate(timeout=600)
    assert jobs["fresh"].returncode == 0, stderr[-3000:]
    info = json.loads(stdout.strip().splitlines()[-1])
    out = np.load(jobs["out"])
    assert info["phase1_modules"] == [], "the first phase must import TensorFlow only"
    assert not info["model_code_loaded"], "the harness must not import the project's model code"

    x, y, best = run["x"], run["y"], run["best"]
    expected = keras_logits(best, x)
    assert np.abs(out["logits"] - expected).max() <= 1e-4
    shifted = expected - expected.max(1, keepdims=True)
    softmax = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], softmax, atol=1e-5)
    np.testing.assert_array_equal(out["classes"], expected.argmax(1))
    png_images = jobs["png_images"].astype(np.float32) / 255.0
    assert np.abs(out["png_logits"] - keras_logits(best, png_images)).max() <= 1e-4

    np.testing.assert_array_equal(out["pgd_robust"], reference["best"]["robust"])

    # AutoAttack (APGD-CE) through the SavedModel: no spurious warnings, and every example it reports broken is
    # misclassified by the Keras checkpoint at an x_adv inside the eps-ball and the image box.
    assert info["aa_warnings"] == []
    correct = jobs["correct"]
    x_aa, y_aa, x_adv = x[correct], y[correct], out["aa_x_adv"]
    assert np.abs(x_adv - x_aa).max() <= EPS_255 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = keras_logits(best, x_adv).argmax(1) != y_aa
    np.testing.assert_array_equal(~out["aa_robust"], fooled)
    assert fooled.any()


def test_saved_model_cli_lists_both_signatures(jobs, cli_export):
    stdout, stderr = jobs["show"].communicate(timeout=600)
    assert jobs["show"].returncode == 0, stderr[-2000:]
    default = stdout[stdout.index("signature_def['serving_default']"):]
    encoded = stdout[stdout.index("signature_def['predict_images_bytes']"):]
    assert "inputs['images']" in default and "DT_FLOAT" in default and "shape: (-1, 32, 32, 3)" in default
    assert "inputs['image_bytes']" in encoded and "DT_STRING" in encoded and "shape: (-1)" in encoded
    for name in ("logits", "probabilities", "classes"):
        assert f"outputs['{name}']" in default and f"outputs['{name}']" in encoded
