"""The shipped robust model, pretrained:cifar10_fast_bat_eps8: it installs with the package, loads by name through
the library and the tools, matches its card (file hash, architecture), and its clean accuracy on the first 500
test images of the shared CIFAR-10 is the recorded figure."""

import json

import numpy as np
import pytest

from conftest import ROOT

NAME = "cifar10_fast_bat_eps8"
SHARED_FULL = ROOT.parent / "shared" / "data" / "cifar10.npz"


@pytest.fixture(scope="module")
def card():
    return json.loads((ROOT / "tf_fastbat" / "pretrained" / f"{NAME}.json").read_text())


@pytest.fixture(scope="module")
def first_500():
    """The first 500 test images of the shared full CIFAR-10, a missing file being a failure."""
    if not SHARED_FULL.exists():
        pytest.fail(f"missing {SHARED_FULL}: CI needs ../shared/data beside the clone")
    with np.load(SHARED_FULL) as data:
        return data["x_test"][:500].astype(np.float32) / 255.0, data["y_test"][:500].astype(np.int64)


def test_the_card_describes_the_file_and_the_run(card):
    import hashlib

    from tf_fastbat import pretrained

    assert pretrained.names() == (NAME,)
    data = (ROOT / "tf_fastbat" / "pretrained" / f"{NAME}.keras").read_bytes()
    assert hashlib.sha256(data).hexdigest() == card["sha256"]
    assert len(data) < 8 * 2 ** 20  # a few MB in the package
    settings = card["settings"]
    assert (settings["method"], settings["eps"], settings["architecture"], settings["width_multiplier"]) == \
        ("fast_bat", 8.0, "preact_resnet18", 0.25)
    assert settings["dataset"] == "cifar10" and card["accuracy"]["eps_255"] == 8
    for key in ("clean", "pgd_20_1", "clean_first_500"):
        assert 0.0 < card["accuracy"][key]["accuracy"] < 1.0


def test_its_clean_accuracy_on_the_first_500_test_images_is_the_recorded_figure(card, first_500):
    """Counted with plain Keras and NumPy on the shared data, independently of tf_fastbat.evaluation."""
    import keras
    import tensorflow as tf

    from tf_fastbat import models

    x, y = first_500
    model = models.load(f"pretrained:{NAME}")
    plain = keras.models.load_model(ROOT / "tf_fastbat" / "pretrained" / f"{NAME}.keras", compile=False)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    predicted = np.concatenate([np.argmax(plain(tf.constant(x[i:i + 100]), training=False).numpy(), 1)
                                for i in range(0, 500, 100)])
    recorded = card["accuracy"]["clean_first_500"]
    assert recorded["num_examples"] == 500
    assert int(np.sum(predicted == y)) == round(recorded["accuracy"] * 500)


@pytest.mark.slow
def test_it_loads_from_an_installed_package_and_evaluates_offline(tmp_path, card, installed):
    """A wheel built from the checkout and installed elsewhere (not the editable checkout: the `installed` fixture)
    carries the model: models.load and the evaluation tool reach it by name, offline, on the bundled slice (whose 500
    test images are the first 500 of CIFAR-10's test set)."""
    target = installed.target
    code = ("import tf_fastbat, tf_fastbat.pretrained as p\n"
            "from tf_fastbat import models\n"
            f"m = models.load('pretrained:{NAME}')\n"
            "print(tf_fastbat.__file__, p.model_file('" + f"pretrained:{NAME}" + "'), m.count_params())")
    run = installed.run([installed.python, "-c", code], cwd=tmp_path, timeout=300)
    package, model_file, _ = run.stdout.split()[-3:]
    assert package.startswith(str(target)) and model_file.startswith(str(target))
    report = tmp_path / "pretrained.json"
    installed.run([installed.python, "-m", "tf_fastbat.evaluate", f"--model=pretrained:{NAME}",
                   "--dataset=bundled:cifar10_slice", "--num_examples=100", "--attacks=none", "--plots=false",
                   "--gradient_alignment=false", f"--output={report}"], cwd=tmp_path, timeout=300)
    result = json.loads(report.read_text())
    assert result["num_examples"] == 100 and result["model_kind"] == "keras"
    assert not list(target.rglob("evaluation-*"))  # nothing written into the installed package
