"""Global-batch quantities seen from one replica: its slice of the batch, batch-wide matrices, random draws.

A method whose objective is not a sum over examples (NuAT's nuclear norm of the batch's logit matrix) or that draws
its own noise (ELLE's triplets) must compute on the global batch for N replicas to repeat one device's step. On one
device (no tf.distribute replica context with several replicas) every function here is the plain computation.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf


def replica_context():
    """The replica context when several replicas take part in this step, else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def layout(local_batch: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(offset of this replica's examples in the global batch, global batch size), int32.

    Replicas hold consecutive slices of the global batch in replica order, as tf.distribute splits it.
    """
    local_batch = tf.cast(local_batch, tf.int32)
    context = replica_context()
    if context is None:
        return tf.constant(0, tf.int32), local_batch
    sizes = context.all_gather(tf.reshape(local_batch, [1]), axis=0)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return tf.reduce_sum(sizes[:replica]), tf.reduce_sum(sizes)


def gather(tensor: tf.Tensor) -> tf.Tensor:
    """The global batch's rows of a per-replica tensor (concatenated in replica order); not differentiable."""
    context = replica_context()
    tensor = tf.stop_gradient(tensor)
    return tensor if context is None else context.all_gather(tensor, axis=0)


def step_seed(seed: int, step: tf.Tensor, salt: int) -> tf.Tensor:
    """The stateless seed [2] of a method's own draw `salt` at `step`, apart from the trainer's (seed, step) noise."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, salt)


def uniform(seed: tf.Tensor, local_shape: tf.Tensor, minval: float, maxval: float) -> tf.Tensor:
    """This replica's slice of one U[minval, maxval) draw over the global batch from the stateless `seed` [2].

    Every example gets the value it would get on one device, so distributed runs repeat single-device runs.
    """
    offset, total = layout(local_shape[0])
    return uniform_slice(seed, local_shape, offset, total, minval, maxval)


def uniform_slice(seed: tf.Tensor, local_shape: tf.Tensor, offset: tf.Tensor, total: tf.Tensor, minval: float,
                  maxval: float) -> tf.Tensor:
    """`uniform` for a replica whose `layout` (offset, global batch size) is already known."""
    offset, total = tf.cast(offset, tf.int32), tf.cast(total, tf.int32)
    global_shape = tf.concat([tf.reshape(total, [1]), tf.cast(local_shape[1:], tf.int32)], axis=0)
    draw = tf.random.stateless_uniform(global_shape, seed=seed, minval=minval, maxval=maxval)
    return draw[offset:offset + local_shape[0]]
