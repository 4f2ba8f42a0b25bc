"""Robustness the way the field reports it, for any model given as a logits function: clean accuracy and the
robust accuracy of each attack at each eps, with timings, AutoAttack's details, the model checks and the gradient
alignment. The evaluation tool, training's final report, early stopping and the export-time measurement all
measure through `robustness`."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tf_fastbat import report, units
from tf_fastbat.attacks.base import Attack, LogitsFn, Progress, build
from tf_fastbat.errors import UsageError
from tf_fastbat.flagtypes import in_units
from tf_fastbat.progress import Clock, ProgressBars

WARNING_EXAMPLES = 100  # examples the model checks (probabilities, randomness, gradients at inference) look at


@dataclasses.dataclass
class Settings:
    """What every attack of an evaluation shares, and each attack's own options by its --attacks name
    (`options={"pgd": {"steps": 10, "restarts": 1}}`; an attack's defaults for the rest: its `Options`)."""

    seed: int = 0
    batch_size: int = 256
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    surrogate: Optional[str] = None  # the surrogate's path, for the report
    surrogate_label: Optional[str] = None  # its short name, in the transfer attack's report key


def predictions(logits_fn: LogitsFn, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted labels of a numpy batch, in batches."""
    from tf_fastbat.attacks.autoattack._utils import predict

    return predict(logits_fn, np.asarray(x, np.float32), batch_size)


def classifier_logits(classifier) -> LogitsFn:
    """A Keras classifier as a logits function (inference mode, float32 logits)."""
    import tensorflow as tf

    return lambda images: tf.cast(classifier(images, training=False), tf.float32)






def model_warnings(logits_fn: LogitsFn, x, y, batch_size: int = 256) -> List[str]:
    """AutoAttack's checks on a few examples: probabilities instead of logits, randomness, gradients at inference."""
    from tf_fastbat.attacks.autoattack import checks

    x, y = x[:WARNING_EXAMPLES], y[:WARNING_EXAMPLES]
    found = [checks.check_range_output(logits_fn, x, batch_size)[1],
             checks.check_randomized(logits_fn, x, y, batch_size),
             checks.check_dynamic(logits_fn, x[:8])]  # runs eagerly under a Python tracer: a few examples
    return [m for m in found if m]


def as_arrays(x, y=None) -> Tuple[np.ndarray, np.ndarray]:
    """Test data as (float32 images, int64 labels): arrays `x`, `y`, or a tf.data.Dataset `x` of (images, labels)
    batches (or single examples) with `y` None, read into memory. Images outside [0, 1] and labels that do not match
    the images are refused with one line."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise UsageError("y: a tf.data.Dataset carries its labels in its (images, labels) elements; pass y=None")
        x, y = _dataset_arrays(x)
    elif y is None:
        raise UsageError("y: the labels are missing (pass arrays x and y, or a tf.data.Dataset of (images, labels))")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise UsageError(f"y: {len(y)} labels for {len(x)} images")
    units.check_images(x, "x")
    return x, y


def _dataset_arrays(dataset) -> Tuple[np.ndarray, np.ndarray]:
    """A dataset of (images, labels) batches or examples, concatenated."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise UsageError(f"x: a tf.data.Dataset for evaluation yields (images, labels); this one yields {spec}")
    if spec[0].shape.rank == 3:  # single examples
        dataset = dataset.batch(256)
    xs, ys = [], []
    for element in dataset:
        xs.append(np.asarray(element[0], np.float32))
        ys.append(np.asarray(element[1]).reshape(-1))
    if not xs:
        return np.zeros((0, *spec[0].shape[-3:]), np.float32), np.zeros([0], np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def robustness(logits_fn: LogitsFn, x, y, eps_list: Sequence[float], attacks: Sequence[Attack],
               batch_size: int = 256, progress: Optional[Callable[[str], Progress]] = None,
               log: Optional[Callable[[str], None]] = None, clock: Clock = time.perf_counter) -> Dict:
    """Clean accuracy and every attack's robust accuracy at every eps (fractions of 1, 0 for clean accuracy), in
    the report's format. `x`, `y`: arrays of [0, 1] images and labels, or a tf.data.Dataset `x` of (images, labels)
    batches with `y` None (see `as_arrays`).

    `progress(title)` gives each (attack, eps) run its progress callback, made as the run starts; `log` gets one line
    per finished run (its robust accuracy and the seconds it took by `clock`).
    """
    eps_list = units.fraction_list("eps", eps_list)
    x, y = as_arrays(x, y)
    n, begin = len(x), clock()
    clean = float(np.mean(predictions(logits_fn, x, batch_size) == y)) if n else 0.0
    robust: Dict[str, Dict[str, float]] = {a.name: {} for a in attacks}
    seconds: Dict[str, Dict[str, float]] = {a.name: {} for a in attacks}
    details: Dict[str, Dict[str, Dict]] = {}
    for attack in attacks:
        for eps in eps_list:
            key, start = report.eps_key(eps), clock()
            title = f"{attack.name} at eps {key} on {n} examples"
            outcome = attack.attack(logits_fn, x, y, eps, progress(title) if progress else None)
            robust[attack.name][key] = float(np.mean(outcome.robust)) if n else 0.0
            seconds[attack.name][key] = clock() - start
            if outcome.details:
                details.setdefault(attack.name, {})[key] = outcome.details
            if log is not None:
                log(f"{attack.name} at eps {key}: robust accuracy {100 * robust[attack.name][key]:.2f}% "
                    f"({seconds[attack.name][key]:.1f} s)")
    result = {"clean_accuracy": clean, "robust_accuracy": robust, "num_examples": n,
              "attack_settings": {a.name: a.settings() for a in attacks},
              "attack_seconds": {name: {"total": sum(by_eps.values()), **by_eps} for name, by_eps in seconds.items()},
              "seconds": clock() - begin}
    if details:
        result["details"] = details
    return result


def build_attacks(attacks: Sequence[Union[str, Attack]], settings: Settings,
                  surrogate_fn: Optional[LogitsFn] = None) -> List[Attack]:
    """Attack objects for --attacks names (built from `settings`); Attack objects pass through."""
    return [build(a, settings, surrogate_fn, settings.surrogate_label) if isinstance(a, str) else a for a in attacks]


def pgd_report(logits_fn, x, y, eps_list: Sequence[float], steps: int, restarts: int, seed: int,
               batch_size: int = 256, label: Optional[str] = None) -> Dict:
    """Clean accuracy and PGD-`steps`-`restarts` robust accuracy at each eps: training's final report and the
    export-time measurement, so that the two can be compared number for number. With a `label` ("best
    checkpoint"), each run's progress and closing line are printed under it."""
    from tf_fastbat.attacks.pgd import PGDAttack

    attack = PGDAttack(steps, restarts, seed=seed, batch_size=batch_size)
    if label is None:
        result = robustness(logits_fn, x, y, eps_list, [attack], batch_size)
    else:
        result = robustness(logits_fn, x, y, eps_list, [attack], batch_size,
                            progress=lambda title: ProgressBars(f"{label}: {title}"),
                            log=lambda line: _print(f"{label}: {line}"))
    return {**result, "seed": seed}


def evaluate_model(logits_fn: LogitsFn, x, y, eps_list: Sequence[float], attacks: Sequence[Union[str, Attack]],
                   settings: Optional[Settings] = None, surrogate_fn: Optional[LogitsFn] = None,
                   alignment: bool = True, verbose: bool = False) -> Dict:
    """`robustness` plus the model checks' warnings, AutoAttack's details and the gradient alignment at each eps
    (fractions of 1); `attacks` are Attack objects or --attacks names built from `settings`. `x`, `y` as in
    `robustness`: arrays, or a tf.data.Dataset of (images, labels) with `y` None."""
    from tf_fastbat import metrics

    eps_list = units.fraction_list("eps", eps_list)
    x, y = as_arrays(x, y)
    settings = settings or Settings()
    attacks = build_attacks(attacks, settings, surrogate_fn)
    begin = time.perf_counter()
    warnings = model_warnings(logits_fn, x, y, settings.batch_size) if len(x) else []
    for message in warnings:
        sys.stderr.write(f"tf_fastbat.evaluate: warning: {message}\n")
    result = robustness(logits_fn, x, y, eps_list, attacks, settings.batch_size,
                        progress=ProgressBars if verbose else None, log=_print if verbose else None)
    from tf_fastbat.attacks.autoattack.attack import AUTOATTACK_NAME

    aa_details = result.pop("details", {}).get(AUTOATTACK_NAME, {})
    for by_eps in aa_details.values():
        warnings += [w for w in by_eps["warnings"] if w not in warnings]
    result.update(seed=settings.seed, eps_255=[in_units(e) for e in eps_list], warnings=warnings)
    if aa_details:
        result["autoattack_details"] = aa_details
    if alignment and len(x):
        measure = metrics.GradientAlignment(logits_fn)
        result["gradient_alignment"] = {report.eps_key(e): measure(x, y, e, settings.seed, settings.batch_size)
                                        for e in eps_list}
    result["seconds"] = time.perf_counter() - begin
    return result


def _print(line: str) -> None:
    print(line, flush=True)
