"""Training callbacks: robust early stopping (Rice et al. 2020) with best/last checkpoints, and a NaN guard."""

from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional

import keras
import numpy as np

from tf_fastbat import record
from tf_fastbat.attacks.pgd import PGDAttack
from tf_fastbat.checkpoints import read_json, save_model_atomic, write_json_atomic
from tf_fastbat.evaluation import classifier_logits, robustness
from tf_fastbat.progress import ProgressBars
from tf_fastbat.report import eps_key


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss stops being finite; the last epoch's backup is left untouched."""

    def __init__(self, loss: float, batch: int):
        super().__init__(loss, batch)
        self.loss, self.batch = loss, batch

    def __str__(self) -> str:
        return self.advice("the learning rate")

    def advice(self, learning_rate: str) -> str:
        """The message, naming the setting to lower as `learning_rate` (the training tool names its flag)."""
        return (f"training loss became {self.loss} at batch {self.batch}; lower {learning_rate} or check the data; "
                "checkpoints from earlier epochs are kept")


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops the run with an exception (so that no NaN weights reach a checkpoint)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(float(loss), batch)


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall time to the logs (seconds per epoch is what fast AT is about).

    `carry` {epoch: seconds} holds the time an interrupted run already spent in an epoch it resumes mid-way.
    """

    def __init__(self, carry: Optional[Dict[int, float]] = None):
        super().__init__()
        self.carry = dict(carry or {})
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter() - self.carry.pop(epoch, 0.0)

    def elapsed(self) -> float:
        """Seconds spent in the epoch in progress."""
        return time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = self.elapsed()


class RobustValidation(keras.callbacks.Callback):
    """After every epoch: clean and PGD accuracy on the held-out split; keeps best (by PGD) and last models.

    With `verbose`, the PGD run shows its progress and ends with one line: the held-out accuracies, the seconds the
    check took and the best epoch so far.
    """

    def __init__(self, classifier: keras.Model, checkpoint_dir: str, x_val: Optional[np.ndarray],
                 y_val: Optional[np.ndarray], eps: float, steps: int, restarts: int, seed: int,
                 batch_size: int = 256, verbose: bool = False):
        super().__init__()
        self.verbose = verbose
        self.classifier = classifier
        self.checkpoint_dir = checkpoint_dir
        self.x_val, self.y_val = x_val, y_val
        self.eps, self.batch_size = eps, batch_size
        self.pgd = PGDAttack(steps, restarts, seed=seed, batch_size=batch_size)
        self.logits_fn = classifier_logits(classifier)
        self.state_path = os.path.join(checkpoint_dir, record.BEST_STATE)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        save_model_atomic(self.classifier, os.path.join(self.checkpoint_dir, record.checkpoint_file("last")))
        if self.x_val is None or not len(self.x_val):
            return
        title = f"early stopping after epoch {epoch + 1}"
        if self.verbose and (self.params or {}).get("verbose", 1) == 1:
            print(flush=True)  # ends the epoch's open progress bar line, which Keras finishes after the callbacks
        bars = (lambda run: ProgressBars(f"{title} (held-out): {run}")) if self.verbose else None
        measured = robustness(self.logits_fn, self.x_val, self.y_val, [self.eps], [self.pgd], self.batch_size, bars)
        clean, (robust,) = measured["clean_accuracy"], measured["robust_accuracy"][self.pgd.name].values()
        logs["val_clean_accuracy"], logs["val_robust_accuracy"] = clean, robust
        best = read_json(self.state_path, {"val_robust_accuracy": -1.0})
        if robust > best["val_robust_accuracy"]:
            save_model_atomic(self.classifier, os.path.join(self.checkpoint_dir, record.checkpoint_file("best")))
            best = {"epoch": epoch + 1, "val_robust_accuracy": robust, "val_clean_accuracy": clean}
            write_json_atomic(best, self.state_path)
        if self.verbose:
            print(f"{title}: held-out clean accuracy {clean:.2%}, {self.pgd.name} robust accuracy at eps "
                  f"{eps_key(self.eps)} {robust:.2%} ({measured['seconds']:.1f} s); best epoch {best['epoch']} "
                  f"({best['val_robust_accuracy']:.2%})", flush=True)


def training_callbacks(timer: EpochTimer, validation: RobustValidation, log_path: str, backup: keras.callbacks.Callback,
                       alignment: Optional[keras.callbacks.Callback] = None,
                       tensorboard_dir: Optional[str] = None) -> List[keras.callbacks.Callback]:
    """The training run's callbacks in the order Keras must call them at an epoch's end:

    the timer (epoch_seconds), the NaN guard, the held-out check (val_* logs, best/last checkpoints), the gradient
    alignment (Fig. 2), then TensorBoard and the CSV log, which record what the ones before wrote into the logs,
    and last the step backup, which saves the log rows and checkpoints the others have just written.
    """
    tensorboard = keras.callbacks.TensorBoard(tensorboard_dir, write_graph=False) if tensorboard_dir else None
    order = [timer, NonFiniteLossGuard(), validation, alignment, tensorboard,
             keras.callbacks.CSVLogger(log_path, append=True), backup]
    return [callback for callback in order if callback is not None]
