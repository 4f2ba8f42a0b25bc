"""The robustness evaluation: PGD against closed forms on linear models, the transfer attack, the alignment metric,
model warnings, and the command line (subprocesses: bad input, a workdir run with every attack, SavedModels)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, SHARED_SLICE
from tf_fastbat import evaluation, metrics, report
from tf_fastbat.attacks.cleverhans_pgd import CleverhansPGD
from tf_fastbat.attacks.pgd import PGD
from tf_fastbat.attacks.transfer import TransferAttack

SHAPE = (4, 4, 3)  # 48 "pixels": linear models stay small
DIM = int(np.prod(SHAPE))


# ----------------------------------------------------------------------------------------------------------------
# Linear models and their closed forms (float64 numpy).

def linear_fn(w: np.ndarray, b: np.ndarray):
    """logits = flatten(x) @ w + b, as a TF callable."""
    w_t, b_t = tf.constant(w, tf.float32), tf.constant(b, tf.float32)
    return lambda images: tf.reshape(images, [-1, DIM]) @ w_t + b_t


def softmax_ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y]


def exact_linf_robust(w, b, x, y, eps):
    """Robust iff min_j (z_y - z_j)(x) - eps ||w_y - w_j||_1 > 0 for every j != y (box inactive: x in [eps, 1-eps])."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    z = flat @ w + b
    robust = np.ones(len(x), bool)
    for j in range(w.shape[1]):
        diff = w[:, y] - w[:, [j]]  # [DIM, n]
        margin = z[np.arange(len(x)), y] - z[:, j] - eps * np.abs(diff).sum(axis=0)
        robust &= (j == y) | (margin > 0)
    return robust


def interior_images(rng, n, eps):
    """Images whose every pixel is at least eps from 0 and 1, so that the box never binds."""
    return rng.uniform(eps + 0.05, 1 - eps - 0.05, size=(n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def binary_problem():
    """Two-class linear model, correctly labelled images, eps at the median certified radius (half robust)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(DIM, 2))
    b = -0.5 * w.sum(axis=0)  # centred on the grey image, so that margins are a few eps
    x = interior_images(rng, 200, 0.1)
    y = np.argmax(x.reshape(200, -1) @ w + b, axis=1)
    margin = np.abs((x.reshape(200, -1) @ (w[:, 1] - w[:, 0])) + b[1] - b[0])
    eps = float(np.median(margin / np.abs(w[:, 1] - w[:, 0]).sum()))
    assert eps < 0.1
    return w, b, x, y, eps


def test_pgd_reaches_the_closed_form_linf_optimum_of_a_linear_classifier(binary_problem):
    w, b, x, y, eps = binary_problem
    x_adv = PGD(linear_fn(w, b)).perturb(x, y, eps, steps=50, step_size=eps / 4, seed=[0, 0])
    # Optimal: move every pixel by eps against the sign of (w_y - w_other); the loss is monotone in the margin.
    direction = np.where(y[:, None] == 0, (w[:, 0] - w[:, 1])[None], (w[:, 1] - w[:, 0])[None])
    x_star = x.reshape(len(x), -1) - eps * np.sign(direction)
    np.testing.assert_allclose(x_adv.reshape(len(x), -1), x_star, atol=1e-6)
    loss_pgd = softmax_ce(x_adv.reshape(len(x), -1).astype(np.float64) @ w + b, y)
    loss_star = softmax_ce(x_star @ w + b, y)
    np.testing.assert_allclose(loss_pgd, loss_star, rtol=1e-5)


@pytest.mark.parametrize("attack", ["pgd", "cleverhans"])
def test_robust_accuracy_of_a_binary_linear_model_is_exact(binary_problem, attack):
    w, b, x, y, eps = binary_problem
    fn = linear_fn(w, b)
    if attack == "pgd":
        mask = PGD(fn).robust_mask(x, y, eps, steps=50, restarts=1, seed=3)
    else:
        mask = CleverhansPGD(fn).robust_mask(x, y, eps, steps=50, restarts=1, seed=3)
    expected = exact_linf_robust(w, b, x, y, eps)
    assert 0.3 < expected.mean() < 0.7
    np.testing.assert_array_equal(mask, expected)


def test_multiclass_linear_pgd_never_breaks_a_certified_example_and_finds_nearly_all_others():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(DIM, 5)), rng.normal(size=5) * 0.1
    x = interior_images(rng, 300, 0.05)
    y = rng.integers(0, 5, size=300)
    eps = 0.01
    exact = exact_linf_robust(w, b, x, y, eps)
    found = PGD(linear_fn(w, b)).robust_mask(x, y, eps, steps=50, restarts=3, seed=0)
    assert 0.05 < exact.mean() < 0.5
    assert np.all(found[exact])  # sound: no certified example is broken
    assert found.mean() - exact.mean() <= 0.02  # and PGD on the CE loss finds almost every breakable one
    # Progress reports cover each restart to its end and leave the result unchanged.
    reports = []
    again = PGD(linear_fn(w, b)).robust_mask(x, y, eps, 50, 3, seed=0, progress=lambda *r: reports.append(r))
    np.testing.assert_array_equal(again, found)
    last = {restart: (done, attacked) for restart, done, attacked in reports}  # each restart's final report
    assert sorted(last) == [0, 1, 2] and all(done == attacked for done, attacked in last.values())


def test_pgd_never_leaves_the_eps_ball_or_the_box():
    rng = np.random.default_rng(2)
    model = tf.keras.Sequential([tf.keras.Input(SHAPE), tf.keras.layers.Conv2D(4, 3, activation="tanh"),
                                 tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    x = rng.uniform(0, 1, size=(64, *SHAPE)).astype(np.float32)
    x[:16] = 0.0
    x[16:32] = 1.0
    x[32:48] = np.round(x[32:48])
    y = rng.integers(0, 10, size=64)
    for eps in (1 / 255, 8 / 255, 0.3):
        x_adv = PGD(lambda t: model(t)).perturb(x, y, eps, steps=7, step_size=eps / 4 * 3, seed=[1, 2])
        assert np.abs(x_adv - x).max() <= eps + 1e-6
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.abs(x_adv - x).max() >= eps * 0.99  # the attack does use its budget


def test_at_eps_zero_robust_accuracy_equals_clean_accuracy(binary_problem):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(DIM, 10)), rng.normal(size=10)
    x = rng.uniform(0, 1, size=(100, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 10, size=100)
    fn = linear_fn(w, b)
    clean = np.argmax(x.reshape(100, -1).astype(np.float64) @ w + b, axis=1) == y
    # The attack code itself (no eps == 0 shortcut): the perturbation is zero, so are the flips.
    x_adv = PGD(fn).perturb(x, y, 0.0, steps=10, step_size=0.0, seed=[0, 0])
    np.testing.assert_array_equal(x_adv, x)
    result = evaluation.evaluate_model(fn, x, y, [0, 8 / 255], ["pgd", "cleverhans_pgd"],
                                       evaluation.Settings(options={"pgd": {"steps": 5, "restarts": 2}, "cleverhans_pgd": {"steps": 5}}),
                                       alignment=False)
    assert result["clean_accuracy"] == pytest.approx(clean.mean())
    for name in ("pgd-5-2", "cleverhans-pgd-5"):
        assert result["robust_accuracy"][name]["0/255"] == pytest.approx(clean.mean())
        assert result["robust_accuracy"][name]["8/255"] < clean.mean()
    autoattack = evaluation.evaluate_model(fn, x, y, [0], ["autoattack"], alignment=False)
    assert autoattack["robust_accuracy"]["autoattack"]["0/255"] == pytest.approx(clean.mean())


# ----------------------------------------------------------------------------------------------------------------
# Transfer attacks.

def test_transfer_from_the_model_itself_is_the_white_box_optimum_and_from_its_mirror_breaks_nothing(binary_problem):
    w, b, x, y, eps = binary_problem
    victim = linear_fn(w, b)

    def transfer_robust_mask(surrogate, victim, x, y, eps, steps, seed):
        return TransferAttack(surrogate, "surrogate", steps, seed=seed).robust_mask(victim, x, y, eps)

    same = transfer_robust_mask(victim, victim, x, y, eps, steps=20, seed=0)
    np.testing.assert_array_equal(same, exact_linf_robust(w, b, x, y, eps))
    # A surrogate with the classes swapped climbs its own loss by raising the victim's margin: nothing breaks.
    mirror = linear_fn(w[:, ::-1].copy(), b[::-1].copy())
    np.testing.assert_array_equal(transfer_robust_mask(mirror, victim, x, y, eps, steps=20, seed=0),
                                  np.ones(len(x), bool))
    wrong = y.copy()
    wrong[:10] = 1 - wrong[:10]  # misclassified examples are never robust
    assert not transfer_robust_mask(mirror, victim, x, wrong, eps, steps=20, seed=0)[:10].any()


# ----------------------------------------------------------------------------------------------------------------
# Gradient alignment and the loss landscape.

def test_gradient_alignment_of_a_binary_linear_model_is_one(binary_problem):
    # grad_x CE = -(1 - p_y)(w_y - w_other): every input gradient is a positive multiple of the same vector.
    w, b, x, y, eps = binary_problem
    assert metrics.gradient_alignment(linear_fn(w, b), x, y, 8 / 255, seed=0) == pytest.approx(1.0, abs=1e-5)


def test_gradient_alignment_matches_a_monte_carlo_estimate_of_the_closed_form_gradients():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(DIM, 10)) * 3
    b = -0.5 * w.sum(axis=0)  # logits of comparable size: the softmax is not saturated, gradients turn
    x0 = interior_images(rng, 1, 0.1)
    y0 = np.array([3])
    eps, copies = 0.1, 2000
    value = metrics.gradient_alignment(linear_fn(w, b), np.repeat(x0, copies, 0), np.repeat(y0, copies), eps, seed=1)

    def gradient(points):  # grad_x CE of softmax(W^T x + b) = W (p - e_y)
        z = points @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[:, 3] -= 1
        return p @ w.T

    flat = x0.reshape(1, -1).astype(np.float64)
    noisy = flat + rng.uniform(-eps, eps, size=(20000, DIM))
    g0, g1 = gradient(flat), gradient(noisy)
    cos = (g1 @ g0[0]) / (np.linalg.norm(g1, axis=1) * np.linalg.norm(g0))
    assert 0.5 < cos.mean() < 0.95  # not a degenerate case (a linear model's gradients turn little)
    assert value == pytest.approx(cos.mean(), abs=0.005)  # Monte Carlo errors ~0.001 each


def test_loss_landscape_along_the_sign_gradient_matches_the_closed_form(binary_problem):
    w, b, x, y, _ = binary_problem
    eps = 0.05
    a, b_axis, loss = metrics.loss_landscape(linear_fn(w, b), x[:4], y[:4], eps, seed=0, grid=11)
    np.testing.assert_allclose(a, np.linspace(-eps, eps, 11))
    np.testing.assert_allclose(b_axis, np.linspace(-eps, eps, 11))
    flat = x[:4].reshape(4, -1).astype(np.float64)
    sign = np.where(y[:, None] == 0, np.sign(w[:, 1] - w[:, 0]), np.sign(w[:, 0] - w[:, 1]))[:4]
    expected = [softmax_ce((flat + a_i * sign) @ w + b, y[:4]).mean() for a_i in a]
    np.testing.assert_allclose(loss[:, 5], expected, rtol=1e-4)  # b = 0 column
    assert np.all(np.diff(loss[:, 5]) > 0)  # the sign-gradient direction ascends the loss
    assert np.abs(loss[:, 0] - loss[:, 5]).max() > 1e-4  # the Rademacher direction is used


def test_gradient_alignment_logger_records_one_value_per_epoch_into_the_csv_log(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, size=(64, *SHAPE)).astype(np.float32)
    y = (x.reshape(64, -1).mean(axis=1) > 0.5).astype(np.int64)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger = metrics.GradientAlignmentLogger(model, x[:32], y[:32], eps=8 / 255, seed=0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0,
              callbacks=[logger, keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 3 and len(logger.history) == 3
    for row in rows:  # a two-class linear model: gradients stay parallel, whatever the weights
        assert float(row["gradient_alignment"]) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Warnings about the model.

def test_a_model_that_outputs_probabilities_or_is_random_is_flagged(binary_problem):
    w, b, x, y, _ = binary_problem
    logits = linear_fn(w, b)
    probabilities = lambda t: tf.nn.softmax(logits(t))  # noqa: E731
    noisy = lambda t: logits(t) + tf.random.normal([tf.shape(t)[0], 2])  # noqa: E731
    assert evaluation.model_warnings(logits, x, y) == []
    assert any("probability" in m for m in evaluation.model_warnings(probabilities, x, y))
    assert any("randomized" in m for m in evaluation.model_warnings(noisy, x, y))
    result = evaluation.evaluate_model(noisy, x[:20], y[:20], [8 / 255], ["pgd"],
                                       evaluation.Settings(options={"pgd": {"steps": 2, "restarts": 1}}))
    assert any("randomized" in m for m in result["warnings"])


# ----------------------------------------------------------------------------------------------------------------
# The command line.

def run_cli(*args, timeout=600, cwd=ROOT):
    """The evaluation tool in a subprocess; from another `cwd` it still imports this checkout's package."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tf_fastbat.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if "tf_fastbat.evaluate: error" in l]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def save_logits_saved_model(logits_fn, path, variables=(), signature=True):
    """A SavedModel whose serving_default maps float32 images to {"logits": ...} (or no signature at all)."""
    module = tf.Module()
    module.model_variables = list(variables)

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="images")])
    def serve(images):
        return {"logits": logits_fn(images)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve} if signature else {})
    return str(path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, cifar_slice):
    """A workdir with a briefly trained CNN, the CNN as a SavedModel, a probability model, a random SavedModel."""
    import keras

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    cnn = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    cnn.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cnn.fit(cifar_slice["x_train"][:1500] / 255.0, cifar_slice["y_train"][:1500].reshape(-1), epochs=2,
            batch_size=64, verbose=0)
    workdir = root / "run1"
    (workdir / "checkpoints").mkdir(parents=True)
    cnn.save(workdir / "checkpoints" / "best.keras")
    (workdir / "config.json").write_text(json.dumps({"dataset": f"npz:{SHARED_SLICE}", "eps": 8.0, "seed": 1}))
    with open(workdir / "training_log.csv", "w") as f:
        f.write("epoch,accuracy,loss,learning_rate,epoch_seconds,val_clean_accuracy,val_robust_accuracy\n"
                "0,0.2,2.1,0.1,3.0,0.25,0.1\n1,0.3,1.9,0.05,2.9,0.3,0.15\n")
    save_logits_saved_model(lambda t: cnn(t, training=False), root / "cnn_saved", cnn.variables)
    keras.Sequential([cnn, keras.layers.Softmax()]).save(root / "probabilities.keras")
    kernel = tf.Variable(np.random.default_rng(0).normal(size=(3072, 10)).astype(np.float32) * 0.01)
    save_logits_saved_model(lambda t: tf.reshape(t, [-1, 3072]) @ kernel + tf.random.normal([tf.shape(t)[0], 10]),
                            root / "random_saved", [kernel])
    save_logits_saved_model(lambda t: tf.reshape(t, [-1, 3072])[:, :10], root / "no_signature", signature=False)
    return root, cnn


@pytest.mark.parametrize("args,message", [
    (["--model=/nonexistent/model.keras"], "--model=/nonexistent/model.keras: no such file or directory"),
    (["--model={workdir}", "--attacks=pgd,fgsm"], "--attacks: unknown attack 'fgsm'"),
    (["--model={workdir}", "--eps=0.03"], "--eps=0.03: eps is in 1/255 units"),
    (["--model={workdir}", "--eps=300"], "--eps=300: must be in [0, 255]"),
    (["--model={workdir}", "--eps=-2"], "--eps=-2: must be in [0, 255]"),
    (["--model={workdir}", "--attacks=transfer"], "--attacks=transfer needs --surrogate"),
    (["--model={workdir}", "--aa_version=fast"], "--aa_version=fast: choose one of standard, plus, rand"),
])
@pytest.mark.slow
def test_bad_input_gets_one_clear_line_and_exit_code_2(models_dir, args, message):
    root, _ = models_dir
    result = run_cli(*[a.format(workdir=root / "run1") for a in args], timeout=120)
    assert_one_line_error(result, message)
    assert not (root / "run1" / "evaluation.json").exists()


@pytest.mark.slow
def test_a_saved_model_without_a_usable_signature_is_refused(models_dir):
    root, _ = models_dir
    result = run_cli(f"--model={root / 'no_signature'}", f"--dataset=npz:{SHARED_SLICE}", "--num_examples=8",
                     "--attacks=none", timeout=300)
    assert_one_line_error(result, "no signature 'serving_default'")


@pytest.mark.slow
def test_workdir_run_with_every_attack_writes_report_table_and_plots(models_dir, cifar_slice):
    root, cnn = models_dir
    workdir = root / "run1"
    n = 40
    other = root / "other.json"
    other.write_text(json.dumps({"clean_accuracy": 0.5, "robust_accuracy": {"pgd-5-2": {"8/255": 0.25}}}))
    result = run_cli(f"--model={workdir}", "--eps=0,8", f"--num_examples={n}", "--pgd_steps=5", "--pgd_restarts=2",
                     "--cleverhans_steps=5", "--attacks=pgd,cleverhans_pgd,autoattack,transfer",
                     f"--surrogate={root / 'cnn_saved'}", "--transfer_steps=5", "--batch_size=16",
                     f"--compare={other}")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((workdir / "evaluation.json").read_text())
    x = cifar_slice["x_test"][:n] / 255.0
    y = cifar_slice["y_test"][:n].reshape(-1)
    clean = float(np.mean(np.argmax(cnn.predict(x, verbose=0), axis=1) == y))
    assert saved["clean_accuracy"] == pytest.approx(clean)
    assert saved["num_examples"] == n and saved["seed"] == 0 and saved["dataset"] == f"npz:{SHARED_SLICE}"
    names = {"pgd-5-2", "cleverhans-pgd-5", "autoattack", "transfer-cnn_saved"}
    assert set(saved["robust_accuracy"]) == names and set(saved["attack_seconds"]) == names
    assert set(saved["attack_settings"]) == names
    for name in names:
        assert set(saved["robust_accuracy"][name]) == {"0/255", "8/255"}
        assert saved["robust_accuracy"][name]["0/255"] == pytest.approx(clean)
        assert 0 <= saved["robust_accuracy"][name]["8/255"] <= clean
    assert saved["robust_accuracy"]["pgd-5-2"]["8/255"] < clean  # a weak model at 8/255: PGD breaks examples
    assert set(saved["autoattack_details"]) == {"8/255"}
    assert saved["warnings"] == []
    assert set(saved["gradient_alignment"]) == {"0/255", "8/255"}
    assert saved["gradient_alignment"]["0/255"] == pytest.approx(1.0, abs=1e-5)
    table = (workdir / "evaluation.md").read_text()
    assert "| run1 |" in table and "RA autoattack @ 8/255" in table and table.strip() in result.stdout
    assert "| other | 50.00 |" in table and "| 25.00 |" in table  # the --compare report's row
    for kind in ("ra_vs_eps", "training_curves", "loss_landscape", "autoattack"):
        png = workdir / f"evaluation-{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved["plots"][kind] == str(png)


@pytest.mark.slow
def test_a_saved_model_is_evaluated_like_the_keras_model_it_came_from(models_dir, cifar_slice):
    from tf_fastbat.serving.loading import load_logits_fn

    root, cnn = models_dir
    x = (cifar_slice["x_test"][:64] / 255.0).astype(np.float32)
    y = cifar_slice["y_test"][:64].reshape(-1)
    settings = evaluation.Settings(options={"pgd": {"steps": 5, "restarts": 1}})
    from_keras = evaluation.evaluate_model(lambda t: cnn(t, training=False), x, y, [2 / 255], ["pgd"], settings)
    from_saved = evaluation.evaluate_model(load_logits_fn(str(root / "cnn_saved")), x, y, [2 / 255], ["pgd"],
                                           settings)
    assert from_saved["clean_accuracy"] == from_keras["clean_accuracy"]
    assert abs(from_saved["robust_accuracy"]["pgd-5-1"]["2/255"] -
               from_keras["robust_accuracy"]["pgd-5-1"]["2/255"]) <= 1 / 64


@pytest.mark.slow
def test_an_npz_with_only_test_arrays_is_enough_to_evaluate(models_dir, cifar_slice, tmp_path):
    root, cnn = models_dir
    n = 24
    test_only = tmp_path / "test_only.npz"
    np.savez(test_only, x_test=cifar_slice["x_test"][:n], y_test=cifar_slice["y_test"][:n])
    output = tmp_path / "out.json"
    result = run_cli(f"--model={root / 'run1'}", f"--dataset=npz:{test_only}", "--attacks=none", "--plots=false",
                     "--gradient_alignment=false", f"--output={output}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    x, y = cifar_slice["x_test"][:n] / 255.0, cifar_slice["y_test"][:n].reshape(-1)
    expected = float(np.mean(np.argmax(cnn.predict(x, verbose=0), axis=1) == y))
    saved = json.loads(output.read_text())
    assert saved["num_examples"] == n and saved["clean_accuracy"] == pytest.approx(expected)


def snapshot(folder) -> dict:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_evaluating_an_export_writes_nothing_into_it(models_dir, tmp_path):
    """A TF Serving model directory (exports/NAME/VERSION) is served as it is: the report, table and PNGs go to
    runs/evaluate/<name>/ under the current directory (they went beside the model, into exports/, before)."""
    import shutil

    root, _ = models_dir
    exports = tmp_path / "exports"
    shutil.copytree(root / "cnn_saved", exports / "tiny" / "1")
    before = snapshot(exports)
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli(f"--model={exports / 'tiny'}", f"--dataset=npz:{SHARED_SLICE}", "--num_examples=8",
                     "--attacks=pgd", "--pgd_steps=1", "--pgd_restarts=1", "--gradient_alignment=false",
                     timeout=300, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot(exports) == before
    out = work / "runs" / "evaluate" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["evaluation-tiny.json", "evaluation-tiny.md", "evaluation-tiny-ra_vs_eps.png",
         "evaluation-tiny-loss_landscape.png"])
    assert (out / "evaluation-tiny-ra_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model,expected", [("probabilities.keras", "probability distribution"),
                                            ("random_saved", "randomized defense")])
@pytest.mark.slow
def test_cli_warns_about_probabilities_and_random_models(models_dir, tmp_path, model, expected):
    root, _ = models_dir
    output = tmp_path / "out.json"
    result = run_cli(f"--model={root / model}", f"--dataset=npz:{SHARED_SLICE}", "--num_examples=32",
                     "--attacks=none", "--plots=false", f"--output={output}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(expected in line for line in result.stderr.splitlines() if "warning" in line)
    saved = json.loads(output.read_text())
    assert any(expected in m for m in saved["warnings"]) and saved["robust_accuracy"] == {}
    assert (tmp_path / "out.md").exists()


def test_eps_keys_round_trip():
    for value in (0, 2, 8, 16, 2.5):
        assert report.parse_eps_key(report.eps_key(value / 255)) == value
    with pytest.raises(ValueError):
        report.parse_eps_key("0.03")
