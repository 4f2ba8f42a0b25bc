"""Resuming a run where it stopped, bit-identically: what a backup holds and the callback that writes it.

A backup holds the classifier's and optimizer's variables (weights, BatchNorm statistics, momentum, step
counter), the method's state (e.g. FGSM-PGI's per-example perturbations), the weight average (if the run
averages), each replica's loss/accuracy accumulators of the epoch in progress, the position in the data stream
(epoch, batches done; the stream is a function of the seed and that position, `data.Splits.train_from`), the
early-stopping state (best.json and a link to best.keras) and the number of training-log rows. The attack noise
is a function of (seed, optimizer step), so it needs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat import backup, interrupt, record
from tf_fastbat.checkpoints import read_json, write_json_atomic

BEST_JSON, BEST_KERAS = record.BEST_STATE, record.checkpoint_file("best")  # in the checkpoints folder


class TrainingInterrupted(RuntimeError):
    """Raised after the backup that a SIGTERM/SIGINT asked for is written; the message is the one line to print."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: `step` batches of epoch `epoch` (0-based) are done."""

    epoch: int = 0
    step: int = 0

    def batches(self, steps_per_epoch: int) -> int:
        """Batches of the training stream consumed so far."""
        return self.epoch * steps_per_epoch + self.step


@dataclasses.dataclass
class Restored:
    """What the run starts from: its position, the epoch's seconds and metric accumulators so far (mid-epoch)."""

    position: Position = Position()
    epoch_seconds: float = 0.0
    metrics: Optional[np.ndarray] = None
    path: Optional[str] = None


def truncate_log(path: str, rows: int) -> None:
    """Keep the CSV log's header and first `rows` rows (none: no file), so that a resumed epoch is logged once."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    if rows == 0:
        os.remove(path)
    elif len(lines) > rows + 1:
        temporary = f"{path}.partial-{os.getpid()}"
        with open(temporary, "w", newline="") as out:
            out.writelines(lines[:rows + 1])
        os.replace(temporary, path)


def _averaged_variables(trainer: keras.Model) -> list:
    """The weight average's variables (tf_fastbat.weight_averaging), none when the run does not average."""
    average = getattr(trainer, "average", None)
    return [] if average is None else list(average.model.variables)


class RunState:
    """Reads and restores everything of a run that a backup holds."""

    def __init__(self, trainer: keras.Model, strategy: tf.distribute.Strategy, checkpoint_dir: str, log_path: str,
                 batch_size: int, steps_per_epoch: int):
        self.trainer, self.strategy = trainer, strategy
        self.checkpoint_dir, self.log_path = checkpoint_dir, log_path
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        optimizer = trainer.optimizer
        self.variables = [("model/" + v.path, v) for v in trainer.classifier.variables] + \
                         [("optimizer/" + v.path, v) for v in optimizer.variables] + \
                         [("method/" + name, v) for name, v in sorted(getattr(trainer, "method_state", {}).items())] + \
                         [("average/" + v.path, v) for v in _averaged_variables(trainer)]
        self.metric_variables = [v for metric in trainer.metrics for v in metric.variables]
        self._gather = tf.function(self._gather_metrics)
        self._assign = tf.function(self._assign_metrics)

    # Metric accumulators live per replica (sync-on-read): read and written replica by replica.
    def _gather_metrics(self):
        local = self.strategy.run(lambda: tf.stack([tf.cast(tf.reshape(v.value, []), tf.float64)
                                                    for v in self.metric_variables])[None])
        return self.strategy.gather(local, axis=0)

    def _assign_metrics(self, values):
        def assign():
            row = values[tf.distribute.get_replica_context().replica_id_in_sync_group]
            for index, variable in enumerate(self.metric_variables):
                variable.assign(tf.cast(row[index], variable.dtype))
        self.strategy.run(assign)

    def metrics(self) -> np.ndarray:
        """[replicas, accumulators] of the epoch in progress (a collective under several workers: all must call)."""
        return self._gather().numpy()

    def restore_metrics(self, values: np.ndarray) -> None:
        replicas = self.strategy.num_replicas_in_sync
        if values.shape != (replicas, len(self.metric_variables)):
            raise backup.BackupError(f"the backup's metric state is for {values.shape[0]} replicas, this run has "
                                     f"{replicas}; resume with the same number of devices and workers")
        self._assign(tf.constant(values, tf.float64))

    def arrays(self) -> Dict[str, np.ndarray]:
        return {f"{index:05d}": np.asarray(variable.numpy()) for index, (_, variable) in enumerate(self.variables)}

    def describe(self) -> List[Tuple[str, List[int]]]:
        return [(name, list(variable.shape)) for name, variable in self.variables]

    def state(self, position: Position, epoch_seconds: float) -> Dict:
        """The JSON part of a backup at `position` (log rows = epochs completed)."""
        return {"epoch": position.epoch, "step": position.step, "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.batch_size, "epoch_seconds": epoch_seconds,
                "best": read_json(os.path.join(self.checkpoint_dir, BEST_JSON)), "log_rows": position.epoch,
                "variables": self.describe(), "replicas": self.strategy.num_replicas_in_sync}

    def best_file(self, state: Dict) -> Dict[str, str]:
        path = os.path.join(self.checkpoint_dir, BEST_KERAS)
        return {BEST_KERAS: path} if state["best"] is not None and os.path.exists(path) else {}

    def restore(self, found: backup.Backup) -> Restored:
        """Variables, early-stopping state and log rows from `found`; the metric accumulators come back at the
        start of the resumed epoch (Keras resets them there)."""
        state = found.state
        for flag, value in (("batch_size", self.batch_size), ("steps_per_epoch", self.steps_per_epoch)):
            if state[flag] != value:
                raise backup.BackupError(f"{found.path} was written with {flag} {state[flag]}, this run has {value}; "
                                         f"rerun the same command (see {record.CONFIG_FILE}) or use another workdir")
        if [[name, list(shape)] for name, shape in state["variables"]] != [list(d) for d in self.describe()]:
            raise backup.BackupError(f"{found.path} holds another model or optimizer than this run builds; rerun "
                                     f"the same command (see {record.CONFIG_FILE}) or use another workdir")
        for index, (_, variable) in enumerate(self.variables):
            variable.assign(found.arrays[f"{index:05d}"])
        self._restore_best(state["best"], found.file(BEST_KERAS))
        truncate_log(self.log_path, state["log_rows"])
        position = Position(state["epoch"], state["step"])
        metrics = found.arrays.get("metrics") if position.step else None
        return Restored(position, state["epoch_seconds"] if position.step else 0.0, metrics, found.path)

    def start_over(self) -> bool:
        """No backup: clear what an earlier run left in the workdir (log rows, best model); True if there was any."""
        stale = [p for p in (self.log_path, *(os.path.join(self.checkpoint_dir, n) for n in (BEST_JSON, BEST_KERAS)))
                 if os.path.exists(p)]
        self._restore_best(None, None)
        truncate_log(self.log_path, 0)
        return bool(stale)

    def _restore_best(self, best: Optional[Dict], source: Optional[str]) -> None:
        json_path, keras_path = (os.path.join(self.checkpoint_dir, n) for n in (BEST_JSON, BEST_KERAS))
        if best is None:
            for path in (json_path, keras_path):
                if os.path.exists(path):
                    os.remove(path)
            return
        if source is None:
            raise backup.BackupError(f"the backup records a best model (epoch {best.get('epoch')}) but holds no "
                                     f"{BEST_KERAS}")
        if not (os.path.exists(keras_path) and os.path.samefile(source, keras_path)):
            backup.place_file(source, keras_path)
        if read_json(json_path) != best:
            write_json_atomic(best, json_path)


def several_workers(strategy: tf.distribute.Strategy) -> bool:
    """True under MultiWorkerMirroredStrategy with more than one worker (Keras' own test, as in trainer.py)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


class Agreement:
    """Several workers: each step they learn together whether any of them wants a backup or was interrupted, so
    that all save at the same step and stop together."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self._sum = tf.function(lambda flags: strategy.run(  # tf.identity: the reduction needs an on-device value
            lambda f: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(f)),
            args=(flags,)))

    def __call__(self, save: bool, signum: Optional[int]) -> Tuple[bool, Optional[int]]:
        total = self.strategy.experimental_local_results(
            self._sum(tf.constant([float(save), float(signum is not None)])))[0].numpy()
        stop = signum if signum is not None else (signal.SIGTERM if total[1] > 0 else None)  # a peer's signal
        return bool(total[0] > 0), stop


class StepBackup(keras.callbacks.Callback):
    """Writes a backup every `every_steps` steps, every `every_seconds` seconds, at every epoch end, and at the next
    step boundary after a SIGTERM/SIGINT (then raises TrainingInterrupted). Put it last: an epoch-end backup must
    follow the log row and the early-stopping checkpoints."""

    def __init__(self, run: RunState, directory: str, *, epochs: int, chief: bool, every_steps: int,
                 every_seconds: float, restored: Restored, timer, stop: interrupt.StopRequest,
                 agree: Optional[Agreement] = None, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.run, self.directory, self.epochs, self.chief = run, directory, epochs, chief
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.restored, self.timer, self.stop, self.agree, self.clock = restored, timer, stop, agree, clock
        self.epoch, self.offset = 0, 0
        self.last_path: Optional[str] = restored.path
        self._last_time = clock()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        resumed = self.restored.position
        self.offset = resumed.step if epoch == resumed.epoch else 0
        if self.offset and self.restored.metrics is not None:
            self.run.restore_metrics(self.restored.metrics)

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1
        if step >= self.run.steps_per_epoch:  # the epoch-end backup follows
            return
        done = Position(self.epoch, step).batches(self.run.steps_per_epoch)
        due = bool(self.every_steps and done % self.every_steps == 0) or bool(
            self.every_seconds and self.clock() - self._last_time >= self.every_seconds)
        due, signum = self.agree(due, self.stop.signum) if self.agree else (due, self.stop.signum)
        if due or signum is not None:
            self._save(Position(self.epoch, step), self.timer.elapsed(), self.run.metrics())
        if signum is not None:
            self._interrupted(signum, Position(self.epoch, step))

    def on_epoch_end(self, epoch, logs=None):
        self._save(Position(epoch + 1, 0), 0.0, None)
        _, signum = self.agree(False, self.stop.signum) if self.agree else (False, self.stop.signum)
        if signum is not None and epoch + 1 < self.epochs:
            self._interrupted(signum, Position(epoch + 1, 0))

    def _save(self, position: Position, epoch_seconds: float, metrics: Optional[np.ndarray]) -> None:
        self._last_time = self.clock()
        if not self.chief:
            return
        arrays = self.run.arrays()
        if metrics is not None:
            arrays["metrics"] = metrics
        state = self.run.state(position, epoch_seconds)
        self.last_path = backup.write(self.directory, position.batches(self.run.steps_per_epoch), arrays, state,
                                      self.run.best_file(state))

    def _interrupted(self, signum: int, position: Position) -> None:
        where = self.last_path if self.chief else f"the chief's {self.directory}"
        raise TrainingInterrupted(
            f"interrupted by {interrupt.name(signum)} at epoch {position.epoch + 1}/{self.epochs}, step "
            f"{position.step}/{self.run.steps_per_epoch}; backup written to {where}; rerun the same command to resume",
            signum)


def fit(trainer: keras.Model, stream: Callable[[int], tf.data.Dataset], start: Position, epochs: int,
        steps_per_epoch: int, callbacks: list, verbose: int) -> Dict[str, list]:
    """Keras `fit` from `start`: the rest of a partly done epoch, then the remaining epochs; the merged history.

    The stream starts at the batch where training stopped, so the batches are those of an unbroken run.
    """
    history: Dict[str, list] = {}
    phases = []
    if start.step and start.epoch < epochs:
        phases.append((start.epoch, start.epoch + 1, steps_per_epoch - start.step, start.batches(steps_per_epoch)))
    first = start.epoch + (1 if start.step else 0)
    if first < epochs:
        phases.append((first, epochs, steps_per_epoch, first * steps_per_epoch))
    for initial, end, steps, batches in phases:
        result = trainer.fit(stream(batches), initial_epoch=initial, epochs=end, steps_per_epoch=steps,
                             callbacks=callbacks, verbose=verbose)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
    return history
