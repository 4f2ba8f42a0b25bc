"""A dataset's test split as arrays: what evaluation, the export-time measurement and training's final report
attack. In-memory sources are sliced; file and TFDS sources are streamed through the evaluation pipeline."""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import numpy as np

from tf_fastbat.data import pipeline
from tf_fastbat.data.sources import load


def test_arrays(dataset: str, num_examples: int = -1, data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None, image_size: int = 224, seed: int = 0,
                batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """The first `num_examples` (all if < 0) test examples: ([0, 1] float32 NHWC images, int64 labels)."""
    limit = sys.maxsize if num_examples < 0 else num_examples
    source = load(dataset, data_dir, manual_dir, image_size, test_only=True)
    if source.in_memory:
        return source.x_test[:limit].astype(np.float32) / 255.0, source.y_test[:limit].astype(np.int64)
    if source.test_files is not None:
        stream = pipeline.file_dataset(source.test_files[:limit], source.test_labels[:limit], batch_size,
                                       source.image_shape[0], training=False, seed=seed)
    else:
        stream = pipeline.tfds_stream(source.name, "validation", data_dir, batch_size, source.image_shape[0],
                                      training=False, seed=seed)
    return stream_arrays(stream, limit, source.image_shape)


def stream_arrays(stream, limit: int, image_shape) -> Tuple[np.ndarray, np.ndarray]:
    """The first `limit` examples of a batched (images, labels) dataset as arrays."""
    xs, ys, count = [], [], 0
    for x, y in stream:
        if count >= limit:
            break
        xs.append(x.numpy())
        ys.append(y.numpy())
        count += len(xs[-1])
    if not xs:
        return np.zeros((0, *image_shape), np.float32), np.zeros([0], np.int64)
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit].astype(np.int64)
