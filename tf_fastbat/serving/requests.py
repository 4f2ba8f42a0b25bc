"""Requests to a served tf_fastbat classifier, checked before anything is sent: what TF Serving would reject (or
silently misread) is refused here with the reason; and the export's metadata (class names, input shape)."""

from __future__ import annotations

import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from tf_fastbat.errors import UsageError
from tf_fastbat.serving.protocol import JPEG_MAGIC, METADATA_FILE, PNG_MAGIC

ClientError = UsageError  # a request the client refuses to send (malformed images or bytes, bad settings)
_MAGIC = {"jpeg": JPEG_MAGIC, "png": PNG_MAGIC}


def validate_images(images, image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """A float32 batch [N, H, W, C] with values in [0, 1], or a ClientError naming what is wrong."""
    try:
        array = np.asarray(images)
    except ValueError as error:
        raise ClientError(f"images are not a rectangular array ({error})") from error
    if array.dtype == object:
        raise ClientError("images are not a rectangular numeric array (ragged nesting or mixed types)")
    if not np.issubdtype(array.dtype, np.floating):
        hint = " (for 0-255 pixels send images / 255)" if np.issubdtype(array.dtype, np.integer) else ""
        raise ClientError(f"images must be floating-point values in [0, 1], got dtype {array.dtype}{hint}")
    if array.ndim != 4:
        hint = " (one image: add a batch axis, images[None])" if array.ndim == 3 else ""
        raise ClientError(f"images must have shape [batch, height, width, channels], got shape {array.shape}{hint}")
    if len(array) == 0:
        raise ClientError("no images to send (the batch is empty)")
    if image_shape is not None and tuple(array.shape[1:]) != tuple(image_shape):
        raise ClientError(f"images of shape {tuple(array.shape[1:])} (height, width, channels) do not fit the "
                          f"model's input {tuple(image_shape)}")
    if array.shape[-1] not in (1, 3):
        raise ClientError(f"images must have 1 or 3 channels last (NHWC), got {array.shape[-1]} in shape "
                          f"{array.shape}; channels-first arrays need a transpose to NHWC")
    if not np.all(np.isfinite(array)):
        raise ClientError("images contain NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ClientError(f"image values must lie in [0, 1], found [{low:g}, {high:g}] "
                          "(for 0-255 pixels send images / 255)")
    return array.astype(np.float32)


def image_format(blob: bytes) -> Optional[str]:
    """'jpeg' or 'png' from the file signature, else None."""
    for name, magic in _MAGIC.items():
        if blob[:len(magic)] == magic:
            return name
    return None


def _decode_problem(blob: bytes) -> Optional[str]:
    """Why Pillow cannot fully decode `blob` (None if it can, or if Pillow is not installed)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for corrupt data
        return f"{type(error).__name__}: {error}"
    return None


def validate_image_bytes(blobs) -> List[bytes]:
    """A list of JPEG/PNG files as bytes, each checked to decode, or a ClientError naming the bad one."""
    if isinstance(blobs, (bytes, bytearray, str)):
        raise ClientError("image bytes must be a list of encoded files (one bytes object per image)")
    checked = []
    for index, blob in enumerate(blobs):
        if not isinstance(blob, (bytes, bytearray)):
            raise ClientError(f"image {index}: expected the bytes of a JPEG or PNG file, got {type(blob).__name__}")
        kind = image_format(blob)
        if kind is None:
            raise ClientError(f"image {index}: not a JPEG or PNG file (it starts with {bytes(blob[:8])!r})")
        problem = _decode_problem(bytes(blob))
        if problem:
            raise ClientError(f"image {index}: the {kind.upper()} data does not decode ({problem})")
        checked.append(bytes(blob))
    if not checked:
        raise ClientError("no images to send (the list is empty)")
    return checked


def read_image_files(paths: Sequence[str]) -> List[bytes]:
    """The bytes of each file; a missing or unreadable file is a ClientError."""
    blobs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as error:
            raise ClientError(f"{path}: cannot read ({error.strerror or error})") from error
    return blobs


def read_metadata(path: str) -> Dict:
    """An export's metadata.json: the file itself, a version dir, or DIR/NAME (its newest version)."""
    candidates = [path, os.path.join(path, "assets", METADATA_FILE)]
    if os.path.isdir(path):
        versions = sorted((int(e) for e in os.listdir(path) if e.isdigit()), reverse=True)
        candidates += [os.path.join(path, str(v), "assets", METADATA_FILE) for v in versions]
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate) as f:
                    return json.load(f)
            except (OSError, ValueError) as error:
                raise ClientError(f"{candidate}: not readable JSON ({error})") from error
    raise ClientError(f"metadata={path}: no metadata.json there (give the file, a version dir or DIR/NAME)")
