"""The training tool's flags, grouped, each with its check beside it; eps and step sizes are typed in 1/255 units
like the official code and read as fractions (tf_fastbat.flagtypes)."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from absl import flags

from tf_fastbat import flagtypes, record
from tf_fastbat.cli import validator
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS
ConfigError = UsageError  # a flag value that cannot work; the message names the flag


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
    from tf_fastbat import models  # here, not at import: evaluate/export parse eps without loading TensorFlow

    flags.DEFINE_enum("model", "preact_resnet18", list(models.NAMES), "Architecture.")
    flags.DEFINE_enum("activation", "relu", ["relu", "softplus", "swish"], "Activation (Table A5).")
    flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier (0.25 gives a width-16 PreActResNet-18).")
    validator("width_multiplier", lambda v: v > 0, lambda v: f"--width_multiplier={v}: must be positive")
    flags.DEFINE_boolean("input_normalization", True, "Normalize inputs by the dataset's mean and std inside the "
                         "model (false: raw [0, 1] pixels, as FastAT_Benchmark's and LIET's models see them).")


def define_method_flags() -> None:
    from tf_fastbat import methods

    flags.DEFINE_enum("method", "fast_bat", list(methods.NAMES), "Training method.")
    flagtypes.DEFINE_eps("eps", 8, "Training eps, in 1/255 units (8 means 8/255).")
    flagtypes.DEFINE_eps("attack_lr", None, "Attack step in 1/255 units; default: the official rule per method "
                         "(fast_bat 5000 for eps <= 8 else 2000; fast_at 1.25 eps; pgd 0.5 eps for 2 steps, "
                         "otherwise 2; nu_at and elle_a eps; fgsm_pgi 8 at every eps, FGSM_MEP.py's --alpha, which "
                         "also sets its reset corners; FastAT_Benchmark's fgsm_pgi.py steps by eps).", maximum=None)
    _require(["method", "eps"], lambda v: v["method"] == "standard" or v["eps"] > 0,
             "--eps=0 leaves --method={method} nothing to attack; use --method=standard")
    _require(["method", "attack_lr"], lambda v: v["attack_lr"] is None or v["method"] not in ("standard", "liet"),
             "--attack_lr: --method={method} has no attack step to set (liet steps by eps, as officially)")
    flags.DEFINE_float("lmbda", 10.0, "Fast-BAT lambda of the implicit gradient (eq. 11); 0 means 1/attack_lr, "
                       "as in the official trainer.")
    validator("lmbda", lambda v: v >= 0, lambda v: f"--lmbda={v}: must be >= 0 (0 means 1/attack_lr)")
    flags.DEFINE_enum("linearization", "pgd_nosign", ["pgd_nosign", "pgd_sign", "uniform", "corner"],
                      "Fast-BAT linearization point (Remark 2, Table A3).")
    flags.DEFINE_enum("implicit_gradient", "hessian_free", ["hessian_free", "hessian_aware"],
                      "Fast-BAT implicit gradient (Table A4): eq. 11, or with (lambda I - Hessian)^-1 by CG.")
    flags.DEFINE_integer("cg_steps", 5, "Conjugate-gradient iterations of --implicit_gradient=hessian_aware.")
    validator("cg_steps", lambda v: v >= 1, lambda v: f"--cg_steps={v}: must be at least 1")
    flags.DEFINE_float("ga_coef", None, "GradAlign coefficient; default: GradAlign's table for --eps.")
    validator("ga_coef", lambda v: v is None or v >= 0, lambda v: f"--ga_coef={v}: must be >= 0")
    flags.DEFINE_integer("attack_step", 2, "PGD-K-AT steps K.")
    validator("attack_step", lambda v: v >= 1, lambda v: f"--attack_step={v}: PGD needs at least one step")
    define_nu_at_elle_flags()
    define_fgsm_pgi_flags()
    define_liet_flags()


def define_fgsm_pgi_flags() -> None:
    """FGSM-PGI's hyperparameters (official FGSM_MEP.py defaults; --attack_lr default: 8, its --alpha)."""
    flags.DEFINE_float("pgi_lamda", 10.0, "FGSM-PGI weight of the prior-guided regularizer, the MSE between the "
                       "logits at the adversarial and at the initialization point (official --lamda 10).")
    validator("pgi_lamda", lambda v: v >= 0, lambda v: f"--pgi_lamda={v}: must be >= 0")
    flags.DEFINE_float("pgi_momentum_decay", 0.3, "FGSM-PGI decay of each example's stored gradient momentum "
                       "(official --momentum_decay 0.3).")
    validator("pgi_momentum_decay", lambda v: 0 <= v <= 1, lambda v: f"--pgi_momentum_decay={v}: must be in [0, 1]")
    flags.DEFINE_integer("pgi_epochs_reset", 40, "FGSM-PGI: every this many epochs the stored perturbations restart "
                         "from random corners and the momenta from zero (official --epochs_reset 40).")
    validator("pgi_epochs_reset", lambda v: v >= 1, lambda v: f"--pgi_epochs_reset={v}: must be at least 1")


def _mask_ratio_ok(value) -> bool:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        return False
    return 0.0 <= low <= high <= 1.0


def define_liet_flags() -> None:
    """LIET's hyperparameters (default: the official configs.yaml for CIFAR-10 at eps <= 8, and at 16 above)."""
    flags.DEFINE_float("liet_lambda", None, "LIET consistency weight reached in the last epoch (rises by "
                       "lambda / --epochs per epoch; official 100, above eps 8: 20).")
    validator("liet_lambda", lambda v: v is None or v >= 0, lambda v: f"--liet_lambda={v}: must be >= 0")
    flags.DEFINE_float("liet_smoothing", None, "LIET random label smoothing s: 1 - s on the true class, s split "
                       "at random over the others, drawn anew per loss (official 0.6, above eps 8: 0.4).")
    validator("liet_smoothing", lambda v: v is None or 0 <= v < 1,
              lambda v: f"--liet_smoothing={v}: must be in [0, 1)")
    flags.DEFINE_list("liet_mask_ratio", None, "LIET r_min,r_max: each step replaces a U[r_min, r_max) share of "
                      "the label-indicative start by noise (official 0.1,0.5; above eps 8: 0,1).")
    validator("liet_mask_ratio", lambda v: v is None or _mask_ratio_ok(v),
              lambda v: f"--liet_mask_ratio={','.join(v)}: give r_min,r_max with 0 <= r_min <= r_max <= 1")
    flags.DEFINE_integer("liet_li_update", None, "LIET: steps between label-indicative perturbations, counted "
                         "from each epoch's first (official 20; above eps 8: 10).")
    validator("liet_li_update", lambda v: v is None or v >= 1, lambda v: f"--liet_li_update={v}: must be >= 1")


def define_nu_at_elle_flags() -> None:
    """NuAT's and ELLE(-A)'s hyperparameters (official defaults; --attack_lr default for both: eps)."""
    flagtypes.DEFINE_eps("nuc_init", None, "NuAT Bernoulli start magnitude in 1/255 units (default: eps / 2, the "
                         "official 4 at eps 8).", maximum=None)
    flags.DEFINE_float("nuc_max", 4.5, "NuAT's final nuclear-norm weight lambda (official NuAT_cifar10.py: 4.5).")
    validator("nuc_max", lambda v: v >= 0, lambda v: f"--nuc_max={v}: must be >= 0")
    flags.DEFINE_float("nuc_ramp_epochs", None, "NuAT: lambda rises by nuc_max / R per epoch for R epochs "
                       "(default: the official rule R = --epochs - 10, at least 1).")
    validator("nuc_ramp_epochs", lambda v: v is None or v > 0, lambda v: f"--nuc_ramp_epochs={v}: must be positive")
    flags.DEFINE_enum("lambda_schedule", "onoff", ["onoff", "constant"], "ELLE: onoff is ELLE-A (lambda raised "
                      "to --lin_reg on a linearity-error spike, decayed otherwise); constant is ELLE.")
    flags.DEFINE_float("lin_reg", None, "ELLE-A's lambda_max / ELLE's lambda (default: the official scripts: "
                       "ELLE-A 4000; ELLE 1000 up to eps 8, 5000 up to 20, 10000 beyond).")
    validator("lin_reg", lambda v: v is None or v >= 0, lambda v: f"--lin_reg={v}: must be >= 0")
    flags.DEFINE_float("elle_decay_rate", 0.99, "ELLE-A: lambda's factor per step without a spike.")
    validator("elle_decay_rate", lambda v: 0 <= v <= 1, lambda v: f"--elle_decay_rate={v}: must be in [0, 1]")
    flags.DEFINE_float("elle_sensitivity", 2.0, "ELLE-A: a spike is an error above mean + this many std.")
    validator("elle_sensitivity", lambda v: v >= 0, lambda v: f"--elle_sensitivity={v}: must be >= 0")
    flags.DEFINE_float("elle_input_noise_rate", 0.0, "ELLE: the FGSM starts at x + rate U[-eps, eps] (official "
                       "0: from x; 2: N-FGSM + ELLE-A).")
    validator("elle_input_noise_rate", lambda v: v >= 0, lambda v: f"--elle_input_noise_rate={v}: must be >= 0")
    flags.DEFINE_boolean("elle_clamp", False, "ELLE: project the FGSM point onto the eps-ball (official: no).")
    flags.DEFINE_integer("elle_optimizer_steps", 2, "ELLE: SGD steps per batch with the batch's gradient. The "
                         "official trainer (core/utils/train.py) calls optimizer.step() twice, its per-batch "
                         "scheduler stepped in between (the second step takes the next step's lr and momentum and "
                         "the weight decay of the updated weights); 1: one step, as every other method here.")
    validator("elle_optimizer_steps", lambda v: v >= 1, lambda v: f"--elle_optimizer_steps={v}: must be >= 1")


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
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy (torch's), on the losses the "
                       "method applies it to (FastAT_Benchmark: 0.4; the training loss, and the attack's for fast_at "
                       "and n_fgsm).")
    validator("label_smoothing", lambda v: 0.0 <= v < 1.0, lambda v: f"--label_smoothing={v}: must be in [0, 1)")
    _require(["method", "label_smoothing"], _smooths,
             "--label_smoothing={label_smoothing}: --method={method} does not apply label smoothing")
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (quick experiments).")
    _at_least("steps_per_epoch", 1)


def define_validation_flags() -> None:
    flags.DEFINE_integer("es_attack_step", 50, "PGD steps of the early-stopping check on the held-out split.")
    flags.DEFINE_integer("es_restarts", 10, "PGD restarts of the early-stopping check.")
    _require(["es_attack_step", "es_restarts"], lambda v: v["es_attack_step"] >= 0 and v["es_restarts"] >= 1,
             "--es_attack_step must be >= 0 and --es_restarts >= 1")
    flags.DEFINE_integer("es_num_examples", -1, "Held-out examples the check uses (-1: all).")
    flags.DEFINE_integer("eval_attack_step", 50, "PGD steps of the final test evaluation.")
    flags.DEFINE_integer("eval_restarts", 10, "PGD restarts of the final test evaluation.")
    _require(["eval_attack_step", "eval_restarts"], lambda v: v["eval_attack_step"] >= 0 and v["eval_restarts"] >= 1,
             "--eval_attack_step must be >= 0 and --eval_restarts >= 1")
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
    flags.DEFINE_string("export_dir", None, "If set: at the end, export last then best as TF Serving SavedModels "
                        "to export_dir/export_model_name/<version> (the newest, best, is the one served).")
    flags.DEFINE_string("export_model_name", "tf_fastbat", "TF Serving model name under --export_dir.")
    validator("export_model_name", _model_name_check)


def define_backup_flags() -> None:
    flags.DEFINE_integer("backup_every_steps", 0, "Also write a backup (workdir/backup) every N training steps; "
                         "0: only at epoch ends and on --backup_every_seconds. A rerun of the same command resumes "
                         "from the newest backup.")
    _at_least("backup_every_steps", 0, " (0: off)")
    flags.DEFINE_float("backup_every_seconds", 600.0, "Also write a backup when this many seconds have passed since "
                       "the last one (checked at step ends); 0: off.")
    _at_least("backup_every_seconds", 0, " (0: off)")


def _smooths(values: Dict) -> bool:
    """--label_smoothing is 0 or the method names where it applies (methods.base.Method.smoothed_losses)."""
    from tf_fastbat import methods

    method = methods.REGISTRY.get(values["method"])
    return not values["label_smoothing"] or method is None or bool(method.smoothed_losses)


def define_training_flags() -> None:
    for define in (define_experiment_flags, define_data_flags, define_model_flags, define_method_flags,
                   define_optimization_flags, define_validation_flags, define_compute_flags, define_backup_flags):
        define()


def _model_name_check(name: str) -> bool:
    from tf_fastbat.serving.protocol import validate_model_name

    try:
        validate_model_name(name)
    except UsageError as error:
        raise UsageError(str(error).replace("--model_name", "--export_model_name")) from error
    return True


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
    hparams = {"eps": f.eps, **({"label_smoothing": f.label_smoothing} if f.label_smoothing else {})}
    if f.method in ("fast_bat", "fast_at", "fast_at_ga", "pgd", "n_fgsm", "nu_at", "elle_a", "fgsm_pgi"):
        hparams["attack_lr"] = f.attack_lr
    if f.method == "fast_bat":
        hparams.update(lmbda=f.lmbda, linearization=f.linearization, implicit_gradient=f.implicit_gradient,
                       cg_steps=f.cg_steps)
    if f.method == "fast_at_ga":
        hparams["ga_coef"] = f.ga_coef
    if f.method == "pgd":
        hparams["steps"] = f.attack_step
    if f.method == "fgsm_pgi":
        hparams.update(lamda=f.pgi_lamda, momentum_decay=f.pgi_momentum_decay, epochs_reset=f.pgi_epochs_reset)
    if f.method == "nu_at":
        ramp = f.nuc_ramp_epochs if f.nuc_ramp_epochs is not None else float(max(f.epochs - 10, 1))
        hparams.update(init_magnitude=f.nuc_init, nuc_max=f.nuc_max, nuc_ramp_epochs=ramp)
    if f.method == "elle_a":
        hparams.update(lambda_schedule=f.lambda_schedule, lin_reg=f.lin_reg, decay_rate=f.elle_decay_rate,
                       sensitivity=f.elle_sensitivity, input_noise_rate=f.elle_input_noise_rate, clamp=f.elle_clamp,
                       optimizer_steps_per_batch=f.elle_optimizer_steps, seed=f.seed)
    if f.method == "liet":
        ratio = None if f.liet_mask_ratio is None else tuple(float(v) for v in f.liet_mask_ratio)
        hparams.update(consistency_weight=f.liet_lambda, random_smoothing=f.liet_smoothing, mask_ratio=ratio,
                       li_update=f.liet_li_update, ramp_epochs=float(f.epochs), seed=f.seed)
    return hparams


def validate_training(f=FLAGS) -> None:
    """The checks beside the flags run when they are parsed; this re-runs them, for flags set in code."""
    f.validate_all_flags()


def as_dict(f=FLAGS) -> Dict:
    """The values of the training flags for workdir/config.json; eps and step sizes in 1/255 units, as typed."""
    def recorded(name: str):
        value = f[name].value
        if name in _EPS_FLAGS and value is not None:
            return [flagtypes.in_units(v) for v in value] if isinstance(value, list) else flagtypes.in_units(value)
        return value

    return {name: recorded(name) for name in _OWN_FLAGS if name in f}


_EPS_FLAGS = ("eps", "attack_lr", "eval_eps", "nuc_init")


_OWN_FLAGS = (
    "workdir seed deterministic dataset data_dir manual_dir image_size val_ratio model activation width_multiplier "
    "input_normalization "
    "method eps attack_lr lmbda linearization implicit_gradient cg_steps ga_coef attack_step epochs batch_size "
    "lr_schedule lr_max lr_min "
    "cyclic_milestone key_epochs lr_decay_rate momentum cycle_momentum base_momentum weight_decay steps_per_epoch "
    "es_attack_step es_restarts "
    "es_num_examples eval_attack_step eval_restarts eval_num_examples eval_eps distribution jit_compile "
    "mixed_precision tensorboard export_dir export_model_name sync_batch_norm backup_every_steps "
    "backup_every_seconds nuc_init nuc_max nuc_ramp_epochs lambda_schedule lin_reg elle_decay_rate elle_sensitivity "
    "elle_input_noise_rate elle_clamp elle_optimizer_steps weight_averaging label_smoothing pgi_lamda "
    "pgi_momentum_decay pgi_epochs_reset liet_lambda liet_smoothing liet_mask_ratio liet_li_update").split()
