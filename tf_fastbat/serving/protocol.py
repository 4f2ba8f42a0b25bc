"""What an exported classifier looks like to TF Serving and its clients: signature, input and output names and the
metadata asset, and the layout of a model's versions. No TensorFlow: the REST client and the flag checks import
this module without it."""

from __future__ import annotations

import os
from typing import Optional, Tuple

from tf_fastbat.errors import UsageError

DEFAULT_MODEL_NAME = "tf_fastbat"
IMAGES_SIGNATURE = "serving_default"  # float32 NHWC images in [0, 1]
BYTES_SIGNATURE = "predict_images_bytes"  # JPEG/PNG bytes, decoded and resized in the graph
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
OUTPUTS = ("logits", "probabilities", "classes")
METADATA_FILE = "metadata.json"  # under the version's assets/
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def validate_model_name(name: str) -> None:
    """A TF Serving model name is a plain directory name under export_dir, and not a number (versions are)."""
    if not name or os.sep in name or name.startswith(".") or name.isdigit():
        raise UsageError(f"model_name={name!r}: must be a plain directory name, not a number")


def integer_versions(model_dir: str) -> Tuple[int, ...]:
    """The version numbers TF Serving would see under `model_dir` (sub-directories named by an integer), sorted."""
    if not os.path.isdir(model_dir):
        return ()
    return tuple(sorted(int(entry) for entry in os.listdir(model_dir)
                        if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry))))


SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_saved_model(path: str) -> bool:
    """True if `path` is a SavedModel directory."""
    return any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def newest_saved_model(path: str) -> Optional[str]:
    """`path` if it is a SavedModel, else its highest complete integer version, else None."""
    if is_saved_model(path):
        return path
    complete = [v for v in integer_versions(path) if is_saved_model(os.path.join(path, str(v)))]
    return os.path.join(path, str(complete[-1])) if complete else None
