"""Classifiers that map float32 NHWC images in [0, 1] to logits, per-channel normalization inside."""

from __future__ import annotations

import functools
import os
from typing import Sequence, Tuple

import keras

from tf_fastbat.models.layers import ACTIVATIONS, ScaledSoftplus
from tf_fastbat.models.preact_resnet import preact_resnet
from tf_fastbat.models.resnet import resnet
from tf_fastbat.models.wide_resnet import wide_resnet

ARCHITECTURES = {
    "preact_resnet18": functools.partial(preact_resnet, depth=18),
    "preact_resnet34": functools.partial(preact_resnet, depth=34),
    "preact_resnet50": functools.partial(preact_resnet, depth=50),
    "wrn16_8": functools.partial(wide_resnet, depth=16, widen=8),
    "wrn28_10": functools.partial(wide_resnet, depth=28, widen=10),
    "wrn34_10": functools.partial(wide_resnet, depth=34, widen=10),
    "resnet18": functools.partial(resnet, depth=18, stem="cifar"),
    "resnet50": functools.partial(resnet, depth=50, stem="cifar"),
    "resnet50_imagenet": functools.partial(resnet, depth=50, stem="imagenet"),
}
NAMES = tuple(ARCHITECTURES)


def build(name: str, num_classes: int = 10, activation: str = "relu", width_multiplier: float = 1.0,
          input_shape: Tuple[int, int, int] = (32, 32, 3), mean: Sequence[float] = (0.5, 0.5, 0.5),
          std: Sequence[float] = (0.5, 0.5, 0.5), **options) -> keras.Model:
    """A functional Keras model: [0, 1] images -> normalize by (mean, std) -> `name` -> logits.

    `options` go to the architecture (e.g. preact_resnet's final_bn, for checkpoints of other PreActResNets).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture={name!r}: unknown; choose one of {', '.join(NAMES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}: unknown; choose one of {', '.join(ACTIVATIONS)}")
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier={width_multiplier}: must be positive")
    inputs = keras.Input(shape=input_shape, name="image", dtype="float32")
    variance = [s * s for s in std]
    normalized = keras.layers.Normalization(axis=-1, mean=list(mean), variance=variance, name="normalize")(inputs)
    logits = ARCHITECTURES[name](inputs, normalized, num_classes=num_classes, act=activation,
                                 width_multiplier=width_multiplier, **options)
    return keras.Model(inputs, logits, name=name)


def load(path: str) -> keras.Model:
    """A classifier saved by this project (or any .keras file mapping [0, 1] images to logits), or a shipped
    robust model by its name, `pretrained:NAME` (tf_fastbat.pretrained)."""
    from tf_fastbat import pretrained

    if pretrained.is_pretrained(path):
        path = pretrained.model_file(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path, compile=False, custom_objects={"ScaledSoftplus": ScaledSoftplus})
    except Exception as error:  # keras raises many types for a corrupt or foreign file
        raise ValueError(f"cannot load a Keras model from {path}: {error}") from error


def from_torch(checkpoint, model: str, **kwargs) -> keras.Model:
    """A PyTorch checkpoint (the official model zoo's, RobustBench's) as a `build` model; see torch_import.

    A wrapper, so that importing tf_fastbat never imports torch.
    """
    from tf_fastbat.models.torch_import import from_torch as convert

    return convert(checkpoint, model, **kwargs)


__all__ = ["build", "load", "from_torch", "NAMES", "ARCHITECTURES"]
