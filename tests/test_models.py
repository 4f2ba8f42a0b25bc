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
    with pytest.raises(ValueError, match=r"^architecture='vgg16': unknown; choose one of"):
        models.build("vgg16")
    with pytest.raises(ValueError, match=r"^activation='gelu': unknown; choose one of"):
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


@pytest.mark.parametrize("kernel", [3, 1, 7])
def test_strided_convolutions_sample_like_torch(kernel):
    """torch's Conv2d(stride=2, padding=kernel // 2); Keras 'same' would pad 0 before and 1 after instead."""
    import torch
    import torch.nn.functional as F

    inputs = keras.Input((16, 16, 4))
    layer_model = keras.Model(inputs, models.layers.conv(5, kernel, 2, name="downsample")(inputs))
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 4)).astype(np.float32)
    weight = torch.from_numpy(layer_model.get_layer("downsample").kernel.numpy()).permute(3, 2, 0, 1)
    expected = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), weight, stride=2, padding=kernel // 2)
    np.testing.assert_allclose(layer_model(x), expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_imagenet_stem_pads_like_torch_also_before_negative_activations():
    """7x7/2 conv (padding 3), BN, swish, 3x3/2 max-pool (padding 1, by -inf: swish is negative at borders)."""
    import torch
    import torch.nn.functional as F

    model = models.build("resnet50_imagenet", width_multiplier=0.125, activation="swish", input_shape=(64, 64, 3),
                         mean=(0, 0, 0), std=(1, 1, 1))
    stem = keras.Model(model.input, model.get_layer("stem_pool").output)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    weight = torch.from_numpy(model.get_layer("stem_conv").kernel.numpy()).permute(3, 2, 0, 1)
    bn = model.get_layer("stem_bn")
    out = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), weight, stride=2, padding=3)
    out = F.silu(F.batch_norm(out, *(torch.from_numpy(v.numpy()) for v in (bn.moving_mean, bn.moving_variance,
                                                                           bn.gamma, bn.beta)), eps=1e-5))
    expected = F.max_pool2d(out, 3, stride=2, padding=1)
    zero_padded = F.max_pool2d(F.pad(out, (1, 1, 1, 1)), 3, stride=2)
    assert not torch.equal(expected, zero_padded), "the test needs border windows of only negative activations"
    np.testing.assert_allclose(stem(x), expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_wide_resnet_convs_are_initialized_like_kaiming_normal():
    """The zoo's kaiming_normal_(fan_in, relu): N(0, 2 / fan_in) untruncated (Keras' HeNormal cuts at 2 sigma)."""
    model = models.build("wrn16_8", width_multiplier=0.5)
    kernel = model.get_layer("stage2_unit1_conv1").kernel.numpy()
    sigma = np.sqrt(2.0 / (3 * 3 * kernel.shape[2]))
    assert abs(kernel.std() / sigma - 1) < 0.02
    assert 0.035 < np.mean(np.abs(kernel) > 2 * sigma) < 0.056  # a normal's two-sided tail, 4.55%
