"""python -m tf_fastbat.evaluate --model=PATH [--flagfile=...]: robustness evaluation the way the field reports it.

--model is a training workdir (its checkpoints/best.keras), a .keras file mapping [0, 1] NHWC images to logits, or
an exported SavedModel (its serving_default signature alone; a TF Serving DIR/NAME means its newest version).
Measured on the first --num_examples test examples: SA, RA under PGD-K-R (in-house), cleverhans' PGD (a
cross-check), AutoAttack, and PGD-20 transfer from a --surrogate, at every test eps of --eps (1/255 units);
plus the gradient alignment at each eps. Writes the report JSON, a Markdown table and PNG plots.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from tf_fastbat.checkpoints import read_json

FLAGS = flags.FLAGS
ATTACKS = ("pgd", "cleverhans_pgd", "autoattack", "transfer", "none")
AA_VERSIONS = ("standard", "plus", "rand")
WARNING_EXAMPLES = 100  # examples the model checks (probabilities, randomness, gradients at inference) look at


class EvaluationError(ValueError):
    """Input the evaluation cannot use; a one-line message naming the flag."""


# ----------------------------------------------------------------------------------------------------------------
# Flag values, checked before TensorFlow loads so that bad input fails at once.

def parse_eps_list(values: Sequence[str]) -> List[float]:
    """--eps in 1/255 units; a value in (0, 1) is refused as an already-fractional eps."""
    from tf_fastbat import config

    try:
        parsed = config.eps_list("eps", list(values), noun="eps is")
    except config.ConfigError as error:
        raise EvaluationError(str(error)) from error
    return list(dict.fromkeys(parsed))


def parse_attacks(values: Sequence[str]) -> List[str]:
    """--attacks: a comma list of ATTACKS; `none` (clean accuracy only) stands alone."""
    attacks = [v.strip() for v in values if v.strip()]
    for name in attacks:
        if name not in ATTACKS:
            raise EvaluationError(f"--attacks: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if "none" in attacks and len(attacks) > 1:
        raise EvaluationError("--attacks=none means clean accuracy only; it cannot be combined with attacks")
    if not attacks:
        raise EvaluationError(f"--attacks is empty; choose from {', '.join(ATTACKS)}")
    return [] if attacks == ["none"] else list(dict.fromkeys(attacks))


@dataclasses.dataclass
class ModelSpec:
    """What --model (or --surrogate) points at, resolved without loading anything."""

    path: str  # as given
    kind: str  # "keras" or "savedmodel"
    file: str  # the .keras file or the SavedModel directory to load
    workdir: Optional[str]  # the training workdir it comes from, if any
    label: str  # a short name for tables and plot legends


def model_label(path: str) -> str:
    """A short name for a model path: a workdir's or SavedModel's folder name, a .keras file's stem."""
    path = os.path.normpath(path)
    base = os.path.basename(path)
    if base.endswith(".keras"):
        stem = base[:-len(".keras")]
        if os.path.basename(os.path.dirname(path)) == "checkpoints":  # <workdir>/checkpoints/best.keras
            return f"{os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))}-{stem}"
        return stem
    if base.isdigit():  # a TF Serving version directory: <name>/<version>
        return f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}-v{base}"
    return os.path.basename(os.path.abspath(path))


def _is_saved_model_dir(path: str) -> bool:
    if any(os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
        return True
    return any(e.isdigit() and os.path.isdir(os.path.join(path, e)) for e in os.listdir(path))


def resolve_model(path: Optional[str], flag: str = "model") -> ModelSpec:
    """A workdir (-> checkpoints/best.keras, else last.keras), a .keras file, or a SavedModel directory."""
    if not path:
        raise EvaluationError(f"--{flag} is required (a training workdir, a .keras file or a SavedModel directory)")
    if not os.path.exists(path):
        raise EvaluationError(f"--{flag}={path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "checkpoints")):
            for kind in ("best", "last"):
                candidate = os.path.join(path, "checkpoints", f"{kind}.keras")
                if os.path.isfile(candidate):
                    return ModelSpec(path, "keras", candidate, path, model_label(path))
            raise EvaluationError(f"--{flag}={path}: a workdir without checkpoints/best.keras or last.keras")
        if _is_saved_model_dir(path):
            return ModelSpec(path, "savedmodel", path, None, model_label(path))
        raise EvaluationError(f"--{flag}={path}: a directory that is neither a training workdir (checkpoints/) nor a "
                              "SavedModel (saved_model.pb or integer version sub-directories)")
    if not path.endswith(".keras"):
        raise EvaluationError(f"--{flag}={path}: expected a training workdir, a .keras file or a SavedModel directory")
    folder = os.path.dirname(os.path.abspath(path))
    workdir = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None
    if workdir and not os.path.isfile(os.path.join(workdir, "config.json")):
        workdir = None
    return ModelSpec(path, "keras", path, workdir, model_label(path))


def read_config(spec: ModelSpec) -> Dict:
    """The training flags of the model's workdir (config.json), or {} for a model from elsewhere."""
    if not spec.workdir:
        return {}
    try:
        return read_json(os.path.join(spec.workdir, "config.json"), {})
    except ValueError as error:
        raise EvaluationError(str(error)) from error


def output_paths(spec: ModelSpec, output: Optional[str], workdir: Optional[str]) -> Dict[str, str]:
    """Where the report, table and plots go: --output's stem, else next to the model (or in --workdir)."""
    if output:
        stem = output[:-len(".json")] if output.endswith(".json") else output
        report_path = output
    else:
        if workdir:
            folder = workdir
        elif spec.workdir and os.path.abspath(spec.path) == os.path.abspath(spec.workdir):
            folder = spec.workdir
        elif spec.kind == "keras":
            folder = os.path.dirname(os.path.abspath(spec.file))
        else:
            folder = os.path.dirname(os.path.abspath(os.path.normpath(spec.path)))
        in_own_workdir = spec.workdir and os.path.abspath(folder) == os.path.abspath(spec.workdir)
        stem = os.path.join(folder, "evaluation" if in_own_workdir else f"evaluation-{spec.label}")
        report_path = stem + ".json"
    return {"report": report_path, "table": stem + ".md", "ra_vs_eps": stem + "-ra_vs_eps.png",
            "training_curves": stem + "-training_curves.png", "loss_landscape": stem + "-loss_landscape.png"}


# ----------------------------------------------------------------------------------------------------------------
# Models as logits functions.

def load_logits_fn(spec: ModelSpec, flag: str = "model") -> Callable:
    """A callable [0, 1] NHWC float32 images -> float32 logits for a resolved --model/--surrogate."""
    import tensorflow as tf

    if spec.kind == "savedmodel":
        from tf_fastbat.serving_model import SavedModelError, load_logits_fn as load_serving

        try:
            return load_serving(spec.file)
        except (SavedModelError, FileNotFoundError) as error:
            raise EvaluationError(f"--{flag}={spec.path}: {error}") from error
    from tf_fastbat import models

    try:
        classifier = models.load(spec.file)
    except (ValueError, FileNotFoundError) as error:
        raise EvaluationError(f"--{flag}={spec.path}: {str(error).splitlines()[0]}") from error

    def logits_fn(images):
        return tf.cast(classifier(images, training=False), tf.float32)

    logits_fn.classifier = classifier
    return logits_fn


def check_model_fits(logits_fn: Callable, x, num_labels: int, flag: str = "model") -> int:
    """Number of classes, after checking that the model takes these images and returns [batch, classes] outputs."""
    import tensorflow as tf

    try:
        output = logits_fn(tf.constant(x[:2]))
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise EvaluationError(f"--{flag}: the model does not take the dataset's images of shape "
                              f"{tuple(x.shape[1:])} ({type(error).__name__}: {str(error).splitlines()[0]})") \
            from error
    if output.shape.rank != 2:
        raise EvaluationError(f"--{flag}: the model outputs shape {tuple(output.shape)}; expected [batch, classes]")
    if output.shape[-1] < num_labels:
        raise EvaluationError(f"--{flag}: the model has {output.shape[-1]} outputs but the test labels go up to "
                              f"{num_labels - 1}")
    return int(output.shape[-1])


def model_warnings(logits_fn: Callable, x, y, batch_size: int = 256) -> List[str]:
    """AutoAttack's checks on a few examples: probabilities instead of logits, randomness, gradients at inference."""
    from tf_fastbat.attacks.autoattack import checks

    x, y = x[:WARNING_EXAMPLES], y[:WARNING_EXAMPLES]
    found = [checks.check_range_output(logits_fn, x, batch_size)[1],
             checks.check_randomized(logits_fn, x, y, batch_size),
             checks.check_dynamic(logits_fn, x[:8])]  # runs eagerly under a Python tracer: a few examples
    return [m for m in found if m]


# ----------------------------------------------------------------------------------------------------------------
# Attacks.

class _Progress:
    """A keras Progbar over restarts x examples (examples broken earlier count as done)."""

    def __init__(self, title: str, num_examples: int, restarts: int, verbose: bool):
        import keras

        self.num_examples = num_examples
        self.target = num_examples * restarts
        self.current = 0
        self.bar = None
        if verbose and num_examples:
            print(title, flush=True)
            self.bar = keras.utils.Progbar(self.target, unit_name="example", verbose=1 if sys.stdout.isatty() else 2)

    def __call__(self, restart: int, done: int, attacked: int) -> None:
        """`done` of the `attacked` examples of restart `restart` are finished."""
        self.current = restart * self.num_examples + (self.num_examples - attacked) + done
        if self.bar is not None:
            self.bar.update(self.current)

    def finish(self) -> None:
        """Fill the bar when the last restarts had nothing left to attack."""
        if self.bar is not None and self.current < self.target:
            self.current = self.target
            self.bar.update(self.target, finalize=True)


@dataclasses.dataclass
class Settings:
    """How the attacks are run (the report's attack_settings come from it)."""

    pgd_steps: int = 50
    pgd_restarts: int = 10
    cleverhans_steps: int = 50
    cleverhans_restarts: int = 1
    aa_version: str = "standard"
    transfer_steps: int = 20
    transfer_restarts: int = 1
    seed: int = 0
    batch_size: int = 256


def attack_names(attacks: Sequence[str], settings: Settings, surrogate_label: Optional[str] = None) -> Dict[str, str]:
    """--attacks entry -> the report key of its results."""
    from tf_fastbat import report
    from tf_fastbat.attacks.cleverhans_pgd import cleverhans_name
    from tf_fastbat.attacks.transfer import transfer_name

    names = {"pgd": report.pgd_name(settings.pgd_steps, settings.pgd_restarts),
             "cleverhans_pgd": cleverhans_name(settings.cleverhans_steps, settings.cleverhans_restarts),
             "autoattack": report.AUTOATTACK_NAME,
             "transfer": transfer_name(surrogate_label)}
    return {a: names[a] for a in attacks}


def attack_settings(attacks: Sequence[str], settings: Settings, surrogate: Optional[str]) -> Dict[str, Dict]:
    """The report's record of how each attack ran."""
    described = {
        "pgd": {"implementation": "tf_fastbat.attacks.pgd.PGD", "steps": settings.pgd_steps,
                "restarts": settings.pgd_restarts, "step_size": "eps/4", "random_start": True,
                "loss": "cross-entropy", "worst_case_over_restarts": True},
        "cleverhans_pgd": {"implementation": "cleverhans.tf2.attacks.projected_gradient_descent",
                           "nb_iter": settings.cleverhans_steps, "restarts": settings.cleverhans_restarts,
                           "eps_iter": "eps/4", "rand_init": True, "norm": "inf", "clip_min": 0.0, "clip_max": 1.0,
                           "sanity_checks": False},
        "autoattack": {"implementation": "tf_fastbat.attacks.autoattack.run_autoattack", "norm": "Linf",
                       "version": settings.aa_version},
        "transfer": {"implementation": "tf_fastbat.attacks.transfer.transfer_robust_mask", "surrogate": surrogate,
                     "steps": settings.transfer_steps, "restarts": settings.transfer_restarts, "step_size": "eps/4",
                     "random_start": True, "robust": "victim right on the clean and the transferred images"},
    }
    names = attack_names(attacks, settings, _label(surrogate))
    return {names[a]: described[a] for a in attacks}


def _label(path: Optional[str]) -> Optional[str]:
    return model_label(path) if path else None


class _Attacks:
    """The attacks on one model, built once so that every eps reuses their traced functions."""

    def __init__(self, logits_fn: Callable, settings: Settings, surrogate_fn: Optional[Callable] = None):
        from tf_fastbat.attacks.cleverhans_pgd import CleverhansPGD
        from tf_fastbat.attacks.pgd import PGD

        self.logits_fn, self.settings, self.surrogate_fn = logits_fn, settings, surrogate_fn
        self.pgd = PGD(logits_fn, settings.batch_size)
        self.cleverhans = CleverhansPGD(logits_fn, settings.batch_size)

    def robust_mask(self, attack: str, x, y, eps: float, title: str, verbose: bool) -> Tuple:
        """(robust mask, AutoAttack's details or None) of one --attacks entry at one eps (a fraction)."""
        from tf_fastbat.attacks.autoattack import run_autoattack
        from tf_fastbat.attacks.transfer import transfer_robust_mask

        s, n = self.settings, len(x)
        if attack == "autoattack":
            if eps == 0:  # nothing to perturb: RA is SA by definition (AutoAttack would spend minutes on it)
                return self.pgd.predict(x) == y, None
            return _autoattack(run_autoattack, self.logits_fn, x, y, eps, s, title, verbose)
        restarts = {"pgd": s.pgd_restarts, "cleverhans_pgd": s.cleverhans_restarts,
                    "transfer": s.transfer_restarts}[attack]
        progress = _Progress(title, n, restarts, verbose)
        if attack == "pgd":
            mask = self.pgd.robust_mask(x, y, eps, s.pgd_steps, s.pgd_restarts, seed=s.seed, progress=progress)
        elif attack == "cleverhans_pgd":
            mask = self.cleverhans.robust_mask(x, y, eps, s.cleverhans_steps, s.cleverhans_restarts, seed=s.seed,
                                               progress=progress)
        else:
            mask = transfer_robust_mask(self.surrogate_fn, self.logits_fn, x, y, eps, s.transfer_steps,
                                        s.transfer_restarts, seed=s.seed, batch_size=s.batch_size, progress=progress)
        progress.finish()
        return mask, None


def evaluate_model(logits_fn: Callable, x, y, eps_list_255: Sequence[float], attacks: Sequence[str],
                   settings: Optional[Settings] = None, surrogate_fn: Optional[Callable] = None,
                   surrogate: Optional[str] = None, alignment: bool = True, verbose: bool = False) -> Dict:
    """SA, RA of every attack at every eps (report format), timings, warnings and the gradient alignment.

    `logits_fn` maps [0, 1] NHWC images to logits; `surrogate_fn` (path `surrogate`) serves --attacks=transfer.
    """
    import numpy as np

    from tf_fastbat import metrics, report

    settings = settings or Settings()
    if "transfer" in attacks and surrogate_fn is None:
        raise EvaluationError("--attacks=transfer needs --surrogate=PATH")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    n, begin = len(x), time.perf_counter()
    warnings = model_warnings(logits_fn, x, y, settings.batch_size) if n else []
    for message in warnings:
        sys.stderr.write(f"tf_fastbat.evaluate: warning: {message}\n")
    runner = _Attacks(logits_fn, settings, surrogate_fn)
    clean_accuracy = float(np.mean(runner.pgd.predict(x) == y)) if n else 0.0
    names = attack_names(attacks, settings, _label(surrogate))
    robust: Dict[str, Dict[str, float]] = {names[a]: {} for a in attacks}
    seconds: Dict[str, Dict[str, float]] = {names[a]: {} for a in attacks}
    aa_details: Dict[str, Dict] = {}
    for attack in attacks:
        name = names[attack]
        for eps_255 in eps_list_255:
            key, start = report.eps_key(eps_255), time.perf_counter()
            mask, details = runner.robust_mask(attack, x, y, eps_255 / 255.0, f"{name} at eps {key} on {n} examples",
                                               verbose)
            if details is not None:
                aa_details[key] = details
                warnings += [w for w in details["warnings"] if w not in warnings]
            robust[name][key] = float(np.mean(mask)) if n else 0.0
            seconds[name][key] = time.perf_counter() - start
            if verbose:
                print(f"{name} at eps {key}: robust accuracy {100 * robust[name][key]:.2f}% "
                      f"({seconds[name][key]:.1f} s)", flush=True)
    result = {"clean_accuracy": clean_accuracy, "robust_accuracy": robust, "num_examples": n,
              "seed": settings.seed, "eps_255": list(eps_list_255),
              "attack_settings": attack_settings(attacks, settings, surrogate),
              "attack_seconds": {name: {"total": sum(by_eps.values()), **by_eps} for name, by_eps in seconds.items()},
              "warnings": warnings}
    if aa_details:
        result["autoattack_details"] = aa_details
    if alignment and n:
        measure = metrics.GradientAlignment(logits_fn)
        result["gradient_alignment"] = {report.eps_key(e): measure(x, y, e / 255.0, settings.seed,
                                                                   settings.batch_size) for e in eps_list_255}
    result["seconds"] = time.perf_counter() - begin
    return result


def _autoattack(run_autoattack, logits_fn, x, y, eps: float, settings: Settings, title: str,
                verbose: bool) -> Tuple:
    """run_autoattack at one eps with a Progbar per component attack: (robust mask, details for the report)."""
    import numpy as np

    if not len(x):
        return np.zeros([0], bool), {"per_attack_robust_accuracy": {}, "seconds_per_attack": {}, "warnings": []}
    bars: Dict[str, object] = {}

    def progress(attack: str, done: int, total: int) -> None:
        if not verbose:
            return
        import keras

        if attack not in bars:
            print(f"{title}: {attack}", flush=True)
            bars[attack] = keras.utils.Progbar(total, unit_name="batch", verbose=1 if sys.stdout.isatty() else 2)
        bars[attack].update(done, finalize=done >= total)

    result = run_autoattack(logits_fn, x, y, eps, version=settings.aa_version, batch_size=settings.batch_size,
                            seed=settings.seed, progress=progress)
    return result.robust_mask, {"robust_accuracy": result.robust_accuracy,
                                "per_attack_robust_accuracy": result.per_attack_robust_accuracy,
                                "seconds_per_attack": result.seconds_per_attack, "warnings": list(result.warnings)}


# ----------------------------------------------------------------------------------------------------------------
# Data.

def load_test_split(dataset: str, num_examples: int, data_dir: Optional[str], manual_dir: Optional[str],
                  image_size: int, seed: int):
    """The first `num_examples` (all if < 0) test examples as ([0, 1] float32 NHWC, int64 labels)."""
    from tf_fastbat.export import evaluation_examples

    return evaluation_examples(dataset, sys.maxsize if num_examples < 0 else num_examples, data_dir, manual_dir,
                               image_size, seed)


# ----------------------------------------------------------------------------------------------------------------
# Outputs.

def write_plots(paths: Dict[str, str], name: str, result: Dict, compare: Dict[str, Dict], spec: ModelSpec,
                logits_fn: Callable, x, y, eps_list_255: Sequence[float], seed: int) -> Dict[str, str]:
    """RA against eps (with --compare models), training curves (workdir models), loss landscape; -> written paths."""
    from tf_fastbat import metrics, plots

    written = {}
    if result["robust_accuracy"]:
        plots.robust_accuracy_vs_eps({name: result, **compare}, paths["ra_vs_eps"])
        written["ra_vs_eps"] = paths["ra_vs_eps"]
    log = os.path.join(spec.workdir, "training_log.csv") if spec.workdir else None
    if log and os.path.isfile(log):
        plots.training_curves(log, paths["training_curves"])
        written["training_curves"] = paths["training_curves"]
    eps = max(eps_list_255, default=0) / 255.0
    if eps > 0 and len(x):
        a, b, loss = metrics.loss_landscape(logits_fn, x[:1], y[:1], eps, seed)
        plots.loss_landscape(a, b, loss, paths["loss_landscape"],
                             f"{name}: loss around test example 0, eps {max(eps_list_255):g}/255")
        written["loss_landscape"] = paths["loss_landscape"]
    return written


def read_compare(paths: Sequence[str]) -> Dict[str, Dict]:
    """--compare report JSONs (of evaluate or train) by a short name, for the table and the RA plot."""
    reports = {}
    for path in paths:
        try:
            loaded = read_json(path)
        except ValueError as error:
            raise EvaluationError(f"--compare={error}") from error
        if loaded is None:
            raise EvaluationError(f"--compare={path}: no such file")
        if "robust_accuracy" not in loaded or "clean_accuracy" not in loaded:
            raise EvaluationError(f"--compare={path}: not a report (no clean_accuracy/robust_accuracy)")
        name = loaded.get("model_label") or os.path.splitext(os.path.basename(path))[0]
        reports[name if name not in reports else path] = loaded
    return reports


# ----------------------------------------------------------------------------------------------------------------
# Command line.

def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that other modules can import this one."""
    flags.DEFINE_string("model", None, "A training workdir (its checkpoints/best.keras), a .keras file mapping [0, 1] "
                        "NHWC images to logits, or an exported SavedModel directory (serving_default signature).")
    flags.DEFINE_string("dataset", None, "A tensorflow_datasets name, npz:PATH or folder:PATH; its test split is used "
                        "(default: the workdir's config.json dataset, a SavedModel's metadata, else cifar10).")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual-download directory (imagenet2012).")
    flags.DEFINE_integer("image_size", None, "Image size for folder:/imagenet2012 data (default: the workdir's, 224).")
    flags.DEFINE_integer("num_examples", -1, "Evaluate the first N test examples (-1: all).")
    flags.DEFINE_list("eps", [], "Test eps list in 1/255 units, e.g. 4,8,12,16 (default: the workdir's eval_eps or "
                      "eps, else 8).")
    flags.DEFINE_list("attacks", ["pgd", "autoattack"], f"Comma list of {', '.join(ATTACKS)} (none: SA only).")
    flags.DEFINE_integer("pgd_steps", 50, "PGD steps K (step size eps/4).")
    flags.DEFINE_integer("pgd_restarts", 10, "PGD random restarts R (per-example worst case).")
    flags.DEFINE_integer("cleverhans_steps", 50, "nb_iter of cleverhans' projected_gradient_descent.")
    flags.DEFINE_integer("cleverhans_restarts", 1, "Random restarts of cleverhans' PGD.")
    flags.DEFINE_string("aa_version", "standard", f"AutoAttack version: {', '.join(AA_VERSIONS)}.")
    flags.DEFINE_string("surrogate", None, "Surrogate model of --attacks=transfer (same forms as --model).")
    flags.DEFINE_integer("transfer_steps", 20, "PGD steps on the surrogate.")
    flags.DEFINE_integer("seed", 0, "Seed of every attack's randomness.")
    flags.DEFINE_integer("batch_size", 256, "Attack batch size.")
    flags.DEFINE_boolean("gradient_alignment", True, "Also measure the gradient alignment at each eps.")
    flags.DEFINE_boolean("plots", True, "Write the PNG plots.")
    flags.DEFINE_list("compare", [], "Other report JSONs shown beside this model in the table and RA plot.")
    flags.DEFINE_string("output", None, "Report JSON path; the table and plots take its stem (default: next to the "
                        "model, or in --workdir).")
    flags.DEFINE_string("workdir", None, "Folder for the outputs when --output is not given.")


def _fail(message: str) -> None:
    sys.stderr.write(f"tf_fastbat.evaluate: error: {message}\n")
    sys.exit(2)


def validate(f=FLAGS) -> Tuple[ModelSpec, List[str], Optional[ModelSpec]]:
    """Every check that needs no TensorFlow: (model, attacks, surrogate)."""
    spec = resolve_model(f.model)
    attacks = parse_attacks(f.attacks)
    parse_eps_list(f.eps)
    if f.aa_version not in AA_VERSIONS:
        raise EvaluationError(f"--aa_version={f.aa_version}: choose from {', '.join(AA_VERSIONS)}")
    checks = [(f.num_examples == -1 or f.num_examples >= 1, f"--num_examples={f.num_examples}: must be >= 1 or -1"),
              (f.pgd_steps >= 0 and f.pgd_restarts >= 1, "--pgd_steps must be >= 0 and --pgd_restarts >= 1"),
              (f.cleverhans_steps >= 0 and f.cleverhans_restarts >= 1,
               "--cleverhans_steps must be >= 0 and --cleverhans_restarts >= 1"),
              (f.transfer_steps >= 0, f"--transfer_steps={f.transfer_steps}: must be >= 0"),
              (f.batch_size >= 1, f"--batch_size={f.batch_size}: must be >= 1")]
    for ok, message in checks:
        if not ok:
            raise EvaluationError(message)
    surrogate = None
    if "transfer" in attacks:
        if not f.surrogate:
            raise EvaluationError("--attacks=transfer needs --surrogate=PATH (a workdir, .keras file or SavedModel)")
        surrogate = resolve_model(f.surrogate, "surrogate")
    elif f.surrogate:
        raise EvaluationError("--surrogate is only used by --attacks=transfer")
    read_compare(f.compare)
    return spec, attacks, surrogate


def run(f=FLAGS) -> Dict:
    """Load, attack, write the report, table and plots; returns the report."""
    spec, attacks, surrogate_spec = validate(f)
    config = read_config(spec)
    metadata = {}
    if spec.kind == "savedmodel":
        from tf_fastbat.serving_model import SavedModelError, load_metadata

        try:
            metadata = load_metadata(spec.file) or {}
        except (SavedModelError, ValueError, OSError):
            metadata = {}
    dataset = f.dataset or config.get("dataset") or metadata.get("dataset") or "cifar10"
    eps_list = parse_eps_list(f.eps) if f.eps else (
        parse_eps_list([str(e) for e in config.get("eval_eps") or []]) or
        parse_eps_list([str(config.get("eps", 8.0))]))
    paths = output_paths(spec, f.output, f.workdir)
    compare = read_compare(f.compare)

    import numpy as np

    from tf_fastbat import __version__, report
    from tf_fastbat.checkpoints import write_json_atomic

    logits_fn = load_logits_fn(spec)
    surrogate_fn = load_logits_fn(surrogate_spec, "surrogate") if surrogate_spec else None
    image_size = f.image_size or config.get("image_size") or 224
    x, y = load_test_split(dataset, f.num_examples, f.data_dir or config.get("data_dir"),
                         f.manual_dir or config.get("manual_dir"), image_size, f.seed)
    if not len(x):
        raise EvaluationError(f"--dataset={dataset}: the test split is empty")
    y = np.asarray(y).astype(np.int64)
    check_model_fits(logits_fn, x, int(y.max()) + 1)
    if surrogate_fn is not None:
        check_model_fits(surrogate_fn, x, int(y.max()) + 1, "surrogate")
    settings = Settings(pgd_steps=f.pgd_steps, pgd_restarts=f.pgd_restarts, cleverhans_steps=f.cleverhans_steps,
                        cleverhans_restarts=f.cleverhans_restarts, aa_version=f.aa_version,
                        transfer_steps=f.transfer_steps, seed=f.seed, batch_size=f.batch_size)
    print(f"Evaluating {spec.path} ({spec.kind}) on the first {len(x)} test examples of {dataset}; eps "
          f"{', '.join(report.eps_key(e) for e in eps_list)}; attacks: {', '.join(attacks) or 'none'}", flush=True)
    result = evaluate_model(logits_fn, x, y, eps_list, attacks, settings, surrogate_fn,
                            surrogate_spec.path if surrogate_spec else None, f.gradient_alignment, verbose=True)
    result = {"model": os.path.abspath(spec.path), "model_label": spec.label, "model_kind": spec.kind,
              "model_file": os.path.abspath(spec.file), "dataset": dataset, "split": "test",
              "examples": f"the first {len(x)} test examples", **result, "tf_fastbat_version": __version__}
    if surrogate_spec:
        result["surrogate"] = os.path.abspath(surrogate_spec.path)
    if f.plots:
        result["plots"] = write_plots(paths, spec.label, result, compare, spec, logits_fn, x, y, eps_list, f.seed)
    table = report.markdown_table({spec.label: result, **compare})
    write_json_atomic(result, paths["report"])
    with open(paths["table"], "w") as out:
        out.write(table + "\n")
    print(f"\n{table}\n")
    for message in result["warnings"]:
        print(f"WARNING: {message}")
    print(f"wrote {paths['report']} and {paths['table']}" +
          (f" and {len(result.get('plots', {}))} plots" if result.get("plots") else ""))
    return result


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        validate(FLAGS)  # before TensorFlow loads: bad input fails in a blink
    except EvaluationError as error:
        _fail(str(error))
    from tf_fastbat.data import DataError

    try:
        run(FLAGS)
    except (EvaluationError, DataError, FileNotFoundError) as error:
        _fail(str(error))


if __name__ == "__main__":
    define_flags()
    app.run(main)
