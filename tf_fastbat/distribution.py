"""Choosing the tf.distribute strategy: one device, all local GPUs, or several workers (TF_CONFIG)."""

from __future__ import annotations

import json
import os
from typing import Iterator

import keras
import tensorflow as tf

from tf_fastbat.errors import UsageError


def strategy_for(kind: str) -> tf.distribute.Strategy:
    """--distribution: auto (Mirrored over local GPUs when there are several), none, mirrored, multi_worker."""
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("the multi_worker strategy needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True on the worker that writes checkpoints and reports (always true without TF_CONFIG)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def worker_index() -> int:
    return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))


def _all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every BatchNormalization of `model` normalize with global-batch statistics across replicas.

    Under tf.distribute a Keras BN layer uses its own replica's batch statistics unless `synchronized=True`; with
    it, training on N replicas computes what one device computes on the global batch (one all-reduce per BN
    layer and pass). Call before the train step is traced; returns the number of layers switched.
    """
    switched = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            switched += 1
    return switched
