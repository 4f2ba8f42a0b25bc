"""Process-wide TensorFlow settings that only take effect if made before TensorFlow is imported, and the check of
a model against the CPU kernels' known hazard."""

from __future__ import annotations

import os
import sys
from typing import List

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
HAZARD_MAX_CHANNELS = 8  # oneDNN (TF 2.21) corrupts the heap on strided 1x1 convolutions of 8 input channels


def default_cpu_kernels() -> bool:
    """Default TF_ENABLE_ONEDNN_OPTS to 0 (TensorFlow's Eigen kernels) unless the user set it; True if oneDNN's
    kernels will be used.

    TF 2.21's oneDNN kernels corrupt the heap on a strided 1x1 convolution of 8 input channels with an odd batch,
    which PreActResNet-18 at width 0.125 has (BUILD_NOTES.md, "CPU kernels"). The Eigen kernels are safe and about
    2x slower on this AMD CPU; TF_ENABLE_ONEDNN_OPTS=1 opts in, and `onednn_hazards` names the layers at risk.
    GPUs are unaffected. Nothing is changed once TensorFlow is imported (too late to matter).
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(ONEDNN_VARIABLE, "0")
    return os.environ.get(ONEDNN_VARIABLE) == "1"


def onednn_enabled() -> bool:
    """True when the user opted in to oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS=1)."""
    return os.environ.get(ONEDNN_VARIABLE) == "1"


def onednn_hazards(model) -> List[str]:
    """Names of the model's convolutions that oneDNN (TF 2.21, CPU) can run on a corrupted heap: strided 1x1
    convolutions with at most HAZARD_MAX_CHANNELS input channels (nested models included)."""
    import keras

    names = []
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1) \
                and max(layer.strides) > 1 and layer.built and layer.kernel.shape[-2] <= HAZARD_MAX_CHANNELS:
            names.append(layer.name)
    return names


def onednn_warning(model) -> str:
    """A one-line warning when oneDNN is on and the model has a hazardous convolution, else ""."""
    hazards = onednn_hazards(model) if onednn_enabled() else []
    if not hazards:
        return ""
    return (f"TF_ENABLE_ONEDNN_OPTS=1 with {len(hazards)} strided 1x1 convolution(s) of <= {HAZARD_MAX_CHANNELS} "
            f"input channels ({hazards[0]}...): TF 2.21's oneDNN kernels can corrupt the heap on an odd batch; "
            "unset TF_ENABLE_ONEDNN_OPTS (the default) or use a wider model")


def _layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _layers(layer)
