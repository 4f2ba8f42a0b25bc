"""The library's units: images in [0, 1], eps and step sizes as fractions of that range (8/255, not 8). The checks
here refuse anything else with one line that names the parameter and says what to do; the tools' flags, typed in
1/255 units, are converted in flagtypes.py before they reach the library. Keras is imported only to look into a
model (`rescaling_layer`)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from tf_fastbat.errors import UsageError

UNIT = 255.0  # 1/255 units per [0, 1] pixel range
PIXEL_TOLERANCE = 1e-4  # float rounding of a /255 or an augmentation, not a different range


def fraction(name: str, value: Optional[float], *, zero_ok: bool = False) -> Optional[float]:
    """`value` as it is when it is a fraction of the [0, 1] pixel range, in (0, 1] ([0, 1] with `zero_ok`); else a
    UsageError naming `name` ("eps=8: ... did you mean 8/255 = 0.0314?"). None passes (a default chosen later)."""
    if value is None:
        return None
    number = float(value)
    if math.isfinite(number) and (0 < number <= 1 or (zero_ok and number == 0)):
        return value
    if math.isfinite(number) and 1 < number <= UNIT:
        raise UsageError(f"{name}={number:g}: the library takes fractions of the [0, 1] pixel range; did you mean "
                         f"{number:g}/255 = {number / UNIT:.4f}?")
    allowed = "[0, 1]" if zero_ok else "(0, 1]"
    raise UsageError(f"{name}={number:g}: must be a fraction of the [0, 1] pixel range in {allowed} (e.g. 8/255)")


def fraction_list(name: str, values: Sequence[float]) -> List[float]:
    """A list of eps, each checked by `fraction`; 0 (clean accuracy) is allowed."""
    return [float(fraction(name, v, zero_ok=True)) for v in values]


def image_range_problem(low: float, high: float, where: str, rescaling: Optional[str] = None) -> Optional[str]:
    """One line on images whose values span [low, high] when the library takes [0, 1] images; None when they fit.

    `rescaling`: the name of a layer in the model that divides its input by 255 (Rescaling(1/255)), if any.
    """
    if low >= -PIXEL_TOLERANCE and high <= 1 + PIXEL_TOLERANCE:
        return None
    seen = f"{where}: values in [{low:g}, {high:g}], but the library takes images in [0, 1] (eps is a fraction of " \
           "that range and attacks clip to it)"
    if low >= -PIXEL_TOLERANCE:  # [0, 255]-like: uint8 or unscaled floats
        layer = f" and remove the model's Rescaling layer {rescaling!r}" if rescaling else \
            " (a model with Rescaling(1/255) inside must lose that layer)"
        return f"{seen}: divide the images by 255{layer}"
    return f"{seen}: give [0, 1] images and put any mean/std normalization inside the model (models.build does)"


def check_images(x, where: str, rescaling: Optional[str] = None) -> None:
    """Refuse images outside [0, 1] (see `image_range_problem`); an empty batch passes."""
    values = np.asarray(x)
    if not values.size:
        return
    problem = image_range_problem(float(np.min(values)), float(np.max(values)), where, rescaling)
    if problem:
        raise UsageError(problem)


def rescaling_layer(model) -> Optional[str]:
    """The name of a Rescaling layer of a Keras model that scales by at most 1/255 (a [0, 255] input), or None."""
    import keras

    for layer in getattr(model, "_flatten_layers", lambda: [])():
        if isinstance(layer, keras.layers.Rescaling):
            scale = np.asarray(layer.scale, np.float64)
            if scale.size and np.all(np.abs(scale) <= 1.0 / UNIT + 1e-9):
                return layer.name
    return None
