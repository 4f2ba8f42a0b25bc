"""The Keras model that trains a classifier with a method (`tf_fastbat.AdversarialTrainer`): `train_step` draws the
noise, builds the method's StepContext and dispatches; Keras' compile, fit, callbacks and saving do the rest."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat import optim, trainer_inputs, units
from tf_fastbat.errors import UsageError
from tf_fastbat.methods import Method
from tf_fastbat.methods.base import StepContext
from tf_fastbat.methods.global_batch import layout, uniform_slice


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


class MethodState(keras.layers.Layer):
    """The method's state variables (`Method.state_spec`, zeros at the start) as Keras weights, so that
    `save_weights`, `.keras` files, ModelCheckpoint and BackupAndRestore keep them with the classifier's weights and
    the optimizer's. Each is mirrored with ONLY_FIRST_REPLICA aggregation (methods/state.py writes them)."""

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.names = []
        self.built = True  # nothing to build: `create` adds the variables once their shapes are known

    def create(self, spec: dict) -> None:
        for name, (shape, dtype) in spec.items():
            self.add_weight(shape=shape, dtype=dtype, initializer="zeros", trainable=False, autocast=False,
                            aggregation="only_first_replica", name=name)
            self.names.append(name)

    @property
    def created(self) -> bool:
        return bool(self.names)

    def by_name(self) -> dict:
        """name -> the backend tf.Variable, which methods/state.py reads and writes."""
        return {name: variable.value for name, variable in zip(self.names, self.non_trainable_variables)}


@keras.saving.register_keras_serializable(package="tf_fastbat")
class AdversarialTrainer(keras.Model):
    """A Keras model that trains `classifier` (any Keras model from [0, 1] images to logits) with `method` (one of
    tf_fastbat.methods): `compile(optimizer, metrics=...)` and `fit` as for any Keras model; `predict` and `evaluate`
    use the classifier in inference mode. It saves whole (`.keras`) or as weights (classifier, optimizer and the
    method's state), and works with Keras' callbacks.

    `input_shape` (one image's shape) builds a classifier that is not built yet (a Sequential without Input, a
    subclassed model) here; otherwise `fit` builds it from its first batch. `steps_per_epoch` is the epoch length
    the methods' epoch schedules count in (nu_at, liet, fgsm_pgi; default: the length of fit's epoch).
    `num_examples` sizes per-example state (fgsm_pgi; default: the size of the training arrays fit gets). The state
    variables are created here when their shapes are known, so inside the strategy's scope when built there.
    """

    average = None  # a weight_averaging.WeightAverage of the classifier, set by the training tool when averaging

    def __init__(self, classifier: keras.Model, method: Method, seed: int = 0, num_examples: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, input_shape: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(**kwargs)
        method.check_units()
        self.classifier = classifier
        self.method = method
        self.seed = int(seed)
        self.num_examples = num_examples
        self.steps_per_epoch = steps_per_epoch
        self.epoch_length = steps_per_epoch  # the context's; fit sets it when steps_per_epoch is None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.state_layer = MethodState(name="method_state")
        self.image_shape, self.num_classes = None, None
        shape = input_shape if input_shape is not None else classifier_input_shape(classifier)
        if shape is not None:
            self.build_for(shape)

    def build_for(self, image_shape: Sequence[int]) -> None:
        """Builds the classifier on images of `image_shape` (refusing softmax outputs) and the method's state."""
        self.image_shape = tuple(int(d) for d in image_shape)
        probe = tf.random.stateless_uniform((2, *self.image_shape), seed=[0, 0])  # [0, 1] images
        self.num_classes = trainer_inputs.check_logits(self.classifier(probe, training=False))
        self._create_state()
        optimizer = getattr(self, "optimizer", None)  # compiled before the classifier was built
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.classifier.trainable_variables)
        self.built = True

    def _create_state(self) -> None:
        """The method's state variables, once their shapes are known (per-example state: once num_examples is)."""
        if self.state_layer.created or (self.method.needs_index and not self.num_examples):
            return
        with self.distribute_strategy.scope():
            self.state_layer.create(self.method.state_spec(int(self.num_examples or 0), self.image_shape,
                                                           self.num_classes))

    @property
    def method_state(self) -> dict:
        """name -> variable of the method's state (empty for stateless methods); backups save these."""
        return self.state_layer.by_name()

    def get_config(self) -> dict:
        """The classifier (a nested serialized model), the method as its name and fields, the trainer's settings."""
        return {"name": self.name, "trainable": self.trainable,
                "classifier": keras.saving.serialize_keras_object(self.classifier),
                "method": {"name": self.method.name, "hyperparameters": self.method.hyperparameters()},
                "seed": self.seed, "num_examples": self.num_examples, "steps_per_epoch": self.steps_per_epoch,
                "input_shape": None if self.image_shape is None else list(self.image_shape)}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "AdversarialTrainer":
        from tf_fastbat import methods, models  # noqa: F401  models registers the package's layers

        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"), custom_objects=custom_objects)
        method = config.pop("method")
        return cls(classifier, methods.build(method["name"], **method["hyperparameters"]), **config)

    def compile_from_config(self, config: dict) -> None:
        """Keras' loading calls this with the saved compile arguments (the optimizer's state is restored after)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _context(self, index: Optional[tf.Tensor]) -> StepContext:
        """The step's StepContext: the position in training from the optimizer's step counter."""
        step = tf.cast(tf.identity(self.optimizer.iterations), tf.int64)
        if self.epoch_length:
            epoch = tf.cast(tf.cast(step, tf.float64) / float(self.epoch_length), tf.float32)
            epoch_index = step // int(self.epoch_length)
            epoch_step = step - epoch_index * int(self.epoch_length)
        else:
            epoch, epoch_index = tf.constant(float("nan"), tf.float32), tf.constant(-1, tf.int64)
            epoch_step = tf.constant(-1, tf.int64)
        index = tf.cast(index, tf.int64) if index is not None else None
        return StepContext(step, epoch, epoch_index, index, self.method_state, epoch_step)

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                **kwargs):
        """Keras' compile. `loss`: None or a cross-entropy (the method defines the objective; others are refused),
        `metrics`: measured on the logits of the training input (x_adv) and, in evaluate, of the clean input. The
        optimizer applies each gradient `method.optimizer_steps_per_batch` times (ELLE's official two torch steps;
        optim.CoupledSGD), within one optimizer iteration; it is built here once the classifier is."""
        trainer_inputs.check_loss(loss, self.method.name)
        trainer_inputs.refuse("loss_weights", loss_weights, "the method defines the training objective")
        trainer_inputs.refuse("weighted_metrics", weighted_metrics, trainer_inputs.REFUSED_WEIGHTS)
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        optim.set_steps_per_batch(self.optimizer, self.method.optimizer_steps_per_batch)
        if self.built and not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, **kwargs):
        """Keras `fit`. Refused with one line: class_weight, sample_weight; at the start of training (optimizer step
        0), images outside [0, 1] and labels that are neither class indices nor one-hot (all of arrays, the first
        batch of a tf.data.Dataset or PyDataset, read once more for the check). Arrays for a method with
        per-example state (fgsm_pgi) carry their positions to the method in Keras' sample-weight slot."""
        trainer_inputs.refuse("class_weight", class_weight, trainer_inputs.REFUSED_WEIGHTS)
        trainer_inputs.refuse("sample_weight", sample_weight, trainer_inputs.REFUSED_WEIGHTS)
        if self.optimizer is None:
            raise UsageError("fit: compile the trainer first (trainer.compile(optimizer=...))")
        if trainer_inputs.is_array(x) and self.method.needs_index:
            x, y, held_out = trainer_inputs.split_validation(x, y, validation_split)
            validation_split, validation_data = 0.0, validation_data if held_out is None else held_out
            sample_weight = np.arange(len(x), dtype=np.int64)  # positions, shuffled with their examples
            self._size_state(len(x))
        self._check_first_batch(x, y)
        self._set_epoch_length(trainer_inputs.epoch_length(x, batch_size, steps_per_epoch))
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                           validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
                           sample_weight=sample_weight, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                           **kwargs)

    def _check_first_batch(self, x, y) -> None:
        """Builds an unbuilt classifier from the first batch and, at step 0, checks its images and labels."""
        at_start = int(self.optimizer.iterations.numpy()) == 0
        if self.built and not at_start:
            return
        images, labels, _ = trainer_inputs.first_batch(x, y)
        if not self.built:
            if images is None:
                raise UsageError("input_shape: the classifier is not built and fit cannot see the data's first batch; "
                                 "pass AdversarialTrainer(..., input_shape=(height, width, channels))")
            self.build_for(images.shape[1:])
        if at_start and images is not None:
            units.check_images(images, "training images", units.rescaling_layer(self.classifier))
        if at_start and labels is not None:
            trainer_inputs.check_labels(labels, self.num_classes)

    def _size_state(self, num_examples: int) -> None:
        """Per-example state for `num_examples` training examples (created now if it was not yet)."""
        if self.state_layer.created and num_examples > int(self.num_examples or 0):
            raise UsageError(f"num_examples={self.num_examples}: the trainer keeps per-example state for that many "
                             f"examples, and fit got {num_examples}")
        self.num_examples = self.num_examples or num_examples
        if self.built:
            self._create_state()

    def _set_epoch_length(self, steps: Optional[int]) -> None:
        """The epoch length of the step context: steps_per_epoch if given at construction, else fit's epoch."""
        length = self.steps_per_epoch or steps
        if self.method.needs_epoch and not length:
            raise UsageError(f"steps_per_epoch: {self.method.name} follows the epoch, and fit cannot count the steps "
                             "of an epoch of this data; pass steps_per_epoch to fit or to AdversarialTrainer")
        if self.method.needs_index and not self.state_layer.created:
            raise UsageError(f"num_examples: {self.method.name} keeps state per training example; pass "
                             "AdversarialTrainer(..., num_examples=<training set size>) or train on arrays")
        if length != self.epoch_length:
            self.epoch_length, self.train_function = length, None  # the context's epoch is traced in

    @property
    def metrics(self):
        compiled = getattr(self, "_compile_metrics", None)
        return [self.loss_tracker, self.accuracy_tracker] + ([compiled] if compiled is not None else [])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras' symbolic build when classifier, optimizer and compiled metrics are built (train.py builds the
        first two before fit and compiles no metrics).

        Keras 3 reduces a first batch across replicas there, which fails under MultiWorkerMirroredStrategy
        (keras-team/keras#20585); with everything built that build has nothing to do.
        """
        optimizer_built = self.optimizer is None or self.optimizer.built
        compiled = getattr(self, "_compile_metrics", None)
        metrics_built = compiled is None or compiled.built
        if optimizer_built and metrics_built and all(layer.built for layer in self._flatten_layers()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        # fit gives (x, y), train_on_batch (x, y, None); a method that needs_index gets (x, y, positions).
        x, y, third = keras.utils.unpack_x_y_sample_weight(data)
        index = trainer_inputs.positions(self.method.needs_index, self.method.name, third)
        x, labels = tf.cast(x, tf.float32), trainer_inputs.sparse_labels(y)
        offset, global_batch = batch_layout(tf.shape(x)[0])
        noise = replica_noise(tf.shape(x), self.method.eps, self.seed, self.optimizer.iterations, offset,
                              global_batch)
        # Gradients come back multiplied by the loss scale (float16); the LossScaleOptimizer divides it out.
        result = self.method.step(self.classifier, x, labels, noise, self._context(index),
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
        logs = self._measure(y, labels, tf.cast(result.logits, tf.float32))
        return self._for_keras_reduction({**logs, "learning_rate": self.optimizer.learning_rate})

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logits = tf.cast(self.classifier(x, training=False), tf.float32)
        return self._for_keras_reduction(self._measure(y, trainer_inputs.sparse_labels(y), logits, sample_weight))

    def _measure(self, y, labels, logits, sample_weight=None) -> dict:
        """Loss (cross-entropy), accuracy and the compiled metrics of `logits`, weighted by `sample_weight` (given
        to evaluate) if any; their running values."""
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)
        self.loss_tracker.update_state(cross_entropy, sample_weight=sample_weight)
        self.accuracy_tracker.update_state(labels, logits, sample_weight=sample_weight)
        logs = {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()}
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is not None:
            compiled.update_state(y, logits, sample_weight=sample_weight)
            logs.update(compiled.result())
        return logs

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
    return trainer_inputs.first_batch(data)[0]


def classifier_input_shape(classifier: keras.Model) -> Optional[Tuple[int, ...]]:
    """One image's shape when the classifier declares it (functional, Sequential with an Input), else None."""
    try:
        shape = classifier.input_shape
    except (AttributeError, ValueError):  # a Sequential without Input, a subclassed model
        return None
    if isinstance(shape, list) or any(d is None for d in shape[1:]):
        raise UsageError(f"classifier: input shape {shape}; the trainer takes a model with one image input of a "
                         "fixed size (pass input_shape=... for a model built otherwise)")
    return tuple(int(d) for d in shape[1:])


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
    trainer.compile(optimizer=optimizer, jit_compile=jit_compile)  # builds the optimizer too
    return trainer
