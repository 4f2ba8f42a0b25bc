"""Every command-line flag of tf_fastbat, grouped; eps and step sizes are in 1/255 units like the official code."""

from __future__ import annotations

from typing import Dict, List, Optional

from absl import flags

FLAGS = flags.FLAGS


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag."""


def define_experiment_flags() -> None:
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs, reports and plots go.")
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


def define_model_flags() -> None:
    from tf_fastbat import models  # here, not at import: evaluate/export parse eps without loading TensorFlow

    flags.DEFINE_enum("model", "preact_resnet18", list(models.NAMES), "Architecture.")
    flags.DEFINE_enum("activation", "relu", ["relu", "softplus", "swish"], "Activation (Table A5).")
    flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier (0.25 gives a width-16 PreActResNet-18).")


def define_method_flags() -> None:
    from tf_fastbat import methods

    flags.DEFINE_enum("method", "fast_bat", list(methods.NAMES), "Training method.")
    flags.DEFINE_float("eps", 8.0, "Training eps, in 1/255 units (8 means 8/255).")
    flags.DEFINE_float("attack_lr", None, "Attack step in 1/255 units; default: the official rule per method "
                       "(fast_bat 5000 for eps <= 8 else 2000; fast_at 1.25 eps; pgd 0.5 eps for 2 steps).")
    flags.DEFINE_float("lmbda", 10.0, "Fast-BAT lambda of the implicit gradient (eq. 11); 0 means 1/attack_lr, "
                       "as in the official trainer.")
    flags.DEFINE_enum("linearization", "pgd_nosign", ["pgd_nosign", "pgd_sign", "uniform", "corner"],
                      "Fast-BAT linearization point (Remark 2, Table A3).")
    flags.DEFINE_enum("implicit_gradient", "hessian_free", ["hessian_free", "hessian_aware"],
                      "Fast-BAT implicit gradient (Table A4): eq. 11, or with (lambda I - Hessian)^-1 by CG.")
    flags.DEFINE_integer("cg_steps", 5, "Conjugate-gradient iterations of --implicit_gradient=hessian_aware.")
    flags.DEFINE_float("ga_coef", None, "GradAlign coefficient; default: the official table for --eps.")
    flags.DEFINE_integer("attack_step", 2, "PGD-K-AT steps K.")


def define_optimization_flags() -> None:
    flags.DEFINE_integer("epochs", 20, "Training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size (split over replicas).")
    flags.DEFINE_enum("lr_schedule", "cyclic", ["cyclic", "multistep"], "Learning-rate schedule.")
    flags.DEFINE_float("lr_max", 0.2, "Peak (cyclic) or initial (multistep) learning rate.")
    flags.DEFINE_float("lr_min", 0.0, "Cyclic schedule's floor.")
    flags.DEFINE_float("cyclic_milestone", None, "Epoch of the cyclic peak (default: mid-run).")
    flags.DEFINE_list("key_epochs", ["100", "150"], "Multistep decay epochs.")
    flags.DEFINE_float("lr_decay_rate", 0.1, "Multistep decay factor.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum (with --cycle_momentum: its peak, torch's max_momentum).")
    flags.DEFINE_boolean("cycle_momentum", True, "Under --lr_schedule=cyclic, cycle the momentum inversely to the "
                         "learning rate between --base_momentum and --momentum, as torch's CyclicLR does by default "
                         "in the official trainer; false holds it at --momentum.")
    flags.DEFINE_float("base_momentum", 0.8, "The cyclic momentum's floor, reached at the learning-rate peak.")
    flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 weight decay (like torch.optim.SGD).")
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (quick experiments).")


def define_validation_flags() -> None:
    flags.DEFINE_integer("es_attack_step", 50, "PGD steps of the early-stopping check on the held-out split.")
    flags.DEFINE_integer("es_restarts", 10, "PGD restarts of the early-stopping check.")
    flags.DEFINE_integer("es_num_examples", -1, "Held-out examples the check uses (-1: all).")
    flags.DEFINE_integer("eval_attack_step", 50, "PGD steps of the final test evaluation.")
    flags.DEFINE_integer("eval_restarts", 10, "PGD restarts of the final test evaluation.")
    flags.DEFINE_integer("eval_num_examples", -1, "Test examples evaluated at the end (-1: all).")
    flags.DEFINE_list("eval_eps", [], "Test eps list in 1/255 units (default: the training eps).")


def define_compute_flags() -> None:
    flags.DEFINE_enum("distribution", "auto", ["auto", "none", "mirrored", "multi_worker"],
                      "auto: MirroredStrategy over all local GPUs when there are several, else one device; "
                      "multi_worker reads TF_CONFIG.")
    flags.DEFINE_enum("sync_batch_norm", "auto", ["auto", "true", "false"],
                      "BatchNorm statistics over the global batch across replicas (auto: on with several replicas), "
                      "so that N devices compute what one device computes on the global batch.")
    flags.DEFINE_boolean("jit_compile", False, "XLA for the train step (measured slower on CPU; off by default).")
    flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Keras dtype policy; float16 adds loss scaling.")
    flags.DEFINE_boolean("tensorboard", True, "Write TensorBoard logs under workdir/tensorboard.")
    flags.DEFINE_string("export_dir", None, "If set: at the end, export last then best as TF Serving SavedModels "
                        "to export_dir/export_model_name/<version> (the newest, best, is the one served).")
    flags.DEFINE_string("export_model_name", "tf_fastbat", "TF Serving model name under --export_dir.")


def define_training_flags() -> None:
    for define in (define_experiment_flags, define_data_flags, define_model_flags, define_method_flags,
                   define_optimization_flags, define_validation_flags, define_compute_flags):
        define()


def fraction(flag: str, value: Optional[float], *, maximum: Optional[float] = None,
             noun: str = "eps and step sizes are") -> Optional[float]:
    """A 1/255-unit flag value as a fraction of 1; negative, above `maximum`, or in (0, 1) (almost surely already a
    fraction): refused with a message naming the flag."""
    if value is None:
        return None
    if value < 0 or (maximum is not None and value > maximum):
        limits = ">= 0" if maximum is None else f"in [0, {maximum:g}]"
        raise ConfigError(f"--{flag}={value:g}: must be {limits} (1/255 units)")
    if 0 < value < 1:
        raise ConfigError(f"--{flag}={value:g}: {noun} in 1/255 units (--{flag}=8 means 8/255); "
                          f"{value:g} looks like a fraction, did you mean --{flag}={value * 255:g}?")
    return value / 255.0


def eps_list(flag: str, values: List[str], noun: str = "eps and step sizes are") -> List[float]:
    """A comma-list flag of eps values in 1/255 units, each checked by `fraction`, returned in 1/255 units."""
    try:
        parsed = [float(v) for v in values]
    except ValueError as error:
        raise ConfigError(f"--{flag}={','.join(values)}: not a list of numbers (1/255 units, e.g. --{flag}=4,8)") \
            from error
    for value in parsed:
        fraction(flag, value, maximum=255, noun=noun)
    return parsed


def eval_eps_list(values: List[str], default: float) -> List[float]:
    """--eval_eps in 1/255 units (default: the training eps), still in 1/255 units."""
    return eps_list("eval_eps", list(values) or [str(default)])


def method_hparams(f=FLAGS) -> Dict:
    """The chosen method's hyperparameters from the flags (fractions of 1 inside the library)."""
    eps = fraction("eps", f.eps, maximum=255)
    if f.method != "standard" and eps == 0:
        raise ConfigError(f"--eps=0 leaves --method={f.method} nothing to attack; use --method=standard")
    attack_lr = fraction("attack_lr", f.attack_lr)
    hparams = {"eps": eps}
    if f.method in ("fast_bat", "fast_at", "fast_at_ga", "pgd", "n_fgsm"):
        hparams["attack_lr"] = attack_lr
    if f.method == "fast_bat":
        if f.lmbda < 0:
            raise ConfigError(f"--lmbda={f.lmbda}: must be >= 0 (0 means 1/attack_lr)")
        if f.cg_steps < 1:
            raise ConfigError(f"--cg_steps={f.cg_steps}: must be at least 1")
        hparams.update(lmbda=f.lmbda, linearization=f.linearization, implicit_gradient=f.implicit_gradient,
                       cg_steps=f.cg_steps)
    if f.method == "fast_at_ga":
        if f.ga_coef is not None and f.ga_coef < 0:
            raise ConfigError(f"--ga_coef={f.ga_coef}: must be >= 0")
        hparams["ga_coef"] = f.ga_coef
    if f.method == "pgd":
        if f.attack_step < 1:
            raise ConfigError(f"--attack_step={f.attack_step}: PGD needs at least one step")
        hparams["steps"] = f.attack_step
    return hparams


def validate_training(f=FLAGS) -> None:
    """Checks that need no data: every bad value is reported before any work starts."""
    if not f.workdir:
        raise ConfigError("--workdir is required (checkpoints, logs and the report go there)")
    if f.jit_compile and f.deterministic == "true":
        raise ConfigError("--jit_compile cannot be combined with --deterministic=true: Keras turns XLA off under "
                          "op determinism")
    checks = [
        (f.epochs >= 1, f"--epochs={f.epochs}: must be >= 1"),
        (f.batch_size >= 1, f"--batch_size={f.batch_size}: must be >= 1"),
        (0.0 <= f.val_ratio < 1.0, f"--val_ratio={f.val_ratio}: must be in [0, 1)"),
        (f.lr_max > 0, f"--lr_max={f.lr_max}: must be positive"),
        (0 <= f.lr_min <= f.lr_max, f"--lr_min={f.lr_min}: must be in [0, --lr_max]"),
        (0.0 <= f.momentum < 1.0, f"--momentum={f.momentum}: must be in [0, 1)"),
        (0.0 <= f.base_momentum <= f.momentum, f"--base_momentum={f.base_momentum}: must be in [0, --momentum]"),
        (f.weight_decay >= 0, f"--weight_decay={f.weight_decay}: must be >= 0"),
        (f.width_multiplier > 0, f"--width_multiplier={f.width_multiplier}: must be positive"),
        (f.steps_per_epoch is None or f.steps_per_epoch >= 1, f"--steps_per_epoch={f.steps_per_epoch}: must be >= 1"),
        (f.es_attack_step >= 0 and f.es_restarts >= 1, "--es_attack_step must be >= 0 and --es_restarts >= 1"),
        (f.eval_attack_step >= 0 and f.eval_restarts >= 1, "--eval_attack_step must be >= 0 and --eval_restarts >= 1"),
        (f.cyclic_milestone is None or 0 < f.cyclic_milestone <= f.epochs,
         f"--cyclic_milestone={f.cyclic_milestone}: must be in (0, --epochs]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        [int(e) for e in f.key_epochs]
    except ValueError as error:
        raise ConfigError(f"--key_epochs={','.join(f.key_epochs)}: not a list of integers") from error
    method_hparams(f)
    eval_eps_list(f.eval_eps, f.eps)
    if f.export_dir:
        from tf_fastbat.export import ExportError, validate_model_name

        try:
            validate_model_name(f.export_model_name)
        except ExportError as error:
            raise ConfigError(str(error).replace("--model_name", "--export_model_name")) from error


def as_dict(f=FLAGS) -> Dict:
    """The values of this module's flags, for workdir/config.json."""
    return {name: f[name].value for name in _OWN_FLAGS if name in f}


_OWN_FLAGS = (
    "workdir seed deterministic dataset data_dir manual_dir image_size val_ratio model activation width_multiplier "
    "method eps attack_lr lmbda linearization implicit_gradient cg_steps ga_coef attack_step epochs batch_size "
    "lr_schedule lr_max lr_min "
    "cyclic_milestone key_epochs lr_decay_rate momentum cycle_momentum base_momentum weight_decay steps_per_epoch es_attack_step es_restarts "
    "es_num_examples eval_attack_step eval_restarts eval_num_examples eval_eps distribution jit_compile "
    "mixed_precision tensorboard export_dir export_model_name sync_batch_norm").split()
