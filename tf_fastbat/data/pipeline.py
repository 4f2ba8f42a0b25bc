"""tf.data pipelines: the held-out validation split, seeded augmentation, batching and prefetch."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

from tf_fastbat.data.sources import Source


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


def array_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, seed: int,
                  drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of ([0, 1] float images, int labels) from uint8 arrays; shuffled and augmented if `training`."""
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (_pad_crop_flip(xy[0], s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda images, labels: (to_unit_range(images), labels)).prefetch(tf.data.AUTOTUNE)


def file_dataset(files, labels, batch_size: int, size: int, *, training: bool, seed: int,
                 drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches from JPEG/PNG files (ImageNet-style folders)."""
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.asarray(labels, np.int32)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: (_random_resized_crop_flip(_decode(xy[0]), s, size), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda f, l: (_center_crop(_decode(f), size), l), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(lambda images, labels: (images / 255.0, labels)).prefetch(tf.data.AUTOTUNE)


def tfds_stream(name: str, split: str, data_dir, batch_size: int, size: int, *, training: bool, seed: int,
                drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches from a prepared TFDS set too large for memory (imagenet2012)."""
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
