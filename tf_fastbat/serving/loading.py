"""An exported SavedModel as a differentiable logits function, using TensorFlow alone (no project model code).

The evaluation harness attacks exactly the artifact TF Serving serves: `load_logits_fn(dir)` calls the
SavedModel's `serving_default` signature and keeps its `logits` output, so PGD and AutoAttack differentiate
through the same graph the server runs. This module imports only TensorFlow, numpy and the standard library.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import tensorflow as tf

from tf_fastbat.errors import UsageError, one_line
from tf_fastbat.serving.protocol import IMAGES_SIGNATURE, METADATA_FILE, newest_saved_model


def resolve_saved_model_dir(path: str) -> str:
    """`path` if it is a SavedModel, else the highest complete version of a TF Serving model directory."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no SavedModel directory at {path}")
    if not os.path.isdir(path):
        raise UsageError(f"{path} is a file, not a SavedModel directory")
    saved = newest_saved_model(path)
    if saved is None:
        raise UsageError(f"{path} is not a SavedModel (no saved_model.pb) nor a TF Serving model directory "
                         "with integer version sub-directories")
    return saved


def load_metadata(saved_model_dir: str) -> Optional[Dict]:
    """The export's metadata asset (assets/metadata.json) as a dict, or None for a SavedModel without one."""
    path = os.path.join(resolve_saved_model_dir(saved_model_dir), "assets", METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class ServingLogits:
    """Callable [0, 1] NHWC float images -> logits through one signature of a loaded SavedModel.

    Holds the loaded object: a signature whose SavedModel is garbage-collected loses its variables.
    """

    def __init__(self, loaded, signature: tf.types.experimental.ConcreteFunction, input_name: str,
                 output_name: str, path: str):
        self._loaded = loaded
        self.signature = signature
        self.input_name = input_name
        self.output_name = output_name
        self.path = path
        self.image_shape = tuple(signature.structured_input_signature[1][input_name].shape[1:])

    def __call__(self, images) -> tf.Tensor:
        """Logits (float32) of a batch; differentiable with respect to `images`."""
        return self.signature(**{self.input_name: tf.cast(images, tf.float32)})[self.output_name]

    @property
    def graph(self):
        """The signature's graph (AutoAttack's dynamic-defence check inspects it)."""
        return self.signature.graph


def _image_input(signature, signature_name: str, path: str) -> str:
    """The name of the signature's single float32 NHWC input, or a UsageError saying why it is unusable."""
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise UsageError(f"{path}: signature {signature_name!r} takes {len(inputs)} inputs "
                         f"({', '.join(sorted(inputs)) or 'none'}); a classifier signature takes one image batch")
    (name, spec), = inputs.items()
    if spec.dtype != tf.float32 or spec.shape.rank != 4:
        raise UsageError(f"{path}: signature {signature_name!r} input {name!r} is {spec.dtype.name} of shape "
                         f"{spec.shape}; expected float32 images of shape [batch, height, width, channels]")
    return name


def load_logits_fn(saved_model_dir: str, signature_name: str = IMAGES_SIGNATURE,
                   output_name: str = "logits") -> ServingLogits:
    """The logits function of an exported classifier (a SavedModel dir or a TF Serving DIR/NAME: newest version)."""
    path = resolve_saved_model_dir(saved_model_dir)
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # a corrupt file raises DecodeError, OSError, OpError, ValueError...
        raise UsageError(f"{path}: TensorFlow cannot load this SavedModel "
                         f"({type(error).__name__}: {one_line(error)})") from error
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature_name not in signatures:
        raise UsageError(f"{path}: no signature {signature_name!r} (it has: "
                         f"{', '.join(sorted(signatures)) or 'no signatures at all'})")
    signature = signatures[signature_name]
    input_name = _image_input(signature, signature_name, path)
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict) or output_name not in outputs:
        found = ", ".join(sorted(outputs)) if isinstance(outputs, dict) else type(outputs).__name__
        raise UsageError(f"{path}: signature {signature_name!r} has no {output_name!r} output (it has: {found})")
    if outputs[output_name].dtype != tf.float32 or outputs[output_name].shape.rank != 2:
        raise UsageError(f"{path}: output {output_name!r} of {signature_name!r} is "
                         f"{outputs[output_name].dtype.name} {outputs[output_name].shape}; expected float32 "
                         "[batch, classes] logits")
    return ServingLogits(loaded, signature, input_name, output_name, path)
