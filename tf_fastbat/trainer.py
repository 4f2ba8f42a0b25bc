"""The Keras model that trains a classifier with a method: `train_step` draws the noise and dispatches."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_fastbat.methods import Method


def replica_noise(shape, eps: float, seed: int, step: tf.Tensor) -> tf.Tensor:
    """U[-eps, eps] noise from (seed, step, replica): repeatable, different on every replica, resumable."""
    context = tf.distribute.get_replica_context()
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64) if context is not None else tf.constant(0, tf.int64)
    replicas = context.num_replicas_in_sync if context is not None else 1
    stream = tf.cast(step, tf.int64) * replicas + replica
    return tf.random.stateless_uniform(shape, seed=tf.stack([tf.constant(seed, tf.int64), stream]),
                                       minval=-eps, maxval=eps)


def global_share(local_batch: tf.Tensor) -> tf.Tensor:
    """local batch / global batch: turns a replica's batch-mean gradient into its share of the global mean."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.constant(1.0)
    return local_batch / context.all_reduce(tf.distribute.ReduceOp.SUM, local_batch)


class AdversarialTrainer(keras.Model):
    """Wraps a classifier; `fit` trains it with `method` (any of tf_fastbat.methods)."""

    def __init__(self, classifier: keras.Model, method: Method, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.method = method
        self.seed = int(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def train_step(self, data):
        x, y = data
        x = tf.cast(x, tf.float32)
        noise = replica_noise(tf.shape(x), self.method.eps, self.seed, self.optimizer.iterations)
        result = self.method.step(self.classifier, x, y, noise)
        share = global_share(tf.cast(tf.shape(x)[0], tf.float32))
        grads = [g * share for g in result.grads]
        self.optimizer.apply_gradients(zip(grads, self.classifier.trainable_variables))
        logits = tf.cast(result.logits, tf.float32)
        self.loss_tracker.update_state(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        self.accuracy_tracker.update_state(y, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result(),
                "learning_rate": self.optimizer.learning_rate}

    def test_step(self, data):
        x, y = data
        logits = tf.cast(self.classifier(x, training=False), tf.float32)
        self.loss_tracker.update_state(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        self.accuracy_tracker.update_state(y, logits)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}
