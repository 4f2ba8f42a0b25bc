"""Architectures: sizes known from the PyTorch model zoo, normalization inside, logits out."""

import numpy as np
import pytest
import keras

from tf_fastbat import models


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def test_preact_resnet18_has_the_pytorch_parameter_count():
    # The official zoo's PreActResNet18 (final BN included), counted layer by layer:
    # stem 1,728 + stage1 147,968 + stage2 525,184 + stage3 2,098,944 + stage4 8,392,192 + bn 1,024 + linear 5,130
    assert trainable_count(models.build("preact_resnet18")) == 11_172_170


def test_resnet18_has_the_pytorch_parameter_count():
    assert trainable_count(models.build("resnet18")) == 11_173_962  # torch ResNet18 (CIFAR stem)


def test_normalization_is_inside_the_model():
    """model(x) equals the same weights applied to (x - mean) / std with an identity normalization."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    normalized = models.build("preact_resnet18", width_multiplier=0.125, mean=mean, std=std)
    identity = models.build("preact_resnet18", width_multiplier=0.125, mean=(0, 0, 0), std=(1, 1, 1))
    for source, target in zip(normalized.layers, identity.layers):
        if source.name != "normalize":
            target.set_weights(source.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    expected = identity((x - np.array(mean, np.float32)) / np.array(std, np.float32), training=False)
    np.testing.assert_allclose(normalized(x, training=False), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "softplus", "swish"])
def test_activations_and_save_load_round_trip(tmp_path, activation):
    model = models.build("preact_resnet18", width_multiplier=0.125, activation=activation)
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(models.load(path)(x), model(x), atol=1e-6)


def test_softplus_has_the_zoo_beta_of_ten():
    layer = models.layers.ScaledSoftplus(10.0)
    x = np.array([-1.0, 0.0, 0.3], np.float32)
    np.testing.assert_allclose(layer(x), np.log1p(np.exp(10 * x)) / 10, rtol=1e-6)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown --model"):
        models.build("vgg16")
    with pytest.raises(ValueError, match="unknown --activation"):
        models.build("preact_resnet18", activation="gelu")
    with pytest.raises(FileNotFoundError, match="nowhere.keras"):
        models.load("nowhere.keras")


def test_initialization_differs_across_layers_and_repeats_with_the_seed():
    keras.utils.set_random_seed(11)
    first = models.build("preact_resnet18", width_multiplier=0.125)
    keras.utils.set_random_seed(11)
    again = models.build("preact_resnet18", width_multiplier=0.125)
    a = first.get_layer("stage1_block1_conv2").get_weights()[0]
    b = first.get_layer("stage1_block2_conv1").get_weights()[0]
    assert a.shape == b.shape and not np.allclose(a, b)
    for w1, w2 in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    bound = 1 / np.sqrt(3 * 3 * a.shape[2])  # torch's U(+-1/sqrt(fan_in))
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
