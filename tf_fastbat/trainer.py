"""The Keras model that trains a classifier with a method: `train_step` draws the noise and dispatches."""

from __future__ import annotations

from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat import optim, units
from tf_fastbat.methods import Method
from tf_fastbat.methods import state as method_state
from tf_fastbat.methods.global_batch import layout, uniform_slice
from tf_fastbat.methods.base import StepContext


def replicas_in_sync() -> int:
    """Number of replicas taking part in this step (1 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def batch_layout(local_batch: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(offset of this replica's examples in the global batch, global batch size), both float32."""
    offset, total = layout(local_batch)
    return tf.cast(offset, tf.float32), tf.cast(total, tf.float32)


def replica_noise(shape: tf.Tensor, eps: float, seed: int, step: tf.Tensor, offset: tf.Tensor,
                  global_batch: tf.Tensor) -> tf.Tensor:
    """U[-eps, eps] noise: this replica's slice of one global-batch draw from (seed, step).

    Every example gets the noise it would get on one device, so distributed runs repeat single-device runs.
    """
    seed_pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    return uniform_slice(seed_pair, shape, offset, global_batch, -eps, eps)


def loss_scale(optimizer) -> Optional[tf.Tensor]:
    """The factor Keras wants losses multiplied by before differentiation (float16), or None when there is none."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or optimizer.loss_scale_factor is not None:
        return tf.cast(optimizer.scale_loss(tf.constant(1.0, tf.float32)), tf.float32)
    return None


class AdversarialTrainer(keras.Model):
    """Wraps a classifier; `fit` trains it with `method` (any of tf_fastbat.methods).

    A method with state (`state_spec`) or example positions (`needs_index`) needs `num_examples` (the training set
    size) and `steps_per_epoch`; its variables are created here, so inside the strategy's scope when built there.
    """

    average = None  # a weight_averaging.WeightAverage of the classifier, set by the training tool when averaging

    def __init__(self, classifier: keras.Model, method: Method, seed: int = 0, num_examples: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        method.check_units()
        self.classifier = classifier
        self.method = method
        self.seed = int(seed)
        self.steps_per_epoch = steps_per_epoch
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        spec = method.state_spec(num_examples or 0, tuple(classifier.input_shape[1:]), int(classifier.output_shape[-1]))
        if (spec or method.needs_index) and (num_examples is None or steps_per_epoch is None):
            raise ValueError(f"--method={method.name} keeps per-example state: the trainer needs num_examples and "
                             "steps_per_epoch")
        self._method_variables = method_state.create(spec)

    @property
    def method_state(self) -> dict:
        """name -> variable of the method's state (empty for stateless methods); backups save these."""
        return dict(self._method_variables)

    def _context(self, index: Optional[tf.Tensor]) -> StepContext:
        """The step's StepContext: the position in training from the optimizer's step counter."""
        step = tf.cast(tf.identity(self.optimizer.iterations), tf.int64)
        if self.steps_per_epoch:
            epoch = tf.cast(tf.cast(step, tf.float64) / float(self.steps_per_epoch), tf.float32)
            epoch_index = step // int(self.steps_per_epoch)
            epoch_step = step - epoch_index * int(self.steps_per_epoch)
        else:
            epoch, epoch_index = tf.constant(float("nan"), tf.float32), tf.constant(-1, tf.int64)
            epoch_step = tf.constant(-1, tf.int64)
        index = tf.cast(index, tf.int64) if index is not None and self.method.needs_index else None
        return StepContext(step, epoch, epoch_index, index, self.method_state, epoch_step)

    def compile(self, optimizer="rmsprop", **kwargs):
        """Keras' compile; the optimizer then applies each gradient `method.optimizer_steps_per_batch` times (ELLE's
        official two torch steps; optim.CoupledSGD), within one optimizer iteration."""
        super().compile(optimizer=optimizer, **kwargs)
        optim.set_steps_per_batch(self.optimizer, self.method.optimizer_steps_per_batch)

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def fit(self, x=None, *args, **kwargs):
        """Keras `fit`, after refusing images outside [0, 1] at the start of training (optimizer step 0): all of `x`
        for arrays, the first batch of a tf.data.Dataset or PyDataset (read once more for the check)."""
        if self.optimizer is not None and int(self.optimizer.iterations.numpy()) == 0:
            images = first_images(x)
            if images is not None:
                units.check_images(images, "training images", units.rescaling_layer(self.classifier))
        return super().fit(x, *args, **kwargs)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' symbolic build when classifier and optimizer are built (train.py builds both before fit).

        Keras 3 reduces a first batch across replicas there, which fails under MultiWorkerMirroredStrategy
        (keras-team/keras#20585); with everything built that build has nothing to do.
        """
        optimizer_built = self.optimizer is None or self.optimizer.built
        if optimizer_built and all(layer.built for layer in self._flatten_layers()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        # fit gives (x, y), train_on_batch (x, y, None); a method that needs_index gets (x, y, positions).
        x, y, index = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, tf.float32)
        offset, global_batch = batch_layout(tf.shape(x)[0])
        noise = replica_noise(tf.shape(x), self.method.eps, self.seed, self.optimizer.iterations, offset,
                              global_batch)
        if self.method.needs_index and index is None:
            raise ValueError(f"--method={self.method.name} needs the examples' positions: batches (x, y, index)")
        # Gradients come back multiplied by the loss scale (float16); the LossScaleOptimizer divides it out.
        result = self.method.step(self.classifier, x, y, noise, self._context(index),
                                  loss_scale=loss_scale(self.optimizer))
        grads = result.grads
        if replicas_in_sync() > 1:  # each replica's batch-mean gradient becomes its share of the global mean
            share = tf.cast(tf.shape(x)[0], tf.float32) / global_batch  # the optimizer sums over replicas
            grads = [g * tf.cast(share, g.dtype) for g in grads]
        # One optimizer iteration (the schedules and the noise follow it), in which CoupledSGD applies the gradient
        # method.optimizer_steps_per_batch times (set in compile).
        self.optimizer.apply_gradients(zip(grads, self.classifier.trainable_variables))
        if self.average is not None:  # weight averaging (tf_fastbat.weight_averaging), after every step
            self.average.update(self.optimizer.iterations)
        logits = tf.cast(result.logits, tf.float32)
        self.loss_tracker.update_state(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        self.accuracy_tracker.update_state(y, logits)
        return self._for_keras_reduction({"loss": self.loss_tracker.result(),
                                          "accuracy": self.accuracy_tracker.result(),
                                          "learning_rate": self.optimizer.learning_rate})

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        logits = tf.cast(self.classifier(x, training=False), tf.float32)
        self.loss_tracker.update_state(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits))
        self.accuracy_tracker.update_state(y, logits)
        return self._for_keras_reduction({"loss": self.loss_tracker.result(),
                                          "accuracy": self.accuracy_tracker.result()})

    def _for_keras_reduction(self, logs: dict) -> dict:
        """Scalar logs, shaped [1] with several workers: Keras then reduces them with MEAN over axis 0, which a
        scalar does not have (keras-team/keras#20585); the reduced logs are scalars again."""
        strategy = self.distribute_strategy
        multi_worker = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                        and strategy.extended._in_multi_worker_mode())  # Keras' own test for that reduction
        if not multi_worker:
            return logs
        return {name: tf.reshape(tf.cast(value, tf.float32), [1]) for name, value in logs.items()}


def first_images(data) -> Optional[np.ndarray]:
    """The images `fit` trains on first: an array's all, a tf.data.Dataset's or PyDataset's first batch; None for
    other inputs (generators, distributed datasets), which are not looked at."""
    if isinstance(data, tf.data.Dataset):
        for element in data.take(1):
            return np.asarray(element[0] if isinstance(element, (tuple, list)) else element)
        return None
    if isinstance(data, keras.utils.PyDataset):
        element = data[0]
        return np.asarray(element[0] if isinstance(element, (tuple, list)) else element)
    if isinstance(data, (np.ndarray, tf.Tensor)):
        return np.asarray(data)
    return None


def sgd(learning_rate, momentum, weight_decay: float, mixed_precision: str = "float32") -> keras.optimizers.Optimizer:
    """The paper's optimizer (torch's SGD rule), wrapped in loss scaling under mixed_float16."""
    optimizer = optim.CoupledSGD(learning_rate, momentum=momentum, l2=weight_decay)
    return keras.optimizers.LossScaleOptimizer(optimizer) if mixed_precision == "mixed_float16" else optimizer


def assemble(classifier: keras.Model, method: Method, optimizer, *, seed: int, jit_compile: bool = False,
             num_examples: Optional[int] = None, steps_per_epoch: Optional[int] = None) -> AdversarialTrainer:
    """The compiled trainer with classifier, optimizer and method state built (inside the strategy's scope, if any),
    so that a backup restores into it and Keras has no symbolic build left to do."""
    trainer = AdversarialTrainer(classifier, method, seed=seed, num_examples=num_examples,
                                 steps_per_epoch=steps_per_epoch)
    trainer.compile(optimizer=optimizer, jit_compile=jit_compile)
    trainer(tf.zeros((1, *classifier.input_shape[1:]), tf.float32))
    optimizer.build(classifier.trainable_variables)
    return trainer
