"""Writing a SavedModel version in TF Serving's layout, DIR/NAME/<version>/ (the next integer each time): written to a
hidden temporary directory beside the versions, measured there, then renamed into place, so that a server polling
DIR/NAME never loads a half-written version."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat.errors import UsageError
from tf_fastbat.serving.loading import load_logits_fn
from tf_fastbat.serving.protocol import METADATA_FILE, validate_model_name
from tf_fastbat.serving.signatures import serving_signatures


def _normalization(classifier) -> Optional[Dict]:
    """The (mean, std) of the model's `normalize` layer, if it has one."""
    try:
        layer = classifier.get_layer("normalize")
    except ValueError:
        return None
    mean = np.asarray(layer.mean, np.float64).reshape(-1)
    std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
    return {"mean": mean.tolist(), "std": std.tolist(), "applied": "inside the model"}


def next_version(model_dir: str) -> int:
    """1 + the highest integer entry under `model_dir` (1 for a new model)."""
    versions = [int(e) for e in os.listdir(model_dir) if e.isdigit()] if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def _claim(saved: str, model_dir: str, metadata: Dict) -> int:
    """Stamp the next free version into the metadata, then rename the complete SavedModel to it in one step.

    A version taken meanwhile (another export) is never overwritten: the stamp and rename move one further.
    """
    for _ in range(1000):
        version = next_version(model_dir)
        target = os.path.join(model_dir, str(version))
        _write_json({**metadata, "version": version}, os.path.join(saved, "assets", METADATA_FILE))
        if os.path.exists(target):
            continue
        try:
            os.rename(saved, target)  # atomic on one filesystem; fails on an existing non-empty directory
            return version
        except OSError:
            if not os.path.exists(target):
                raise
    raise UsageError(f"{model_dir}: could not claim a free version number (other exports keep taking them)")


def export_saved_model(classifier, export_dir: str, model_name: str, metadata: Dict,
                       evaluate: Optional[Callable[[Callable], Dict]] = None, preprocessing: str = "resize") -> str:
    """Write the SavedModel to a temporary dir, measure it (`evaluate(logits_fn)`), then rename it into place.

    Returns the version directory. `evaluate`, if given, maps the exported logits function to a dict stored
    under metadata["evaluation"].
    """
    validate_model_name(model_name)
    image_shape = tuple(int(d) for d in classifier.input_shape[1:])
    if len(image_shape) != 3 or None in image_shape:
        raise UsageError(f"the model's input shape {classifier.input_shape} is not [batch, height, width, channels]")
    model_dir = os.path.join(export_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=".partial-", dir=model_dir)  # not an integer: TF Serving ignores it
    try:
        saved = os.path.join(temporary, "saved_model")
        staging = os.path.join(temporary, METADATA_FILE)
        full = {**metadata, "model_name": model_name, "input_shape": list(image_shape), "preprocessing": preprocessing,
                "normalization": _normalization(classifier), "exported_at": _now(),
                "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
                "signatures": _signature_summary(image_shape), "evaluation": None}
        _write_json(full, staging)
        module = tf.Module()  # the variables and the asset only: tracking the Keras model or the tf.functions
        module.model_variables = list(classifier.variables)  # makes the save retrace them (seconds)
        module.metadata = tf.saved_model.Asset(staging)
        tf.saved_model.save(module, saved, signatures=serving_signatures(classifier, image_shape, preprocessing))
        if evaluate is not None:
            full["evaluation"] = evaluate(load_logits_fn(saved))
        version = _claim(saved, model_dir, full)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return os.path.join(model_dir, str(version))


def _signature_summary(image_shape: Sequence[int]) -> Dict:
    shape = ["batch", *image_shape]
    outputs = {"logits": "float32 [batch, classes]", "probabilities": "float32 [batch, classes]",
               "classes": "int64 [batch]"}
    return {"serving_default": {"inputs": {"images": f"float32 {shape} in [0, 1], NHWC"}, "outputs": outputs},
            "predict_images_bytes": {"inputs": {"image_bytes": "string [batch]: JPEG or PNG files"},
                                     "outputs": outputs}}


def _write_json(data: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    """numpy scalars and tuples in metadata -> plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
