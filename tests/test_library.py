"""The README's library example runs as written, and its `method.gradients(model, x, y, noise)` call works for every
registered method, stateful ones included (their first training step, from fresh state)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tf_fastbat import methods

EPS = 8 / 255
THE_CALL = "grads, x_adv = method.gradients(model, x, y, noise)"
# The set each method's training input lies in: the eps-ball (N-FGSM: its 2 eps noise plus an eps step) and, but for
# ELLE-A (whose official x_adv is not clipped), the [0, 1] box.
RADIUS = {"n_fgsm": 3 * EPS, "standard": 0.0}
UNBOXED = {"elle_a"}


def library_example() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"### The library.*?```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def example() -> dict:
    """The README's block, executed as written: its namespace (x, y, noise, model, method, grads, x_adv)."""
    namespace = {}
    exec(compile(library_example(), "README.md", "exec"), namespace)
    return namespace


def check_step(name: str, namespace: dict) -> None:
    """Gradients aligned with the model's variables and finite; the training input in the method's set."""
    model, x = namespace["model"], np.asarray(namespace["x"])
    grads, x_adv = namespace["grads"], np.asarray(namespace["x_adv"])
    variables = model.trainable_variables
    assert len(grads) == len(variables)
    assert all(tuple(g.shape) == tuple(v.shape) and np.isfinite(g.numpy()).all() for g, v in zip(grads, variables))
    assert sum(float(np.abs(g.numpy()).sum()) for g in grads) > 0
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= RADIUS.get(name, EPS) + 1e-6
    if name not in UNBOXED:
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_the_readme_example_runs_as_written(example):
    assert THE_CALL in library_example()
    assert example["method"].name == "fast_bat"
    check_step("fast_bat", example)
    assert np.abs(np.asarray(example["x_adv"]) - example["x"]).max() > 0.5 * EPS  # it attacked


@pytest.mark.parametrize("name", methods.NAMES)
def test_the_readme_call_works_for_every_method(name, example):
    namespace = {**example, "method": methods.build(name, eps=EPS)}
    exec(THE_CALL, namespace)
    check_step(name, namespace)
    if name == "standard":  # the plain cross-entropy gradient at the clean batch, by its own tape
        model, x, y = namespace["model"], namespace["x"], namespace["y"]
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        for got, want in zip(namespace["grads"], tape.gradient(loss, model.trainable_variables)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(namespace["x_adv"]), x)
