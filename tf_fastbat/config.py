"""The training tool's flags, grouped, each with its check beside it; eps and step sizes are typed in 1/255 units
like the official code and read as fractions (tf_fastbat.flagtypes).

The method flags are made from the methods' dataclasses (tf_fastbat.method_flags); `method_hparams` reads the
chosen method's hyperparameters back from them, and config.json records them with the others.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags

from tf_fastbat import cli, flagtypes, method_flags, record
from tf_fastbat.cli import validator
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS
ConfigError = UsageError  # a flag value that cannot work; the message names the flag

# The flags that say how to build the architecture; they do not apply to a --model file.
ARCHITECTURE_FLAGS = ("architecture", "activation", "width_multiplier", "input_normalization")


def _at_least(flag: str, minimum, note: str = "") -> None:
    validator(flag, lambda v: v is None or v >= minimum, lambda v: f"--{flag}={v:g}: must be >= {minimum}{note}")


def _require(names: List[str], check, message: str) -> None:
    """A check across several flags, run when they are parsed."""
    def validate(values: Dict) -> bool:
        if not check(values):
            raise flags.ValidationError(message.format(**values))
        return True

    flags.register_multi_flags_validator(names, validate)


def define_experiment_flags() -> None:
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs, reports and plots go.")
    validator("workdir", bool, lambda _: "--workdir is required (checkpoints, logs and the report go there)")
    flags.DEFINE_integer("seed", 37, "Seed for initialization, data order, augmentation and attack noise.")
    flags.DEFINE_enum("deterministic", "auto", ["auto", "true", "false"],
                      "Deterministic TF ops (auto: on when no GPU is visible; exact repeatability on CPU).")


def define_data_flags() -> None:
    flags.DEFINE_string("dataset", "cifar10", "A tensorflow_datasets name (cifar10, cifar100, svhn_cropped, "
                        "imagenet2012), npz:PATH or folder:PATH (train/ and val/ class sub-folders).")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual-download directory (imagenet2012).")
    flags.DEFINE_integer("image_size", 224, "Training/eval image size for folder: and imagenet2012 data.")
    flags.DEFINE_float("val_ratio", 0.1, "Fraction of the training set held out for early stopping.")
    validator("val_ratio", lambda v: 0.0 <= v < 1.0, lambda v: f"--val_ratio={v}: must be in [0, 1)")


def define_model_flags() -> None:
    from tf_fastbat import artifacts, models  # here, not at import: evaluate/export parse eps without TensorFlow

    flags.DEFINE_enum("architecture", "preact_resnet18", list(models.NAMES), "Architecture from the zoo (ignored "
                      "with --model).")
    flags.DEFINE_flag(_ModelFlag(FLAGS["architecture"], models.NAMES))
    cli.note_renamed("--model=<architecture name>", "--architecture=<architecture name>")
    validator("model", lambda path: path is None or artifacts.resolve(path, "model", saved_models=False))
    flags.DEFINE_enum("activation", "relu", ["relu", "softplus", "swish"], "Activation (Table A5).")
    flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier (0.25 gives a width-16 PreActResNet-18).")
    validator("width_multiplier", lambda v: v > 0, lambda v: f"--width_multiplier={v}: must be positive")
    flags.DEFINE_boolean("input_normalization", True, "Normalize inputs by the dataset's mean and std inside the "
                         "model (false: raw [0, 1] pixels, as FastAT_Benchmark's and LIET's models see them).")


class _ModelFlag(flags.Flag):
    """--model: a classifier to start training from (a .keras file mapping [0, 1] NHWC images to logits, a training
    workdir's best model, or pretrained:NAME). A zoo name, the flag's old meaning, still sets --architecture for a
    release, with a deprecation line."""

    def __init__(self, architecture: flags.Flag, names: Sequence[str]):
        self._architecture, self._names, self._old_use = architecture, tuple(names), None
        super().__init__(flags.ArgumentParser(), flags.ArgumentSerializer(), "model", None,
                         "A classifier to train instead of --architecture: a .keras file mapping [0, 1] NHWC images "
                         "to logits (its weights are the start), a training workdir (its best model) or "
                         "pretrained:NAME. The whole recipe applies: early stopping, resume, reports, export.")

    def parse(self, argument) -> None:
        if argument in self._names and not os.path.exists(argument):
            self._architecture.parse(argument)
            self._old_use = argument
            self.value = None
            self.present += 1
            return
        super().parse(argument)

    def unparse(self) -> None:
        super().unparse()
        self._old_use = None

    def deprecation(self) -> Optional[str]:
        if self._old_use is None:
            return None
        return (f"--model={self._old_use} is deprecated and goes in the next release; use "
                f"--architecture={self._old_use} (--model now names a model file to train)")


def define_optimization_flags() -> None:
    flags.DEFINE_integer("epochs", 20, "Training epochs.")
    _at_least("epochs", 1)
    flags.DEFINE_integer("batch_size", 128, "Global batch size (split over replicas).")
    _at_least("batch_size", 1)
    flags.DEFINE_enum("lr_schedule", "cyclic", ["cyclic", "multistep", "one_cycle"], "Learning-rate schedule; "
                      "one_cycle is torch's OneCycleLR (cosine, 30% rising from lr_max/25, down to lr_max/25e4) "
                      "stepped once per epoch, as FastAT_Benchmark runs it; it cycles the momentum like cyclic.")
    flags.DEFINE_float("lr_max", 0.2, "Peak (cyclic, one_cycle) or initial (multistep) learning rate.")
    validator("lr_max", lambda v: v > 0, lambda v: f"--lr_max={v}: must be positive")
    flags.DEFINE_float("lr_min", 0.0, "Cyclic schedule's floor.")
    _require(["lr_min", "lr_max"], lambda v: 0 <= v["lr_min"] <= v["lr_max"],
             "--lr_min={lr_min}: must be in [0, --lr_max]")
    flags.DEFINE_float("cyclic_milestone", None, "Epoch of the cyclic peak (default: mid-run).")
    _require(["cyclic_milestone", "epochs"],
             lambda v: v["cyclic_milestone"] is None or 0 < v["cyclic_milestone"] <= v["epochs"],
             "--cyclic_milestone={cyclic_milestone}: must be in (0, --epochs]")
    flags.DEFINE_list("key_epochs", ["100", "150"], "Multistep decay epochs.")
    validator("key_epochs", lambda v: all(e.strip().lstrip("-").isdigit() for e in v),
              lambda v: f"--key_epochs={','.join(v)}: not a list of integers")
    flags.DEFINE_float("lr_decay_rate", 0.1, "Multistep decay factor.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum (with --cycle_momentum: its peak, torch's max_momentum).")
    validator("momentum", lambda v: 0.0 <= v < 1.0, lambda v: f"--momentum={v}: must be in [0, 1)")
    flags.DEFINE_boolean("cycle_momentum", True, "Under --lr_schedule=cyclic, cycle the momentum inversely to the "
                         "learning rate between --base_momentum and --momentum, as torch's CyclicLR does by default "
                         "in the official trainer; false holds it at --momentum.")
    flags.DEFINE_float("base_momentum", 0.8, "The cyclic momentum's floor, reached at the learning-rate peak.")
    _require(["base_momentum", "momentum"], lambda v: 0.0 <= v["base_momentum"] <= v["momentum"],
             "--base_momentum={base_momentum}: must be in [0, --momentum]")
    flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 weight decay (like torch.optim.SGD).")
    validator("weight_decay", lambda v: v >= 0, lambda v: f"--weight_decay={v}: must be >= 0")
    flags.DEFINE_float("weight_averaging", 0.0, "Decay tau of an exponential moving average of all the classifier's "
                       "variables (BatchNorm statistics included) after every step, FastAT_Benchmark's weight "
                       "averaging (0.9995); the average is validated, checkpointed, reported and exported. 0: off.")
    validator("weight_averaging", lambda v: 0.0 <= v < 1.0, lambda v: f"--weight_averaging={v}: must be in [0, 1)")
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (quick experiments).")
    _at_least("steps_per_epoch", 1)


def define_validation_flags() -> None:
    flags.DEFINE_integer("es_pgd_steps", 50, "PGD steps of the early-stopping check on the held-out split.")
    flags.DEFINE_integer("es_pgd_restarts", 10, "PGD restarts of the early-stopping check.")
    _require(["es_pgd_steps", "es_pgd_restarts"], lambda v: v["es_pgd_steps"] >= 0 and v["es_pgd_restarts"] >= 1,
             "--es_pgd_steps must be >= 0 and --es_pgd_restarts >= 1")
    flags.DEFINE_integer("es_num_examples", -1, "Held-out examples the check uses (-1: all).")
    flags.DEFINE_integer("eval_pgd_steps", 50, "PGD steps of the final test evaluation.")
    flags.DEFINE_integer("eval_pgd_restarts", 10, "PGD restarts of the final test evaluation.")
    _require(["eval_pgd_steps", "eval_pgd_restarts"],
             lambda v: v["eval_pgd_steps"] >= 0 and v["eval_pgd_restarts"] >= 1,
             "--eval_pgd_steps must be >= 0 and --eval_pgd_restarts >= 1")
    flags.DEFINE_integer("eval_num_examples", -1, "Test examples evaluated at the end (-1: all).")
    flagtypes.DEFINE_eps_list("eval_eps", [], "Test eps list in 1/255 units (default: the training eps).")


def define_compute_flags() -> None:
    flags.DEFINE_enum("distribution", "auto", ["auto", "none", "mirrored", "multi_worker"],
                      "auto: MirroredStrategy over all local GPUs when there are several, else one device; "
                      "multi_worker reads TF_CONFIG.")
    flags.DEFINE_enum("sync_batch_norm", "auto", ["auto", "true", "false"],
                      "BatchNorm statistics over the global batch across replicas (auto: on with several replicas), "
                      "so that N devices compute what one device computes on the global batch.")
    flags.DEFINE_boolean("jit_compile", False, "XLA for the train step (measured slower on CPU; off by default).")
    _require(["jit_compile", "deterministic"], lambda v: not (v["jit_compile"] and v["deterministic"] == "true"),
             "--jit_compile cannot be combined with --deterministic=true: Keras turns XLA off under op determinism")
    flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Keras dtype policy; float16 adds loss scaling.")
    flags.DEFINE_boolean("tensorboard", True, f"Write TensorBoard logs under workdir/{record.TENSORBOARD_FOLDER}.")


def define_export_flags() -> None:
    from tf_fastbat.serving.protocol import DEFAULT_MODEL_NAME, validate_model_name

    flags.DEFINE_string("export_dir", None, "If set: at the end, export last then best as TF Serving SavedModels "
                        "to export_dir/model_name/<version> (the newest, best, is the one served).")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "TF Serving model name (a sub-directory of --export_dir).")
    validator("model_name", lambda name: validate_model_name(name) is None)


def define_backup_flags() -> None:
    flags.DEFINE_integer("backup_every_steps", 0, "Also write a backup (workdir/backup) every N training steps; "
                         "0: only at epoch ends and on --backup_every_seconds. A rerun of the same command resumes "
                         "from the newest backup.")
    _at_least("backup_every_steps", 0, " (0: off)")
    flags.DEFINE_float("backup_every_seconds", 600.0, "Also write a backup when this many seconds have passed since "
                       "the last one (checked at step ends); 0: off.")
    _at_least("backup_every_seconds", 0, " (0: off)")


def training_groups() -> List[cli.Group]:
    """The training tool's flag groups, in --help order (the method flags last: they are made from the registered
    methods, after the flags they may take values from)."""
    return [("Experiment", define_experiment_flags), ("Data", define_data_flags), ("Model", define_model_flags),
            ("Optimization", define_optimization_flags),
            ("Early stopping (held-out split) and test evaluation", define_validation_flags),
            ("Compute", define_compute_flags), ("Export", define_export_flags), ("Backups", define_backup_flags),
            *method_flags.groups(), ("", define_renamed_flags)]


def define_renamed_flags() -> None:
    """The old names of renamed flags (record.RENAMED_TRAINING_FLAGS), still accepted for a release."""
    for old, new in record.RENAMED_TRAINING_FLAGS:
        cli.renamed(old, new)


def define_training_flags() -> None:
    cli.define_groups(training_groups())


def eval_eps_list(f=FLAGS) -> List[float]:
    """--eval_eps as fractions (default: the training eps)."""
    return list(f.eval_eps) or [f.eps]


def input_statistics(mean: Sequence[float], std: Sequence[float], f=FLAGS) -> Tuple[Tuple[float, ...], ...]:
    """(mean, std) of the model's input normalization: the dataset's, or the identity (0, 1) without it."""
    if f.input_normalization:
        return tuple(mean), tuple(std)
    return (0.0,) * len(mean), (1.0,) * len(std)


def method_hparams(f=FLAGS) -> Dict:
    """The chosen method's hyperparameters from the flags (fractions of 1 inside the library)."""
    return method_flags.hparams_from({name: f[name].value for name in method_flags.names()}, f.method)


def validate_training(f=FLAGS) -> None:
    """The checks beside the flags run when they are parsed; this re-runs them, for flags set in code."""
    f.validate_all_flags()


def as_dict(f=FLAGS) -> Dict:
    """The values of the training flags for workdir/config.json (every flag of the tool, deprecated names left
    out); eps and step sizes in 1/255 units, as typed. With --model, the architecture flags did not apply: None."""
    recorded = {name: flagtypes.as_typed(f[name]) for name in cli.tool_flags() if name in f}
    if recorded.get("model"):
        recorded.update({name: None for name in ARCHITECTURE_FLAGS})
    return recorded
