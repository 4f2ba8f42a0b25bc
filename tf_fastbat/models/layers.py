"""Building blocks shared by the architectures: PyTorch-like initializers, BN and activations."""

from __future__ import annotations

import math

import keras

ACTIVATIONS = ("relu", "softplus", "swish")

# PyTorch's default Conv/Linear init (kaiming_uniform with a=sqrt(5)) is U(+-1/sqrt(fan_in)) = this scaling.
TORCH_DEFAULT_INIT = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


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


def conv(filters: int, kernel: int, stride: int = 1, name: str = None, initializer=TORCH_DEFAULT_INIT):
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                               kernel_initializer=initializer, name=name)


def batch_norm(name: str = None):
    """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here; eps 1e-5)."""
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def activation(kind: str, name: str = None):
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown --activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kind == "softplus":
        return ScaledSoftplus(10.0, name=name)
    return keras.layers.Activation({"relu": "relu", "swish": "silu"}[kind], name=name)


def classifier_head(features, num_classes: int, zero_init: bool = False):
    """Global average pooling and a linear layer initialized like torch.nn.Linear (or zeros, as in the WRN)."""
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    bound = 1.0 / math.sqrt(pooled.shape[-1])
    kernel_init = "zeros" if zero_init else TORCH_DEFAULT_INIT
    bias_init = "zeros" if zero_init else keras.initializers.RandomUniform(-bound, bound)
    return keras.layers.Dense(num_classes, kernel_initializer=kernel_init, bias_initializer=bias_init,
                              name="logits", dtype="float32")(pooled)


def scaled(channels: int, width_multiplier: float) -> int:
    return max(1, int(round(channels * width_multiplier)))
