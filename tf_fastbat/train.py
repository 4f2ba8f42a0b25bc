"""python -m tf_fastbat.train --flagfile=flags/<experiment>.cfg: adversarial training with Keras `fit`."""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from tf_fastbat import cli, config

FLAGS = flags.FLAGS
TOOL = "tf_fastbat.train"
ES_STREAMED_EXAMPLES = 1000  # held-out examples kept in memory for early stopping on streamed or folder data


def _warn(message: str) -> None:
    sys.stderr.write(f"tf_fastbat.train: warning: {message}\n")


def _note(message: str) -> None:
    sys.stderr.write(f"tf_fastbat.train: {message}\n")


def _configure_runtime(f) -> None:
    """Seeds, determinism and the dtype policy: process-wide settings, set once at the edge."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(f.seed)
    # Keras silently drops XLA under op determinism, so --jit_compile wins over "auto".
    deterministic = f.deterministic == "true" or (
        f.deterministic == "auto" and not tf.config.list_physical_devices("GPU") and not f.jit_compile)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(f.mixed_precision)


def run(f=FLAGS) -> dict:
    """Train, keep best and last checkpoints, evaluate both on the test split, write report.json."""
    import keras
    import numpy as np

    from tf_fastbat import (backup, callbacks as cb, data, distribution, evaluation, interrupt, methods, models,
                            optim, report, resume, weight_averaging)
    from tf_fastbat.checkpoints import write_json_atomic, read_json
    from tf_fastbat.metrics import GradientAlignmentLogger
    from tf_fastbat.trainer import assemble, sgd

    strategy = distribution.strategy_for(f.distribution)  # before any other TF op (multi-worker needs it)
    _configure_runtime(f)
    method = methods.build(f.method, **config.method_hparams(f))
    eval_eps = config.eval_eps_list(f)
    source = data.load(f.dataset, f.data_dir, f.manual_dir, f.image_size)
    es_examples = sys.maxsize if f.es_num_examples < 0 else f.es_num_examples
    splits = data.splits(source, f.batch_size, f.val_ratio, f.seed, es_examples, f.data_dir,
                         drop_remainder=strategy.num_replicas_in_sync > 1, with_index=method.needs_index)
    steps_per_epoch = -(-splits.num_train // f.batch_size)
    if splits.num_train and strategy.num_replicas_in_sync > 1:
        steps_per_epoch = splits.num_train // f.batch_size
    if f.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, f.steps_per_epoch)

    chief = distribution.is_chief()
    workdir = f.workdir if chief else os.path.join(f.workdir, f".worker-{distribution.worker_index()}")
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    write_json_atomic({**config.as_dict(f), "method_hparams": method.hparams(), "num_classes": source.num_classes,
                       "class_names": list(source.class_names), "image_shape": list(source.image_shape),
                       "replicas": strategy.num_replicas_in_sync}, os.path.join(workdir, "config.json"))

    with strategy.scope():
        classifier = models.build(f.model, source.num_classes, f.activation, f.width_multiplier,
                                  source.image_shape, *config.input_statistics(source.mean, source.std, f))
        if f.sync_batch_norm == "true" or (f.sync_batch_norm == "auto" and strategy.num_replicas_in_sync > 1):
            distribution.synchronize_batch_norm(classifier)
        lr = optim.schedule(f.lr_schedule, epochs=f.epochs, steps_per_epoch=steps_per_epoch, lr_max=f.lr_max,
                            lr_min=f.lr_min, cyclic_milestone=f.cyclic_milestone,
                            key_epochs=[int(e) for e in f.key_epochs], decay=f.lr_decay_rate)
        momentum = optim.momentum_schedule(f.lr_schedule, momentum=f.momentum, cycle_momentum=f.cycle_momentum,
                                           base_momentum=f.base_momentum, epochs=f.epochs,
                                           steps_per_epoch=steps_per_epoch, cyclic_milestone=f.cyclic_milestone)
        trainer = assemble(classifier, method, sgd(lr, momentum, f.weight_decay, f.mixed_precision), seed=f.seed,
                           jit_compile=f.jit_compile, num_examples=splits.num_train, steps_per_epoch=steps_per_epoch)
        trainer.average = weight_averaging.maybe(classifier, f.weight_averaging)
    validated = classifier if trainer.average is None else trainer.average.model  # checkpointed, reported, exported

    log_path = os.path.join(workdir, "training_log.csv")
    state = resume.RunState(trainer, strategy, checkpoint_dir, log_path, f.batch_size, steps_per_epoch)
    backup_dir = os.path.join(f.workdir, "backup")  # the chief's: every worker restores from it
    found = backup.newest(backup_dir, _warn)
    if found is not None:
        restored = state.restore(found)
        _note(f"resuming from {found.path} (epoch {restored.position.epoch + 1}, step {restored.position.step})")
    else:
        restored = resume.Restored()
        if state.start_over():
            _warn(f"no backup in {backup_dir}: starting over (the workdir's old log rows and best model are dropped)")
    timer = cb.EpochTimer({restored.position.epoch: restored.epoch_seconds})
    stop = interrupt.StopRequest()

    val_x, val_y = validation_arrays(splits, es_examples)
    callbacks = [
        timer,
        cb.NonFiniteLossGuard(),
        cb.RobustValidation(validated, checkpoint_dir, val_x, val_y, method.eps or eval_eps[0],
                            f.es_attack_step, f.es_restarts, f.seed, verbose=chief),
        keras.callbacks.CSVLogger(log_path, append=True),
        resume.StepBackup(state, backup_dir, epochs=f.epochs, chief=chief, every_steps=f.backup_every_steps,
                          every_seconds=f.backup_every_seconds, restored=restored, timer=timer, stop=stop,
                          agree=resume.Agreement(strategy) if resume.several_workers(strategy) else None),
    ]
    if val_x is not None:  # before CSVLogger/TensorBoard, so that they record logs["gradient_alignment"] (Fig. 2)
        callbacks.insert(3, GradientAlignmentLogger(classifier, val_x[:512], val_y[:512],
                                                    method.eps or eval_eps[0], seed=f.seed))
    if f.tensorboard:
        callbacks.insert(len(callbacks) - 2, keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"),
                                                                         write_graph=False))
    start = time.perf_counter()
    with stop.installed():
        history = resume.fit(trainer, splits.train_from, restored.position, f.epochs, steps_per_epoch, callbacks,
                             verbose=1 if chief else 0)
    train_seconds = time.perf_counter() - start

    test_x, test_y = test_arrays(splits, f.eval_num_examples)
    best_epoch = (read_json(os.path.join(checkpoint_dir, "best.json"), {}) or {}).get("epoch")
    results = {}
    for name in ("best", "last"):
        path = os.path.join(checkpoint_dir, f"{name}.keras")
        if name == "last" and best_epoch == f.epochs and "best" in results:
            results["last"] = results["best"]  # the best epoch was the last: the same weights
        elif os.path.exists(path):
            results[name] = evaluation.pgd_report(evaluation.classifier_logits(models.load(path)), test_x, test_y,
                                                  eval_eps, f.eval_attack_step, f.eval_restarts, f.seed,
                                                  label=f"{name} checkpoint" if chief else None)
    primary = results.get("best") or results["last"]
    epoch_seconds = history.get("epoch_seconds", [])
    full = {**primary, "model": "best" if "best" in results else "last", "checkpoints": results,
            "best_epoch": best_epoch,
            "method": method.hparams(), "dataset": source.name, "architecture": f.model,
            "width_multiplier": f.width_multiplier, "epochs": f.epochs, "train_seconds": train_seconds,
            "seconds_per_epoch": float(np.median(epoch_seconds)) if epoch_seconds else None,
            "replicas": strategy.num_replicas_in_sync}
    if chief:
        write_json_atomic(full, os.path.join(workdir, "report.json"))
        table = report.markdown_table(results)
        with open(os.path.join(workdir, "report.md"), "w") as out:
            out.write(table + "\n")
        for kind, path in write_plots(workdir, log_path, results, best_epoch).items():
            print(f"wrote {path} ({kind})")
        print(f"\nResults on {len(test_x)} test examples of {source.name} (workdir {workdir}):\n{table}")
        print(report.reading_guide(source.name, splits.num_train, splits.num_held_out, len(test_x),
                                   source.num_classes, 0 if val_x is None else len(val_x)))
        if f.export_dir:
            from tf_fastbat.serving.publish import export_after_training

            exported = export_after_training(workdir, f.export_dir, f.export_model_name, examples=(test_x, test_y))
            print("\n".join(f"exported {kind}: {path}" for kind, path in exported.items()))
    return full


def write_plots(workdir: str, log_path: str, results: dict, best_epoch) -> dict:
    """The training curves (held-out RA per epoch, best epoch marked) and RA against eps of best and last."""
    from tf_fastbat import plots

    written = {}
    if os.path.isfile(log_path):
        written["training_curves"] = os.path.join(workdir, "training_curves.png")
        plots.training_curves(log_path, written["training_curves"], best_epoch)
    same = results.get("last") is results.get("best")  # the best epoch was the last: one curve
    models = {"best (= last)": results["best"]} if same and "best" in results else results
    if any(result["robust_accuracy"] for result in models.values()):
        written["ra_vs_eps"] = os.path.join(workdir, "ra_vs_eps.png")
        plots.robust_accuracy_vs_eps(models, written["ra_vs_eps"])
    return written


def validation_arrays(splits, limit: int):
    """The held-out examples early stopping attacks: in-memory arrays, or the first ES_STREAMED_EXAMPLES (at most
    `limit`) of a streamed or folder source's held-out stream; (None, None) without a held-out split."""
    from tf_fastbat.data.test_split import stream_arrays

    if splits.validation_arrays:
        return splits.validation_arrays
    if splits.validation is None:
        return None, None
    x, y = stream_arrays(splits.validation, min(limit, ES_STREAMED_EXAMPLES), splits.source.image_shape)
    return (x, y) if len(x) else (None, None)


def test_arrays(splits, limit: int):
    """The first `limit` (all if < 0) test examples the final report attacks."""
    from tf_fastbat.data.test_split import stream_arrays

    if splits.test_arrays:
        return tuple(a[:limit] for a in splits.test_arrays) if limit >= 0 else splits.test_arrays
    return stream_arrays(splits.test, sys.maxsize if limit < 0 else limit, splits.source.image_shape)


def main(argv) -> None:
    from tf_fastbat.backup import BackupError
    from tf_fastbat.callbacks import NonFiniteLossError
    from tf_fastbat.interrupt import exit_status
    from tf_fastbat.resume import TrainingInterrupted

    try:
        run(FLAGS)
    except TrainingInterrupted as interrupted:
        _note(str(interrupted))
        sys.exit(exit_status(interrupted.signum))
    except (NonFiniteLossError, BackupError) as error:
        cli.fail(TOOL, str(error))


def console_main() -> None:
    cli.run(TOOL, config.define_training_flags, main)


if __name__ == "__main__":
    console_main()
