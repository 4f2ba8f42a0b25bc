"""Building blocks shared by the architectures: PyTorch-like initializers, BN and activations."""

from __future__ import annotations

import math

import keras

from tf_fastbat.models.batch_norm import BatchNorm

ACTIVATIONS = ("relu", "softplus", "swish")


def torch_default_init() -> keras.initializers.Initializer:
    """PyTorch's default Conv/Linear init (kaiming_uniform, a=sqrt(5)) = U(+-1/sqrt(fan_in)).

    A new instance per layer: an initializer built once at import fixes its seed before `--seed` is set and gives
    every layer of the same shape the same kernel.
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def he_normal() -> keras.initializers.Initializer:
    """The WRN's kaiming_normal_(fan_in, relu): an untruncated normal (Keras' HeNormal truncates), one per layer."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package="tf_fastbat")
class ScaledSoftplus(keras.layers.Layer):
    """softplus(beta x) / beta; the official model zoo uses beta = 10 (Table A5)."""

    def __init__(self, beta: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def call(self, x):
        return keras.ops.softplus(self.beta * x) / self.beta

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


def conv(filters: int, kernel: int, stride: int = 1, name: str = None, initializer=torch_default_init):
    """A bias-free convolution padded as torch's Conv2d(padding=kernel // 2); `initializer` is a factory.

    'same' is that padding only at stride 1: strided it pads 0 before and 1 after on even sizes, sampling other
    pixels than torch, so a strided convolution gets a symmetric ZeroPadding2D (`{name}_pad`) and 'valid'.
    """
    same = stride == 1 and kernel % 2 == 1
    layer = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same" if same else "valid", use_bias=False,
                                kernel_initializer=initializer(), name=name)
    if same or kernel // 2 == 0:
        return layer
    padding = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad" if name else None)
    return lambda x: layer(padding(x))


def batch_norm(name: str = None):
    """torch's BatchNorm2d: its defaults (momentum 0.1 there is 0.9 here; eps 1e-5) and its running variance."""
    return BatchNorm(momentum=0.9, epsilon=1e-5, name=name)


def activation(kind: str, name: str = None):
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation={kind!r}: unknown; choose one of {', '.join(ACTIVATIONS)}")
    if kind == "softplus":
        return ScaledSoftplus(10.0, name=name)
    return keras.layers.Activation({"relu": "relu", "swish": "silu"}[kind], name=name)


def classifier_head(features, num_classes: int, zero_init: bool = False):
    """Global average pooling and a linear layer initialized like torch.nn.Linear (or zeros, as in the WRN)."""
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    bound = 1.0 / math.sqrt(pooled.shape[-1])
    kernel_init = "zeros" if zero_init else torch_default_init()
    bias_init = "zeros" if zero_init else keras.initializers.RandomUniform(-bound, bound)
    return keras.layers.Dense(num_classes, kernel_initializer=kernel_init, bias_initializer=bias_init,
                              name="logits", dtype="float32")(pooled)


def scaled(channels: int, width_multiplier: float) -> int:
    return max(1, int(round(channels * width_multiplier)))
