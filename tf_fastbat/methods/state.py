"""A method's state across steps: variables that every replica holds in full and updates identically.

The variables are mirrored with ONLY_FIRST_REPLICA aggregation: a write in a replica is applied, as the first
replica makes it, to every copy. The writes here are therefore built from global quantities (all-gathered rows,
all-reduced sums), the same on every replica, so that N devices keep what one device keeps. They are collectives:
every replica calls them, every step, in the same order.
"""

from __future__ import annotations

from typing import Dict

import tensorflow as tf

from tf_fastbat.methods.base import StateSpec
from tf_fastbat.methods.global_batch import gather, replica_context


def create(spec: StateSpec, prefix: str = "method_state") -> Dict[str, tf.Variable]:
    """Zero-initialized non-trainable variables for `spec` (call inside the strategy's scope, if any)."""
    return {name: tf.Variable(tf.zeros(shape, dtype), trainable=False, name=f"{prefix}_{name}",
                              synchronization=tf.VariableSynchronization.ON_WRITE,
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for name, (shape, dtype) in spec.items()}


def write_rows(variable: tf.Variable, index: tf.Tensor, values: tf.Tensor) -> None:
    """variable[index[i]] = values[i] for this step's examples of every replica (positions unique in the step)."""
    index, values = gather(tf.cast(index, tf.int64)), gather(tf.cast(values, variable.dtype))
    variable.scatter_update(tf.IndexedSlices(values, index))


def assign(variable: tf.Variable, value: tf.Tensor) -> None:
    """variable = value, for a value already the same on every replica (from global_sum / global_mean)."""
    variable.assign(tf.cast(value, variable.dtype))


def global_sum(tensor: tf.Tensor) -> tf.Tensor:
    """The sum of `tensor` over the replicas (the tensor itself on one device)."""
    context = replica_context()
    if context is None:
        return tensor
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)


def global_mean(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """sum(total) / sum(count) over the replicas: a global-batch mean from per-replica sums and example counts."""
    return global_sum(total) / global_sum(tf.cast(count, total.dtype))
