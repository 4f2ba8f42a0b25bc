"""The library's units, checked in the library: eps and step sizes are fractions of the [0, 1] pixel range (eps=8 is
refused with the 8/255 reading), images are in [0, 1] (uint8, [0, 255] floats and standardized images are refused,
naming a Rescaling(1/255) layer when the model has one); evaluation takes a tf.data.Dataset as well as arrays."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fastbat import evaluation, methods
from tf_fastbat.errors import UsageError
from tf_fastbat.methods.elle import ElleA
from tf_fastbat.methods.fast_at import FastAT
from tf_fastbat.trainer import assemble, sgd

SHAPE = (4, 4, 3)
DIM = int(np.prod(SHAPE))
HINT = "the library takes fractions of the [0, 1] pixel range; did you mean"


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------------------------
# eps and step sizes

def test_eps_8_is_refused_with_its_reading_in_1_255_units():
    with pytest.raises(UsageError) as error:
        methods.build("fast_bat", eps=8)
    assert one_line(error) == f"eps=8: {HINT} 8/255 = {8 / 255:.4f}?"  # 0.0314


@pytest.mark.parametrize("name,hparams,field", [
    ("fast_at", {"attack_lr": 10}, "attack_lr=10"),
    ("pgd", {"attack_lr": 2}, "attack_lr=2"),
    ("n_fgsm", {"noise_magnitude": 16}, "noise_magnitude=16"),
    ("nu_at", {"init_magnitude": 4}, "init_magnitude=4"),
    ("elle_a", {"eps": 16}, "eps=16"),
    ("liet", {"eps": 8}, "eps=8"),
])
def test_step_sizes_in_1_255_units_are_refused_naming_the_parameter(name, hparams, field):
    with pytest.raises(UsageError) as error:
        methods.build(name, **{"eps": 8 / 255, **hparams})
    value = float(field.split("=")[1])
    assert one_line(error) == f"{field}: {HINT} {value:g}/255 = {value / 255:.4f}?"


@pytest.mark.parametrize("eps", [0.0, -0.03, float("nan"), 300.0])
def test_eps_outside_0_1_is_refused_for_a_method_that_attacks(eps):
    with pytest.raises(UsageError, match=r"^eps="):
        methods.build("fast_at", eps=eps)


def test_fractions_pass_and_the_official_fast_bat_step_is_not_a_pixel_fraction():
    assert methods.build("fast_bat", eps=8 / 255, attack_lr=5000 / 255).step_size() == pytest.approx(19.6078, 1e-4)
    assert methods.build("fast_at", eps=1.0, attack_lr=1.0).eps == 1.0
    assert methods.build("standard", eps=0.0).eps == 0.0  # nothing is attacked: eps 0 is standard training


def test_direct_construction_is_checked_and_the_trainer_checks_what_construction_could_not():
    with pytest.raises(UsageError, match=r"^eps=8: "):
        FastAT(eps=8)
    with pytest.raises(UsageError, match=r"^eps=8: "):
        ElleA(eps=8)  # every method checks its fields at construction (fields.validate)
    elle = ElleA(eps=8 / 255)
    object.__setattr__(elle, "eps", 8)  # what construction could not see: a field changed afterwards
    with pytest.raises(UsageError, match=r"^eps=8: "):
        assemble(tiny_classifier(), elle, sgd(0.01, 0.9, 0.0), seed=0)


# ----------------------------------------------------------------------------------------------------------------
# evaluation

def linear_problem(n=40, seed=0):
    """A two-class linear model (PGD finds its L-inf optimum exactly) and interior [0, 1] images (every pixel at
    least 0.1 from the box, so that the box never binds at eps <= 0.1), a few of them labelled wrong."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(DIM, 2))
    b = -0.5 * w.sum(axis=0)  # centred on the grey image: margins of a few eps
    x = rng.uniform(0.1, 0.9, size=(n, *SHAPE)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ w + b, axis=1)
    y[:5] = 1 - y[:5]
    w_t, b_t = tf.constant(w, tf.float32), tf.constant(b, tf.float32)
    return (lambda images: tf.reshape(images, [-1, DIM]) @ w_t + b_t), w, b, x, y


def exact_linf_robust(w, b, x, y, eps):
    """Closed form when the box does not bind: robust iff (z_y - z_other)(x) > eps ||w_y - w_other||_1."""
    z = x.reshape(len(x), -1).astype(np.float64) @ w + b
    rows = np.arange(len(x))
    return z[rows, y] - z[rows, 1 - y] - eps * np.abs(w[:, 1] - w[:, 0]).sum() > 0


def clean_accuracy(w, b, x, y):
    return float(np.mean(np.argmax(x.reshape(len(x), -1).astype(np.float64) @ w + b, axis=1) == y))


@pytest.mark.parametrize("call", ["robustness", "evaluate_model"])
def test_evaluation_refuses_eps_in_1_255_units_and_keeps_eps_0(call):
    fn, w, b, x, y = linear_problem()
    from tf_fastbat.attacks.pgd import PGDAttack

    measure = (lambda eps: evaluation.robustness(fn, x, y, eps, [PGDAttack(2, 1)])) if call == "robustness" else \
        (lambda eps: evaluation.evaluate_model(fn, x, y, eps, ["pgd"],
                                               evaluation.Settings(options={"pgd": {"steps": 2, "restarts": 1}}),
                                               alignment=False))
    with pytest.raises(UsageError) as error:
        measure([0, 8])
    assert one_line(error) == f"eps=8: {HINT} 8/255 = 0.0314?"
    clean = clean_accuracy(w, b, x, y)
    result = measure([0])
    assert result["clean_accuracy"] == pytest.approx(clean) and result["robust_accuracy"]["pgd-2-1"]["0/255"] == \
        pytest.approx(clean)


@pytest.mark.parametrize("scale,expected", [
    (255.0, "divide the images by 255"),  # [0, 255] floats
    ("uint8", "divide the images by 255"),
    ("standardized", "put any mean/std normalization inside the model"),
])
def test_evaluation_refuses_images_outside_0_1_with_what_to_do(scale, expected):
    fn, _, _, x, y = linear_problem()
    if scale == "uint8":
        images = np.round(x * 255).astype(np.uint8)
    elif scale == "standardized":
        images = (x - 0.5) / 0.25
    else:
        images = x * scale
    with pytest.raises(UsageError) as error:
        evaluation.evaluate_model(fn, images, y, [8 / 255], ["pgd"], alignment=False)
    assert expected in one_line(error) and one_line(error).startswith("x: values in [")


def test_evaluation_of_a_dataset_equals_the_evaluation_of_its_arrays():
    fn, w, b, x, y = linear_problem(n=45)
    z = x.reshape(45, -1).astype(np.float64) @ w + b
    radius = np.abs(z[:, 1] - z[:, 0]) / np.abs(w[:, 1] - w[:, 0]).sum()  # each point's certified L-inf radius
    eps = float(np.median(radius))
    keep = np.abs(radius - eps) > 1e-3  # none at the boundary, where float32 could go either way
    x, y = x[keep], y[keep]
    settings = evaluation.Settings(seed=3, options={"pgd": {"steps": 10, "restarts": 2}})
    from_arrays = evaluation.evaluate_model(fn, x, y, [0, eps], ["pgd"], settings)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)  # batches of 7 and a partial last one
    from_dataset = evaluation.evaluate_model(fn, dataset, None, [0, eps], ["pgd"], settings)
    key = evaluation.report.eps_key(eps)
    robust = np.mean(exact_linf_robust(w, b, x, y, eps))
    assert 0 < robust < clean_accuracy(w, b, x, y)
    for result in (from_arrays, from_dataset):  # both against the closed forms...
        assert result["num_examples"] == len(x)
        assert result["clean_accuracy"] == pytest.approx(clean_accuracy(w, b, x, y))
        assert result["robust_accuracy"]["pgd-10-2"][key] == pytest.approx(robust)
    assert from_dataset["robust_accuracy"] == from_arrays["robust_accuracy"]  # ...and each other
    assert from_dataset["gradient_alignment"] == pytest.approx(from_arrays["gradient_alignment"])
    examples = tf.data.Dataset.from_tensor_slices((x, y))  # single examples, not batches
    unbatched = evaluation.robustness(fn, examples, None, [eps], evaluation.build_attacks(["pgd"], settings))
    assert unbatched["robust_accuracy"]["pgd-10-2"][key] == pytest.approx(robust)


def test_a_dataset_with_separate_labels_or_uint8_images_is_refused():
    fn, _, _, x, y = linear_problem()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(UsageError, match=r"^y: "):
        evaluation.robustness(fn, dataset, y, [0.03], [])
    raw = tf.data.Dataset.from_tensor_slices((np.round(x * 255).astype(np.uint8), y)).batch(8)
    with pytest.raises(UsageError, match="divide the images by 255"):
        evaluation.robustness(fn, raw, None, [0.03], [])


# ----------------------------------------------------------------------------------------------------------------
# training

def tiny_classifier(rescaling: bool = False) -> keras.Model:
    layers = [keras.Input(SHAPE)] + ([keras.layers.Rescaling(1 / 255, name="to_unit")] if rescaling else []) + [
        keras.layers.Flatten(), keras.layers.Dense(3)]
    return keras.Sequential(layers)


def trainer_for(classifier):
    return assemble(classifier, methods.build("fast_at", eps=8 / 255), sgd(0.01, 0.9, 0.0), seed=0)


@pytest.mark.parametrize("data", ["floats_255", "uint8_dataset"])
def test_training_refuses_0_255_images_before_the_first_step(data):
    _, _, _, x, y = linear_problem()
    trainer = trainer_for(tiny_classifier())
    weights = [v.numpy() for v in trainer.classifier.weights]
    with pytest.raises(UsageError) as error:
        if data == "floats_255":
            trainer.fit(x * 255.0, y, batch_size=8, epochs=1, verbose=0)
        else:
            trainer.fit(tf.data.Dataset.from_tensor_slices((np.round(x * 255).astype(np.uint8), y)).batch(8),
                        epochs=1, verbose=0)
    assert one_line(error).startswith("training images: values in [")
    assert "divide the images by 255" in one_line(error)
    assert int(trainer.optimizer.iterations.numpy()) == 0  # refused before any step
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights, trainer.classifier.weights))


def test_training_names_the_models_rescaling_layer_and_accepts_0_1_images():
    _, _, _, x, y = linear_problem()
    with pytest.raises(UsageError, match="remove the model's Rescaling layer 'to_unit'"):
        trainer_for(tiny_classifier(rescaling=True)).fit(x * 255.0, y, batch_size=8, epochs=1, verbose=0)
    trainer = trainer_for(tiny_classifier())
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 5  # 40 images in batches of 8
