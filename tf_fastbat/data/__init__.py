"""Datasets: sources (TFDS, npz, folders) and tf.data pipelines; see `sources.load` and `splits`."""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tf_fastbat.data import pipeline
from tf_fastbat.data.sources import DataError, Source, load

STREAMED_VALIDATION_EXAMPLES = 1000  # held-out examples kept in memory for early stopping on streamed or folder data


@dataclasses.dataclass
class Splits:
    """The three pipelines training needs, plus what the model needs to know of the data.

    `train` is one epoch of training batches; `train_from(b)` is the endless stream of them (epoch after epoch)
    from global batch b on, the same batches an unbroken stream yields there.
    """

    source: Source
    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    validation_arrays: Optional[tuple]  # ([0, 1] float32 images, labels) for the early-stopping attack
    test_arrays: Optional[tuple]
    test: tf.data.Dataset
    num_train: int
    train_from: Callable[[int], tf.data.Dataset]
    num_held_out: int = 0  # training examples held out for early stopping (it attacks at most --es_num_examples)

    def steps_per_epoch(self, batch_size: int, replicas: int, cap: Optional[int] = None) -> int:
        """Global batches per epoch: the last partial one included on one replica, dropped on several (each
        replica needs a share); at most `cap`."""
        steps = -(-self.num_train // batch_size)
        if self.num_train and replicas > 1:
            steps = self.num_train // batch_size
        return min(steps, cap) if cap else steps

    def validation_examples(self, limit: int, streamed_limit: int = STREAMED_VALIDATION_EXAMPLES):
        """The held-out examples early stopping attacks: in-memory arrays, or the first `streamed_limit` (at most
        `limit`) of a streamed or folder source's held-out stream; (None, None) without a held-out split."""
        from tf_fastbat.data.test_split import stream_arrays

        if self.validation_arrays:
            return self.validation_arrays
        if self.validation is None:
            return None, None
        x, y = stream_arrays(self.validation, min(limit, streamed_limit), self.source.image_shape)
        return (x, y) if len(x) else (None, None)

    def test_examples(self, limit: int):
        """The first `limit` (all if < 0) test examples, as arrays."""
        from tf_fastbat.data.test_split import stream_arrays

        if self.test_arrays:
            return tuple(a[:limit] for a in self.test_arrays) if limit >= 0 else self.test_arrays
        return stream_arrays(self.test, sys.maxsize if limit < 0 else limit, self.source.image_shape)


def splits(source: Source, batch_size: int, val_ratio: float, seed: int, validation_examples: int,
           data_dir: Optional[str] = None, drop_remainder: bool = False, with_index: bool = False) -> Splits:
    """Training, held-out validation and test pipelines for `source`; with `with_index` the training batches are
    (images, labels, positions in the training split), for methods with per-example state."""
    if source.in_memory:
        (x_train, y_train), (x_val, y_val) = pipeline.split_validation(
            source.x_train, source.y_train, val_ratio, seed)
        if len(x_train) < batch_size:
            raise DataError(f"batch_size={batch_size} exceeds the {len(x_train)} training examples of "
                            f"{source.name}")
        num_held_out = len(x_val)
        x_val, y_val = x_val[:validation_examples], y_val[:validation_examples]

        def train_from(start: int) -> tf.data.Dataset:
            return pipeline.array_stream(x_train, y_train, batch_size, seed, start, drop_remainder, with_index)

        train = train_from(0).take(pipeline.batches_per_epoch(len(x_train), batch_size, drop_remainder))
        validation = pipeline.array_dataset(x_val, y_val, batch_size, training=False, seed=seed) if len(x_val) else None
        test = pipeline.array_dataset(source.x_test, source.y_test, batch_size, training=False, seed=seed)
        val_arrays = (x_val.astype(np.float32) / 255.0, y_val) if len(x_val) else None
        test_arrays = (source.x_test.astype(np.float32) / 255.0, source.y_test)
        return Splits(source, train, validation, val_arrays, test_arrays, test, len(x_train), train_from,
                      num_held_out)
    size = source.image_shape[0]
    if source.train_files is not None:
        order = np.random.default_rng(seed).permutation(len(source.train_files))
        held_out = int(round(len(order) * val_ratio))
        files = np.asarray(source.train_files)
        labels = source.train_labels
        val_idx, train_idx = order[:held_out][:validation_examples], order[held_out:]

        def train_from(start: int) -> tf.data.Dataset:
            return pipeline.file_stream(files[train_idx], labels[train_idx], batch_size, size, seed, start,
                                        drop_remainder, with_index)

        train = train_from(0).take(pipeline.batches_per_epoch(len(train_idx), batch_size, drop_remainder))
        validation = pipeline.file_dataset(files[val_idx], labels[val_idx], batch_size, size, training=False,
                                           seed=seed) if len(val_idx) else None
        test = pipeline.file_dataset(source.test_files, source.test_labels, batch_size, size, training=False,
                                     seed=seed)
        return Splits(source, train, validation, None, None, test, len(train_idx), train_from, held_out)
    # Streamed TFDS (ImageNet): its validation split is the test set; hold out the training tail for early stopping.
    if with_index:
        raise DataError(f"{source.name} is streamed from TFDS in a shuffled order without example positions; a "
                        "method with per-example state needs in-memory or folder: data")
    percent = int(round(100 * (1 - val_ratio)))
    train = pipeline.tfds_stream(source.name, f"train[:{percent}%]", data_dir, batch_size, size, training=True,
                                 seed=seed, drop_remainder=drop_remainder)
    validation = pipeline.tfds_stream(source.name, f"train[{percent}%:]", data_dir, batch_size, size,
                                      training=False, seed=seed).take(max(1, validation_examples // batch_size))
    test = pipeline.tfds_stream(source.name, "validation", data_dir, batch_size, size, training=False, seed=seed)
    num_train = int(1_281_167 * (1 - val_ratio))
    return Splits(source, train, validation, None, None, test, num_train, lambda start: train.repeat().skip(start),
                  1_281_167 - num_train)


__all__ = ["load", "splits", "Splits", "Source", "DataError"]
