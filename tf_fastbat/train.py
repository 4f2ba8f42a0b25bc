"""python -m tf_fastbat.train --flagfile=flags/<experiment>.cfg: adversarial training with Keras `fit`."""

from __future__ import annotations

import os
import sys
import time

from absl import flags

from tf_fastbat import cli, config
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS
TOOL = "tf_fastbat.train"


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
    """Train, keep best and last checkpoints, evaluate both on the test split, write report.json.

    Downward, one step per helper: settings -> data -> model and trainer -> record -> resume -> callbacks -> fit ->
    test evaluation -> report (and export).
    """
    from tf_fastbat import data, distribution, interrupt, methods, resume

    strategy = distribution.strategy_for(f.distribution)  # before any other TF op (multi-worker needs it)
    _configure_runtime(f)
    method = methods.build(f.method, **config.method_hparams(f))
    source = data.load(f.dataset, f.data_dir, f.manual_dir, f.image_size)
    es_examples = sys.maxsize if f.es_num_examples < 0 else f.es_num_examples
    splits = data.splits(source, f.batch_size, f.val_ratio, f.seed, es_examples, f.data_dir,
                         drop_remainder=strategy.num_replicas_in_sync > 1, with_index=method.needs_index)
    steps_per_epoch = splits.steps_per_epoch(f.batch_size, strategy.num_replicas_in_sync, f.steps_per_epoch)
    chief = distribution.is_chief()
    classifier, trainer = _build(f, method, source, splits, steps_per_epoch, strategy)  # a bad --model: nothing written
    run_record = _start_record(f, method, source, strategy, chief)
    state, restored = _restore(f, trainer, strategy, run_record, steps_per_epoch)
    val_x, val_y = splits.validation_examples(es_examples)
    stop = interrupt.StopRequest()
    callbacks, timer = _callbacks(f, method, classifier, trainer, state, restored, run_record, val_x, val_y, stop,
                                  strategy, chief)
    start = time.perf_counter()
    with stop.installed():
        history = resume.fit(trainer, splits.train_from, restored.position, f.epochs, steps_per_epoch, callbacks,
                             verbose=1 if chief else 0)
    train_seconds = time.perf_counter() - start
    test_x, test_y = splits.test_examples(f.eval_num_examples)
    results = _evaluate(f, run_record, test_x, test_y, chief)
    full = _report(f, method, source, strategy, run_record, results, history, train_seconds)
    if chief:
        _publish(f, run_record, full, results, source, splits, val_x, test_x, test_y)
    return full


def _start_record(f, method, source, strategy, chief: bool):
    """The run's workdir (a worker's own below the chief's) with its settings written to config.json."""
    from tf_fastbat import distribution, record
    from tf_fastbat.checkpoints import write_json_atomic

    workdir = f.workdir if chief else os.path.join(f.workdir, f".worker-{distribution.worker_index()}")
    run_record = record.Workdir(workdir)
    os.makedirs(run_record.checkpoints, exist_ok=True)
    write_json_atomic({**config.as_dict(f), "method_hparams": method.hparams(), "num_classes": source.num_classes,
                       "class_names": list(source.class_names), "image_shape": list(source.image_shape),
                       "replicas": strategy.num_replicas_in_sync}, run_record.config)
    return run_record


def _build(f, method, source, splits, steps_per_epoch: int, strategy):
    """(classifier, trainer): the architecture, the optimizer with its schedules, the method's train step."""
    from tf_fastbat import distribution, models, optim, runtime, weight_averaging
    from tf_fastbat.trainer import assemble, sgd

    with strategy.scope():
        classifier = _classifier(f, source)
        warning = runtime.onednn_warning(classifier)
        if warning:
            _note(warning)
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
    return classifier, trainer


def _classifier(f, source):
    """The classifier to train: the --model file (a user's own architecture and starting weights), else the zoo's
    --architecture. A model that cannot take the dataset's images or give its classes is refused naming --model."""
    from tf_fastbat import artifacts, models, units

    if not f.model:
        return models.build(f.architecture, source.num_classes, f.activation, f.width_multiplier,
                            source.image_shape, *config.input_statistics(source.mean, source.std, f))
    path = artifacts.resolve(f.model, "model", saved_models=False).file
    try:
        classifier = models.load(path)
    except ValueError as error:
        raise UsageError(f"--model={f.model}: {error}") from error
    check_trainable(classifier, f.model, tuple(source.image_shape), source.num_classes, units.rescaling_layer)
    given = [name for name in config.ARCHITECTURE_FLAGS if f[name].present]
    if given:
        _note(f"--model={f.model}: training that model; {', '.join('--' + n for n in given)} do not apply")
    return classifier


def check_trainable(classifier, flag_value: str, image_shape, num_classes: int, rescaling_layer) -> None:
    """A one-line UsageError naming --model when the classifier cannot train on these images and classes."""
    inputs = getattr(classifier, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise UsageError(f"--model={flag_value}: the model must take one input, a batch of NHWC images")
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != len(image_shape) or any(a is not None and a != b for a, b in zip(shape, image_shape)):
        raise UsageError(f"--model={flag_value}: its input shape {shape} does not take the dataset's images "
                         f"{tuple(image_shape)}")
    classes = classifier.outputs[0].shape[-1] if getattr(classifier, "outputs", None) else None
    if classes != num_classes:
        raise UsageError(f"--model={flag_value}: it gives {classes} logits per image; the dataset has {num_classes} "
                         "classes")
    if not classifier.trainable_variables:
        raise UsageError(f"--model={flag_value}: it has no trainable variables")
    layer = rescaling_layer(classifier)
    if layer:
        raise UsageError(f"--model={flag_value}: its layer {layer!r} divides by 255, but the tools give [0, 1] "
                         "images; remove that layer")


def _restore(f, trainer, strategy, run_record, steps_per_epoch: int):
    """(state, restored): the newest backup of the chief's workdir, which every worker restores from, or a start."""
    from tf_fastbat import backup, record, resume

    state = resume.RunState(trainer, strategy, run_record.checkpoints, run_record.training_log, f.batch_size,
                            steps_per_epoch)
    backup_dir = record.Workdir(f.workdir).backups
    found = backup.newest(backup_dir, _warn)
    if found is not None:
        restored = state.restore(found)
        _note(f"resuming from {found.path} (epoch {restored.position.epoch + 1}, step {restored.position.step})")
    else:
        restored = resume.Restored()
        if state.start_over():
            _warn(f"no backup in {backup_dir}: starting over (the workdir's old log rows and best model are dropped)")
    return state, restored


def _callbacks(f, method, classifier, trainer, state, restored, run_record, val_x, val_y, stop, strategy,
               chief: bool):
    """(callbacks in callbacks.training_callbacks' order, the epoch timer)."""
    from tf_fastbat import callbacks as cb, record, resume
    from tf_fastbat.metrics import GradientAlignmentLogger

    eps = method.eps or config.eval_eps_list(f)[0]
    validated = classifier if trainer.average is None else trainer.average.model  # checkpointed, reported, exported
    timer = cb.EpochTimer({restored.position.epoch: restored.epoch_seconds})
    backup = resume.StepBackup(state, record.Workdir(f.workdir).backups, epochs=f.epochs, chief=chief,
                               every_steps=f.backup_every_steps, every_seconds=f.backup_every_seconds,
                               restored=restored, timer=timer, stop=stop,
                               agree=resume.Agreement(strategy) if resume.several_workers(strategy) else None)
    validation = cb.RobustValidation(validated, run_record.checkpoints, val_x, val_y, eps, f.es_pgd_steps,
                                     f.es_pgd_restarts, f.seed, verbose=chief)
    alignment = None if val_x is None else GradientAlignmentLogger(classifier, val_x[:512], val_y[:512], eps,
                                                                   seed=f.seed)
    return cb.training_callbacks(timer, validation, run_record.training_log, backup, alignment,
                                 run_record.tensorboard if f.tensorboard else None), timer


def _evaluate(f, run_record, test_x, test_y, chief: bool) -> dict:
    """PGD test report of the best and last checkpoints (one measurement when the best epoch was the last)."""
    from tf_fastbat import evaluation, models, record

    best_epoch, results = run_record.best_epoch(), {}
    for name in record.CHECKPOINTS:
        path = run_record.checkpoint(name)
        if name == "last" and best_epoch == f.epochs and "best" in results:
            results["last"] = results["best"]  # the best epoch was the last: the same weights
        elif os.path.exists(path):
            results[name] = evaluation.pgd_report(evaluation.classifier_logits(models.load(path)), test_x, test_y,
                                                  config.eval_eps_list(f), f.eval_pgd_steps, f.eval_pgd_restarts,
                                                  f.seed, label=f"{name} checkpoint" if chief else None)
    return results


def _report(f, method, source, strategy, run_record, results: dict, history: dict, train_seconds: float) -> dict:
    """report.json's content: the primary (best, else last) checkpoint's figures and the run's facts."""
    import numpy as np

    primary = results.get("best") or results["last"]
    epoch_seconds = history.get("epoch_seconds", [])
    return {**primary, "model": "best" if "best" in results else "last", "checkpoints": results,
            "best_epoch": run_record.best_epoch(),
            "method": method.hparams(), "dataset": source.name,
            "architecture": None if f.model else f.architecture, "model": f.model or None,
            "width_multiplier": f.width_multiplier, "epochs": f.epochs, "train_seconds": train_seconds,
            "seconds_per_epoch": float(np.median(epoch_seconds)) if epoch_seconds else None,
            "replicas": strategy.num_replicas_in_sync}


def _publish(f, run_record, full: dict, results: dict, source, splits, val_x, test_x, test_y) -> None:
    """The chief's outputs: report.json and .md, the figures, the printed table and guide, the export."""
    from tf_fastbat import report
    from tf_fastbat.checkpoints import write_json_atomic

    write_json_atomic(full, run_record.report)
    table = report.markdown_table(results)
    with open(run_record.report_table, "w") as out:
        out.write(table + "\n")
    for kind, path in write_plots(run_record, results, full["best_epoch"]).items():
        print(f"wrote {path} ({kind})")
    print(f"\nResults on {len(test_x)} test examples of {source.name} (workdir {run_record.root}):\n{table}")
    print(report.reading_guide(source.name, splits.num_train, splits.num_held_out, len(test_x),
                               source.num_classes, 0 if val_x is None else len(val_x)))
    if f.export_dir:
        from tf_fastbat.publish import export_after_training

        exported = export_after_training(run_record.root, f.export_dir, f.model_name,
                                         examples=(test_x, test_y))
        print("\n".join(f"exported {kind}: {path}" for kind, path in exported.items()))


def write_plots(run_record, results: dict, best_epoch) -> dict:
    """The training curves (held-out RA per epoch, best epoch marked) and RA against eps of best and last, in the
    run's workdir (a record.Workdir)."""
    from tf_fastbat import plots

    written = {}
    if os.path.isfile(run_record.training_log):
        written["training_curves"] = run_record.figure("training_curves")
        plots.training_curves(run_record.training_log, written["training_curves"], best_epoch)
    same = results.get("last") is results.get("best")  # the best epoch was the last: one curve
    models = {"best (= last)": results["best"]} if same and "best" in results else results
    if any(result["robust_accuracy"] for result in models.values()):
        written["ra_vs_eps"] = run_record.figure("ra_vs_eps")
        plots.robust_accuracy_vs_eps(models, written["ra_vs_eps"])
    return written


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
    except NonFiniteLossError as error:
        cli.fail(TOOL, error.advice("--lr_max"))
    except BackupError as error:
        cli.fail(TOOL, str(error))


def console_main() -> None:
    cli.run(TOOL, config.define_training_flags, main)


if __name__ == "__main__":
    console_main()
