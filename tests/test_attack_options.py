"""An attack with its own option is one file and one registry line (ARCHITECTURE.md, "Adding an attack"): the
example, defined outside the package and registered, runs through the evaluation tool with its option as a flag
made from its dataclass field (help, default, check), and measures what a replay of its noise draws in NumPy gives."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_SLICE

EPS = 64  # 1/255 units: large enough that uniform draws flip a few of this classifier's predictions
N = 60


def example_code() -> str:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    return re.search(r"## Adding an attack.*?```python\n(.*?)```", text, re.S).group(1)


def run_tool(tmp_path, *args):
    """The example module, then the evaluation tool's console entry point, in a fresh process."""
    script = tmp_path / "noise_then_evaluate.py"
    script.write_text(example_code() + "\nimport sys\nfrom tf_fastbat import evaluate\n"
                      "sys.argv = ['tf-fastbat-evaluate', *sys.argv[1:]]\nevaluate.console_main()\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A nearest-class-mean linear classifier (a .keras file) and the first N shared test images (a test-only npz)."""
    import keras

    if not SHARED_SLICE.exists():
        pytest.fail(f"missing {SHARED_SLICE}")
    root = tmp_path_factory.mktemp("noise")
    with np.load(SHARED_SLICE) as data:
        x_uint8, y = data["x_test"][:N], data["y_test"][:N].reshape(-1).astype(np.int64)
    np.savez(root / "test_only.npz", x_test=x_uint8, y_test=y)
    x = x_uint8.reshape(N, -1).astype(np.float32) / 255.0
    means = np.stack([x[y == c].mean(0) if np.any(y == c) else x.mean(0) for c in range(10)], 1)  # (3072, 10)
    kernel, bias = means.astype(np.float32), (-0.5 * (means ** 2).sum(0)).astype(np.float32)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(10, name="logits")])
    model.get_layer("logits").set_weights([kernel, bias])
    model.save(root / "centroids.keras")
    return root, x_uint8.astype(np.float32) / 255.0, y, kernel, bias


def replay(x, y, kernel, bias, trials: int, seed: int, eps: float) -> float:
    """The example's attack in NumPy: `trials` uniform draws in the eps-ball from default_rng(seed), clipped to
    [0, 1]; robust when right on the clean image and on every draw."""
    predict = lambda images: np.argmax(images.reshape(len(images), -1) @ kernel + bias, 1)  # noqa: E731
    rng = np.random.default_rng(seed)
    robust = predict(x) == y
    for _ in range(trials):
        noise = rng.uniform(-eps, eps, x.shape).astype(np.float32)
        robust &= predict(np.clip(x + noise, 0.0, 1.0)) == y
    return float(np.mean(robust))


@pytest.mark.slow
def test_the_example_attack_runs_through_the_tool_with_its_option_as_a_flag(problem, tmp_path):
    root, x, y, kernel, bias = problem
    output = tmp_path / "noise.json"
    result = run_tool(tmp_path, f"--model={root / 'centroids.keras'}", f"--dataset=npz:{root / 'test_only.npz'}",
                      "--attacks=noise", "--noise_trials=3", f"--eps={EPS}", "--seed=5", "--plots=false",
                      "--gradient_alignment=false", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["attack_settings"]["noise"] == {"implementation": "NoiseAttack", "trials": 3, "seed": 5}
    expected = replay(x, y, kernel, bias, trials=3, seed=5, eps=EPS / 255)
    clean = float(np.mean(np.argmax(x.reshape(N, -1) @ kernel + bias, 1) == y))
    assert report["clean_accuracy"] == pytest.approx(clean, abs=1e-9)
    assert report["robust_accuracy"]["noise"][f"{EPS}/255"] == pytest.approx(expected, abs=1e-9)
    one_trial = replay(x, y, kernel, bias, trials=1, seed=5, eps=EPS / 255)
    assert expected < one_trial < clean  # the option changes the measurement: three draws break more than one


@pytest.mark.slow
def test_the_example_option_is_checked_and_documented_by_the_tool(problem, tmp_path):
    root = problem[0]
    refused = run_tool(tmp_path, f"--model={root / 'centroids.keras'}", "--attacks=noise", "--noise_trials=0")
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [line for line in refused.stderr.splitlines() if "error" in line]
    assert lines == ["tf_fastbat.evaluate: error: --noise_trials=0: must be a whole number >= 1"], refused.stderr
    shown = run_tool(tmp_path, "--help")
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("--noise_trials"))
    entry = " ".join(lines[at:at + 3])
    assert "[default: 1]" in lines[at] and "Noise draws per image" in entry and "(--attacks=noise)" in entry


def test_options_in_the_library_are_checked_naming_the_option():
    from tf_fastbat import attacks, evaluation
    from tf_fastbat.attacks.base import options
    from tf_fastbat.fields import HParamError

    with pytest.raises(HParamError, match=r"^restarts=0: must be a whole number >= 1$"):
        attacks.build("pgd", evaluation.Settings(options={"pgd": {"restarts": 0}}))
    with pytest.raises(ValueError, match="pgd options step: unknown; pgd takes restarts, steps"):
        options("pgd", {"step": 3})
    built = attacks.build("pgd", evaluation.Settings(options={"pgd": {"steps": 7}}))
    assert (built.steps, built.restarts) == (7, 10)  # the rest from PGDOptions' defaults
