"""AutoAttack, L-inf (Croce & Hein 2020): an ensemble of parameter-free attacks run in sequence, each only on
the points that survived the previous ones, after the reference's sanity checks on the model.

Versions (as in fra31/auto-attack): 'standard' = APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square
(5000 queries); 'plus' = APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5000 queries),
APGD-T, FAB-T; 'rand' = APGD-CE and APGD-DLR with 20 EOT iterations, for randomized models; 'custom' =
the standard settings with an explicit `attacks_to_run`. Progress goes to `progress(attack, done, total)` during
each attack (`progress`) and one line per finished attack to `log`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tf_fastbat.attacks.autoattack import checks
from tf_fastbat.attacks.autoattack._utils import LogitsFn, as_inputs, batches, predict
from tf_fastbat.attacks.autoattack.apgd import APGDAttack, APGDTargetedAttack, zero_gradient_message
from tf_fastbat.attacks.autoattack.fab import FABAttack
from tf_fastbat.attacks.autoattack.progress import AttackProgress, ProgressFn
from tf_fastbat.attacks.autoattack.square import SquareAttack

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS: Dict[str, tuple] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
N_TARGET_CLASSES = 9
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


@dataclasses.dataclass
class AutoAttackResult:
    """Outcome of `run_autoattack`; accuracies are fractions of all examples."""

    x_adv: np.ndarray  # adversarial example where some attack succeeded, the clean input elsewhere
    robust_accuracy: float
    clean_accuracy: float
    per_attack_robust_accuracy: Dict[str, float]  # cumulative, after each attack in the order run
    robust_mask: np.ndarray  # True where the example survived every attack (and was correctly classified)
    seconds_per_attack: Dict[str, float]
    warnings: List[str]
    robust_masks: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # cumulative, after each attack


def build_attacks(logits_fn: LogitsFn, eps: float, version: str, seed: int,
                  max_rows: int = 256) -> Dict[str, object]:
    """The attack objects with the hyper-parameters the reference's `set_version` assigns; APGD and FAB batch at
    most `max_rows` runs (points x restarts x target classes) at a time, Square about `max_rows` queries."""
    restarts = 5 if version == "plus" else 1
    eot_iter = 20 if version == "rand" else 1
    return {
        "apgd-ce": APGDAttack(logits_fn, eps, "ce", n_iter=100, n_restarts=restarts, eot_iter=eot_iter, seed=seed,
                              max_rows=max_rows),
        "apgd-dlr": APGDAttack(logits_fn, eps, "dlr", n_iter=100, n_restarts=restarts, eot_iter=eot_iter,
                               seed=seed, max_rows=max_rows),
        "apgd-t": APGDTargetedAttack(logits_fn, eps, n_iter=100, n_restarts=1, n_target_classes=N_TARGET_CLASSES,
                                     seed=seed, max_rows=max_rows),
        "fab": FABAttack(logits_fn, eps, targeted=False, n_iter=100, n_restarts=restarts, seed=seed,
                         max_rows=max_rows),
        "fab-t": FABAttack(logits_fn, eps, targeted=True, n_target_classes=N_TARGET_CLASSES, n_iter=100,
                           n_restarts=1, seed=seed, max_rows=max_rows),
        "square": SquareAttack(logits_fn, eps, n_queries=5000, p_init=0.8, n_restarts=1, seed=seed,
                               max_rows=max_rows),
    }


def _attack_list(version: str, attacks_to_run: Optional[Sequence[str]]) -> List[str]:
    """Attacks to run, in order: the version's list, or `attacks_to_run` (then with that version's settings)."""
    if version not in VERSIONS and version != "custom":
        raise ValueError(f"unknown AutoAttack version {version!r}; use standard, plus, rand or custom")
    if attacks_to_run is None:
        if version == "custom":
            raise ValueError("version='custom' needs attacks_to_run")
        return list(VERSIONS[version])
    unknown = [a for a in attacks_to_run if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from {ATTACKS}")
    return list(attacks_to_run)


def run_checks(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, attacks: Sequence[str], version: str,
               batch_size: int) -> tuple:
    """Run the reference's pre-attack checks on the first batch: (number of classes, warnings)."""
    first, first_y = x[:batch_size], y[:batch_size]
    found = []
    if version != "rand":
        found.append(checks.check_randomized(logits_fn, first, first_y, batch_size))
    n_classes, message = checks.check_range_output(logits_fn, first, batch_size)
    found.append(message)
    found.append(checks.check_dynamic(logits_fn, first))
    found.append(checks.check_n_classes(n_classes, attacks, N_TARGET_CLASSES, N_TARGET_CLASSES))
    return n_classes, [m for m in found if m]


def run_autoattack(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, *, version: str = "standard",
                   batch_size: int = 256, seed: int = 0, attacks_to_run: Optional[Sequence[str]] = None,
                   verbose: bool = False, progress: Optional[ProgressFn] = None,
                   log: Optional[Callable[[str], None]] = None) -> AutoAttackResult:
    """Run AutoAttack (L-inf, radius `eps` as a fraction) on images x in [0, 1] with integer labels y.

    `progress(attack, done, total)` is called when each attack starts (done = 0), after every block of its
    iterations or queries, and when it ends (done = total); `log` gets one line per finished attack (robust
    accuracy so far, seconds); `verbose` prints those lines and more.
    """
    x, y = as_inputs(x, y)
    attacks = _attack_list(version, attacks_to_run)
    log = log or (print if verbose else None)
    detail = print if verbose else (lambda *args: None)
    n = len(x)
    if n == 0:
        raise ValueError("run_autoattack needs at least one example")
    n_classes, found_warnings = run_checks(logits_fn, x, y, attacks, version, batch_size)
    robust = predict(logits_fn, x, batch_size) == y
    clean_accuracy = float(robust.mean())
    detail(f"AutoAttack {version}: {', '.join(attacks)}; eps={eps:.5f}; clean accuracy {clean_accuracy:.2%}")
    attack_objects = build_attacks(logits_fn, eps, version, seed, max_rows=batch_size)
    x_adv = x.copy()
    per_attack: Dict[str, float] = {}
    seconds: Dict[str, float] = {}
    masks: Dict[str, np.ndarray] = {}
    for name in attacks:
        start = time.perf_counter()
        index = np.flatnonzero(robust)
        skipped = n_classes < _MIN_CLASSES.get(name, 2)
        if skipped:
            found_warnings.append(f"{name} skipped: it needs at least {_MIN_CLASSES[name]} classes")
        if skipped or not len(index):  # no progress bar for work that is not there
            per_attack[name], masks[name], seconds[name] = float(robust.mean()), robust.copy(), 0.0
            if log is not None:
                log(f"{name}: skipped (it needs at least {_MIN_CLASSES[name]} classes)" if skipped else
                    f"{name}: nothing left to attack (no point is classified correctly any more); robust accuracy "
                    f"{per_attack[name]:.2%}")
            continue
        meter = AttackProgress(progress, name, attack_objects[name].work(len(index), n_classes))
        n_zero = 0
        parts = list(batches(len(index), batch_size))
        for number, part in enumerate(parts):
            chosen = index[part]
            adv, zeros = attack_objects[name].perturb(x[chosen], y[chosen], stream=(number,), done=meter)
            n_zero += zeros
            fooled = predict(logits_fn, adv, batch_size) != y[chosen]
            robust[chosen[fooled]] = False
            x_adv[chosen[fooled]] = adv[fooled]
            detail(f"{name} - {number + 1}/{len(parts)} - {int(fooled.sum())} out of {len(chosen)} successfully "
                "perturbed")
        meter.finish()
        if n_zero and name in ("apgd-dlr", "apgd-t"):
            found_warnings.append(zero_gradient_message(n_zero))
        per_attack[name] = float(robust.mean())
        masks[name] = robust.copy()
        seconds[name] = time.perf_counter() - start
        if log is not None:
            log(f"robust accuracy after {name.upper()}: {per_attack[name]:.2%} ({seconds[name]:.1f} s)")

    square_warning = checks.check_square_sr({"clean": clean_accuracy, **per_attack})
    if square_warning:
        found_warnings.append(square_warning)
    perturbation = np.abs(x_adv - x).reshape(n, -1).max(axis=1)
    if perturbation.max() > eps + 1e-6 or x_adv.min() < 0.0 or x_adv.max() > 1.0 or np.isnan(x_adv).any():
        found_warnings.append(f"adversarial examples leave the eps-ball or the box: max L-inf "
                              f"{perturbation.max():.6f}, range [{x_adv.min():.4f}, {x_adv.max():.4f}]")
    robust_accuracy = float(robust.mean())
    detail(f"max Linf perturbation: {perturbation.max():.5f}; robust accuracy: {robust_accuracy:.2%}")
    for message in found_warnings:
        detail(f"Warning: {message}")
    return AutoAttackResult(x_adv=x_adv, robust_accuracy=robust_accuracy, clean_accuracy=clean_accuracy,
                            per_attack_robust_accuracy=per_attack, robust_mask=robust.copy(),
                            seconds_per_attack=seconds, warnings=found_warnings, robust_masks=masks)
