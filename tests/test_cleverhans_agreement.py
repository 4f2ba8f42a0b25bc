"""The in-house PGD against a second library: cleverhans' projected_gradient_descent on the same model and examples.

A small CNN trained for a few epochs on part of the shared CIFAR-10 slice; at radii where the attack breaks some
but not all examples, both PGDs (50 steps of eps/4 from a random start) must agree within 1 point of RA.
"""

import numpy as np
import pytest

from tf_fastbat.attacks.cleverhans_pgd import CleverhansPGD, cleverhans_name
from tf_fastbat.attacks.pgd import PGD

NUM_EXAMPLES = 1000


@pytest.fixture(scope="module")
def trained(cifar_slice):
    """(logits_fn, x, y): a conv-dense net after 4 epochs on 3000 training images; the first 1000 test images."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(cifar_slice["x_train"][:3000] / 255.0, cifar_slice["y_train"][:3000].reshape(-1), epochs=4,
              batch_size=64, verbose=0)
    x = (cifar_slice["x_test"][:NUM_EXAMPLES] / 255.0).astype(np.float32)
    y = cifar_slice["y_test"][:NUM_EXAMPLES].reshape(-1).astype(np.int64)
    return (lambda images: model(images, training=False)), x, y, model


@pytest.mark.parametrize("eps_255,restarts", [(1, 1), (2, 1), (2, 3)])
def test_in_house_and_cleverhans_pgd_agree_within_one_point(trained, eps_255, restarts):
    logits_fn, x, y, model = trained
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    ours = PGD(logits_fn, 500).robust_mask(x, y, eps_255 / 255.0, steps=50, restarts=restarts, seed=0)
    theirs = CleverhansPGD(logits_fn, 500).robust_mask(x, y, eps_255 / 255.0, steps=50, restarts=restarts, seed=1)
    # Non-trivial regime: each attack breaks a good share of the correct examples, but not all of them.
    assert 0.02 < theirs.mean() < clean - 0.03, (theirs.mean(), clean)
    assert abs(ours.mean() - theirs.mean()) <= 0.01, (ours.mean(), theirs.mean())
    # Not just equal rates: the same examples survive (a robust example is robust to both attacks).
    assert np.mean(ours != theirs) <= 0.01


def test_cleverhans_wrapper_stays_in_the_ball_and_the_box(trained):
    logits_fn, x, y, _ = trained
    x = x[:64].copy()
    x[:, :4] = 0.0
    x[:, -4:] = 1.0  # saturated pixels: the box constraint is active there
    eps = 8 / 255
    x_adv = CleverhansPGD(logits_fn).perturb(x, y[:64], eps, steps=10, eps_iter=eps / 4)
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > eps / 2  # it did move


def test_report_names():
    assert cleverhans_name(50) == "cleverhans-pgd-50"
    assert cleverhans_name(50, 5) == "cleverhans-pgd-50-5"
