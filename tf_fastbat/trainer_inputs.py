"""What AdversarialTrainer's `compile` and `fit` accept, and the one-line refusals of what they cannot honour.

The method defines the training objective (an adversarial, often regularized, batch mean), so Keras' `loss`,
`loss_weights`, `sample_weight` and `class_weight` cannot change it exactly for every method: they are refused, a
cross-entropy `loss` excepted (it names the objective the methods already use). Labels may be class indices
([batch] or [batch, 1]) or one-hot rows; soft labels are refused (label smoothing is a method hyperparameter). A
classifier must output logits: softmax outputs are refused by AutoAttack's criterion (attacks/autoattack/checks.py,
check_range_output, which evaluation.model_warnings applies).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat.errors import UsageError

KERAS_DEFAULT_BATCH = 32  # fit's batch_size when none is given
CROSS_ENTROPY_NAMES = ("sparse_categorical_crossentropy", "categorical_crossentropy")
PROBABILITY_TOLERANCE = 1e-5  # check_range_output's alpha
REFUSED_WEIGHTS = ("the method's objective is a batch mean the trainer cannot reweight exactly for every method; "
                   "balance or repeat the examples in the data instead")


def check_loss(loss, method_name: str) -> None:
    """Refuses a Keras `loss` other than the cross-entropy on logits the methods train with (None passes)."""
    if loss is None or loss in CROSS_ENTROPY_NAMES:
        return
    plain = isinstance(loss, (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy))
    if plain and getattr(loss, "from_logits", False) and not getattr(loss, "label_smoothing", 0.0) \
            and getattr(loss, "ignore_class", None) is None and loss.reduction == "sum_over_batch_size":
        return
    shown = loss if isinstance(loss, str) else type(loss).__name__
    raise UsageError(f"loss={shown!r}: the method ({method_name}) defines the training objective; compile with "
                     "loss=None or 'sparse_categorical_crossentropy', and set label smoothing with "
                     "methods.build(..., label_smoothing=...)")


def refuse(name: str, value, reason: str) -> None:
    """A one-line UsageError naming `name` when `value` is given."""
    if value is not None:
        raise UsageError(f"{name}: not supported: {reason}")


def sparse_labels(y: tf.Tensor) -> tf.Tensor:
    """Class indices [batch] from labels given as [batch], [batch, 1] or one-hot [batch, classes] (rank 1 as is)."""
    if y.shape.rank == 2:
        return tf.reshape(y, [-1]) if y.shape[-1] == 1 else tf.argmax(y, axis=-1, output_type=tf.int32)
    return y


def check_labels(y: np.ndarray, num_classes: int) -> None:
    """Refuses labels that are not class indices in [0, num_classes) or exact one-hot rows of num_classes."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        if not (np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1)):
            raise UsageError(f"y: rows of {num_classes} values that are not one-hot (soft labels?); the methods train "
                             "on class labels: give class indices or one-hot rows, and set label smoothing with "
                             "methods.build(..., label_smoothing=...)")
        return
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UsageError(f"y: labels of shape {y.shape} for a classifier of {num_classes} classes; give class "
                         f"indices ([batch] or [batch, 1]) or one-hot rows ([batch, {num_classes}])")
    if y.size and (np.any(y != np.round(y)) or y.min() < 0 or y.max() >= num_classes):
        raise UsageError(f"y: class indices must be whole numbers in [0, {num_classes}); got values in "
                         f"[{y.min():g}, {y.max():g}]")


def check_logits(outputs: tf.Tensor) -> int:
    """The number of classes of [batch, classes] outputs; refuses other shapes and softmax probabilities."""
    if outputs.shape.rank != 2:
        raise UsageError(f"classifier: outputs of shape {tuple(outputs.shape)}; expected logits [batch, classes]")
    values = np.asarray(outputs, np.float64)
    if (values.max() < 1 + PROBABILITY_TOLERANCE and values.min() > -PROBABILITY_TOLERANCE
            and np.all(np.abs(values.sum(axis=-1) - 1) < PROBABILITY_TOLERANCE)):
        raise UsageError("classifier: its outputs are probabilities (in [0, 1], each row summing to 1), but the "
                         "methods differentiate cross-entropy on logits: remove the final softmax (e.g. Dense(10) "
                         "rather than Dense(10, activation='softmax'))")
    return int(outputs.shape[-1])


def is_array(data) -> bool:
    return isinstance(data, (np.ndarray, tf.Tensor)) and not isinstance(data, tf.data.Dataset)


def first_batch(x, y=None) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """(images, labels, third element) that `fit` trains on first: all of arrays, the first batch of a
    tf.data.Dataset or PyDataset (read once more here); Nones for inputs not looked at (generators...)."""
    if is_array(x):
        return np.asarray(x), None if y is None else np.asarray(y), None
    element = None
    if isinstance(x, tf.data.Dataset):
        element = next(iter(x.take(1)), None)
    elif isinstance(x, keras.utils.PyDataset):
        element = x[0]
    if element is None:
        return None, None, None
    if not isinstance(element, (tuple, list)):
        return np.asarray(element), None, None
    parts = [None if part is None else np.asarray(part) for part in element] + [None, None]
    return parts[0], parts[1], parts[2]


def epoch_length(x, batch_size: Optional[int], steps_per_epoch: Optional[int]) -> Optional[int]:
    """Steps in one of fit's epochs: steps_per_epoch, or counted from arrays, a finite Dataset or a PyDataset."""
    if steps_per_epoch:
        return int(steps_per_epoch)
    if is_array(x):
        return math.ceil(len(x) / (batch_size or KERAS_DEFAULT_BATCH))
    if isinstance(x, tf.data.Dataset):
        count = int(x.cardinality())
        return count if count > 0 else None
    if isinstance(x, keras.utils.PyDataset):
        return x.num_batches
    return None


def split_validation(x, y, validation_split: float):
    """(x_train, y_train, validation_data) as Keras' validation_split cuts arrays: the last fraction is held out."""
    if not validation_split:
        return x, y, None
    split_at = int(math.floor(len(x) * (1.0 - validation_split)))
    if split_at == 0 or split_at == len(x):
        raise UsageError(f"validation_split={validation_split}: leaves no training or no validation example of "
                         f"{len(x)}")
    return x[:split_at], y[:split_at], (x[split_at:], y[split_at:])


def positions(needs_index: bool, method_name: str, third: Optional[tf.Tensor]) -> Optional[tf.Tensor]:
    """The batch's positions in the training set (the third element of a batch) for a method that needs them;
    refuses a missing or non-integer one, and a third element (a sample weight) for other methods."""
    if not needs_index:
        refuse("sample_weight", third, REFUSED_WEIGHTS)
        return None
    if third is None or not third.dtype.is_integer:
        raise UsageError(f"{method_name} keeps state per training example: train on arrays, or on batches "
                         "(images, labels, positions) with each example's int position in the training set")
    return third
