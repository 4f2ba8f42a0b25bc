"""tf.data pipelines: the held-out validation split, the seeded training stream (startable at any batch, so that
a resumed run sees the batches an unbroken one would), augmentation, batching and prefetch."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.data.sources import Source

_ENDLESS = 2 ** 62


def split_validation(x: np.ndarray, y: np.ndarray, ratio: float, seed: int):
    """Hold out `ratio` of the training set (a seeded permutation) for early stopping."""
    order = np.random.default_rng(seed).permutation(len(x))
    held_out = int(round(len(x) * ratio))
    val, train = order[:held_out], order[held_out:]
    return (x[train], y[train]), (x[val], y[val])


def _pad_crop_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """4-pixel zero-pad random crop and horizontal flip (the CIFAR recipe), stateless so that runs repeat."""
    height, width, channels = image.shape
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, [height, width, channels], seed=seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=seed[::-1])


def _random_resized_crop_flip(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Inception-style random-resized crop (scale 0.08-1, ratio 3/4-4/3) and flip, for ImageNet."""
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.image.resize(tf.slice(image, begin, extent), [size, size])
    return tf.image.stateless_random_flip_left_right(crop, seed=seed[::-1])


def _center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize the shorter side to size/0.875 and take the central size x size crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / 0.875) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(resized, size, size)


def _decode(path: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False), tf.float32)


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(image, tf.float32) / 255.0


def batches_per_epoch(count: int, batch_size: int, drop_remainder: bool) -> int:
    return count // batch_size if drop_remainder else -(-count // batch_size)


def epoch_order(count: int, seed: int, epoch: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Epoch `epoch`'s permutation of the `count` examples and one augmentation seed pair per position: a function
    of (seed, epoch) alone, so that any epoch can be rebuilt without replaying the ones before it."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=key, alg="philox")
    augment_key = tf.random.experimental.stateless_fold_in(key, 1, alg="philox")
    seeds = tf.random.stateless_uniform([count, 2], seed=augment_key, minval=None, maxval=None, dtype=tf.int64,
                                        alg="philox")
    return order, seeds


def training_stream(count: int, example: Callable[[tf.Tensor, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]],
                    batch_size: int, seed: int, start_batch: int = 0, drop_remainder: bool = False,
                    with_index: bool = False) -> tf.data.Dataset:
    """The endless training stream from global batch `start_batch` on: epoch after epoch of `epoch_order`, each
    example made by `example(index, augmentation seed)`, batched within its epoch (the last batch may be short).
    With `with_index` each element also carries the examples' int64 positions (for methods with per-example state);
    the order and the examples are the same either way.

    The batches already consumed are skipped as indices, before any example is loaded or augmented.
    """
    first_epoch, skipped = divmod(int(start_batch), batches_per_epoch(count, batch_size, drop_remainder))
    make = (lambda i, s: (*example(i, s), i)) if with_index else example

    def epoch(number):
        order, seeds = epoch_order(count, seed, number)
        skip = tf.where(number == first_epoch, tf.constant(skipped * batch_size, tf.int64), tf.constant(0, tf.int64))
        return (tf.data.Dataset.from_tensor_slices((order, seeds)).skip(skip)
                .map(make, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(batch_size, drop_remainder=drop_remainder))

    return tf.data.Dataset.range(first_epoch, _ENDLESS).flat_map(epoch)


def array_stream(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, start_batch: int = 0,
                 drop_remainder: bool = False, with_index: bool = False) -> tf.data.Dataset:
    """Augmented training batches of uint8 arrays from global batch `start_batch` on (see `training_stream`)."""
    images, labels = tf.constant(x), tf.constant(y.astype(np.int32))
    stream = training_stream(len(x), lambda i, s: (_pad_crop_flip(tf.gather(images, i), s), tf.gather(labels, i)),
                             batch_size, seed, start_batch, drop_remainder, with_index)
    return stream.map(lambda images, labels, *index: (to_unit_range(images), labels, *index)).prefetch(
        tf.data.AUTOTUNE)


def file_stream(files, labels, batch_size: int, size: int, seed: int, start_batch: int = 0,
                drop_remainder: bool = False, with_index: bool = False) -> tf.data.Dataset:
    """Augmented training batches of JPEG/PNG files from global batch `start_batch` on (see `training_stream`)."""
    paths, classes = tf.constant(list(files)), tf.constant(np.asarray(labels, np.int32))
    stream = training_stream(len(files), lambda i, s: (_random_resized_crop_flip(_decode(tf.gather(paths, i)), s, size),
                                                       tf.gather(classes, i)),
                             batch_size, seed, start_batch, drop_remainder, with_index)
    return stream.map(lambda images, labels, *index: (images / 255.0, labels, *index)).prefetch(tf.data.AUTOTUNE)


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, seed: int,
                  drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of ([0, 1] float images, int labels) from uint8 arrays; if `training`, the first epoch of
    `array_stream` (shuffled and augmented)."""
    if training:
        return array_stream(x, y, batch_size, seed, 0, drop_remainder).take(
            batches_per_epoch(len(x), batch_size, drop_remainder))
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda images, labels: (to_unit_range(images), labels)).prefetch(tf.data.AUTOTUNE)


def file_dataset(files, labels, batch_size: int, size: int, *, training: bool, seed: int,
                 drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches from JPEG/PNG files (ImageNet-style folders); if `training`, the first epoch of `file_stream`."""
    if training:
        return file_stream(files, labels, batch_size, size, seed, 0, drop_remainder).take(
            batches_per_epoch(len(files), batch_size, drop_remainder))
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, np.int32)))
    ds = ds.map(lambda path, label: (_center_crop(_decode(path), size), label), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda images, labels: (images / 255.0, labels)).prefetch(tf.data.AUTOTUNE)


def tfds_stream(name: str, split: str, data_dir, batch_size: int, size: int, *, training: bool, seed: int,
                drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches from a prepared TFDS set too large for memory (imagenet2012); its training order comes from tf.data's
    seeded shuffle, so a resumed run replays (reads and drops) the batches already consumed."""
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, shuffle_files=training,
                   read_config=tfds.ReadConfig(shuffle_seed=seed))
    if training:
        ds = ds.shuffle(10_000, seed=seed)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (_random_resized_crop_flip(tf.cast(xy[0], tf.float32), s, size), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda img, l: (_center_crop(tf.cast(img, tf.float32), size), l),
                    num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda images, labels: (images / 255.0, tf.cast(labels, tf.int32))).prefetch(tf.data.AUTOTUNE)
