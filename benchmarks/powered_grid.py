"""CPU-scale grids on benchmarks/reproduce.py's cells and runner: the small-data grid with the power to tell methods
apart, and the paper's Table 1 on the full CIFAR-10.

Small data (--part=all, eps16, eps8): the shared CIFAR-10 slice (5,085 training images, 508 held out; 1,017 test),
PreActResNet-18 at width 0.25 (flags/reproduce/powered.cfg). Two parts, each sized to about two hours of 2 CPU cores
(RESULTS.md, "Powered grid"):
  eps16  Fast-AT, Fast-BAT, N-FGSM, FGSM-PGI, NuAT, ELLE-A, LIET at 16/255, seed 0, long enough for catastrophic
         overfitting to show (held-out PGD-10-1 accuracy and gradient alignment per epoch)
  eps8   Fast-AT, Fast-BAT, N-FGSM, FGSM-PGI, LIET at 8/255, seeds 0-2: mean +- std, and whether each gap to Fast-BAT
         exceeds the seed spread

    .venv/bin/python -m benchmarks.powered_grid --part=eps16 > runs/powered_eps16.log 2>&1 &
    .venv/bin/python -m benchmarks.powered_grid --part=eps8 > runs/powered_eps8.log 2>&1 &
    .venv/bin/python -m benchmarks.powered_grid --stage=autoattack --only=...  # AutoAttack on 200 test images
    .venv/bin/python -m benchmarks.powered_grid --stage=report                 # tables and figures so far
    .venv/bin/python -m benchmarks.powered_grid --only=fast_at_eps16_seed0     # one cell

Full CIFAR-10 (--part=full: full_eps16, full_eps8): Fast-AT, Fast-BAT, Fast-AT-GA, N-FGSM at 8 and 16/255, seed 0,
on all of the shared cifar10.npz at width 0.25 for 10 epochs (flags/reproduce/full_cifar10.cfg; the plan in
BUILD_NOTES.md, "Full CIFAR-10 grid"); outputs runs/full_cifar10, benchmarks/results/full_cifar10.{md,json},
results/powered_co_full_eps*.png:

    .venv/bin/python -m benchmarks.powered_grid --part=full --stage=train > runs/full_cifar10.log 2>&1 &
    .venv/bin/python -m benchmarks.powered_grid --part=full --stage=autoattack   # best and last: AA 500, PGD-50-10 1,000
    .venv/bin/python -m benchmarks.powered_grid --part=full --stage=report       # Table 1 and the figures so far
    .venv/bin/python -m benchmarks.powered_grid --part=full --stage=pretrained   # tf_fastbat/pretrained/*.keras, *.json
    .venv/bin/python -m benchmarks.powered_grid --part=full --stage=archive      # benchmarks/results/full_cifar10_runs

Resumable: a cell with a report.json is never rerun; a killed cell resumes from its backup when its command runs
again (tf_fastbat.train). Each cell's command is printed and kept in its workdir's command.txt. A grid that spans
machines: --stage=archive keeps each cell's records, its newest backup while it trains and its checkpoints until
the autoattack stage has measured them; copying the archive back into --output_dir goes on where it stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

from benchmarks import reproduce
from benchmarks.registry import method_names
from tf_fastbat import runtime

FLAGFILE = os.path.join("flags", "reproduce", "powered.cfg")
REFERENCE = "fast_bat"  # the paper's method: every gap is measured against it
COLLAPSE_FRACTION = 0.5  # an epoch collapses when its held-out PGD accuracy falls below half the best before it ...
COLLAPSE_MIN_PEAK = 0.05  # ... once that best is at least 5% (not a fluctuation around zero)


class Part(NamedTuple):
    """One part of the grid: a training eps (1/255), its methods and seeds, the epochs sized for its budget, the
    flagfile every cell starts from, and a prefix that keeps its cell names apart from other parts'."""
    eps: int
    methods: Sequence[str]
    seeds: Sequence[int]
    epochs: int
    flagfile: str = FLAGFILE
    prefix: str = ""

    def cell_name(self, method: str, seed: int) -> str:
        return f"{self.prefix}{method}_eps{self.eps}_seed{seed}"


FULL_FLAGFILE = os.path.join("flags", "reproduce", "full_cifar10.cfg")
FULL_METHODS = ("fast_at", "fast_bat", "fast_at_ga", "n_fgsm")
PARTS = {
    "eps16": Part(16, ("fast_at", "fast_bat", "n_fgsm", "fgsm_pgi", "nu_at", "elle_a", "liet"), (0,), 15),
    "eps8": Part(8, ("fast_at", "fast_bat", "n_fgsm", "fgsm_pgi", "liet"), (0, 1, 2), 8),
    # The full CIFAR-10 (issue 20): the paper's Table 1 methods at width 0.25 for 10 epochs, one seed (BUILD_NOTES,
    # "Full CIFAR-10 grid"). Fast-AT at 16/255 first (the catastrophic-overfitting question), then the Fast-BAT
    # model that ships as pretrained:cifar10_fast_bat_eps8.
    "full_eps16": Part(16, FULL_METHODS, (0,), 10, FULL_FLAGFILE, "full_"),
    "full_eps8": Part(8, ("fast_bat", "fast_at", "fast_at_ga", "n_fgsm"), (0,), 10, FULL_FLAGFILE, "full_"),
}
GROUPS = {"all": ("eps16", "eps8"), "full": ("full_eps16", "full_eps8")}  # --part=all: the small-data grid
LOSSY_INDICES = os.path.join(os.pardir, "shared", "data", "cifar10_test_lossy_indices.txt")  # from the root
FULL_STEM = "full_cifar10"  # the full grid's results file stem and default output folder (runs/full_cifar10)


class PoweredCell(reproduce.Cell):
    """A grid cell trained from its part's flagfile; its epochs are part of the cell (its extra flags)."""

    def __init__(self, name: str, method: str, eps: int, seed: int, extra: Optional[Dict] = None,
                 flagfile: str = FLAGFILE):
        super().__init__(name, method, eps, seed, extra)
        self.flagfile = flagfile

    def command(self, output_dir: str, epochs: Optional[int]) -> List[str]:
        base = f"--flagfile={reproduce.BASE_FLAGFILE}"
        return [f"--flagfile={self.flagfile}" if arg == base else arg for arg in super().command(output_dir, epochs)]


def part_cells(part: Part, epochs: Optional[int] = None) -> List[PoweredCell]:
    """The part's cells, seed-major like reproduce.grid_cells; `epochs` overrides the part's (quick checks)."""
    return [PoweredCell(part.cell_name(m, s), m, part.eps, s, {"epochs": epochs or part.epochs}, part.flagfile)
            for s in part.seeds for m in part.methods]


def known_cells(cells: Sequence[PoweredCell], names: Sequence[str]) -> List[PoweredCell]:
    """The cells whose method is in `names` (tf_fastbat.methods.NAMES); one line per method left out."""
    missing = sorted({c.method for c in cells} - set(names))
    for method in missing:
        count = sum(c.method == method for c in cells)
        print(f"[powered] {method}: not in tf_fastbat.methods.NAMES, its {count} cell(s) skipped", flush=True)
    return [c for c in cells if c.method in names]


def lossy_test_indices(path: str = LOSSY_INDICES) -> List[int]:
    """The test indices of cifar10.npz whose images are JPEG-decoded (shared/data/README.md), one per line."""
    with open(path) as lines:
        return [int(line) for line in lines if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# Reading a cell: the test report (report.json) and the per-epoch curves (training_log.csv).

def collapse_epochs(robust: Sequence[float]) -> List[int]:
    """Epochs (from 1) whose held-out PGD accuracy is below COLLAPSE_FRACTION of the best epoch before them.

    Catastrophic overfitting (Wong et al. 2020) is a fall of PGD accuracy to about zero within an epoch or two,
    while FGSM accuracy rises; a fall to under half the running best, from a best of at least COLLAPSE_MIN_PEAK,
    marks it and not the epoch-to-epoch noise of 508 held-out images (about 2 points at 20% accuracy).
    """
    found, best = [], -math.inf
    for epoch, value in enumerate(robust, start=1):
        if value != value:  # NaN: no held-out check that epoch
            continue
        if best >= COLLAPSE_MIN_PEAK and value < COLLAPSE_FRACTION * best:
            found.append(epoch)
        best = max(best, value)
    return found


def summary(cell: PoweredCell, output_dir: str) -> Optional[Dict]:
    """SA and PGD RA of the best (early-stopped) and last checkpoints, s/epoch, per-epoch curves; None if unfinished."""
    run = cell.record(output_dir)
    report = run.results()
    if report is None:
        return None
    key = f"{cell.eps:g}/255"
    out = {"seed": cell.seed, "seconds_per_epoch": report.get("seconds_per_epoch"),
           "best_epoch": report.get("best_epoch"), "epochs": report.get("epochs"),
           "command": " ".join(cell.command(output_dir, None)[1:])}
    for name, result in report["checkpoints"].items():
        attack = next(a for a in sorted(result["robust_accuracy"]) if a.startswith("pgd-"))
        out[name] = {"SA": result["clean_accuracy"], "RA": result["robust_accuracy"][attack][key],
                     "attack": attack, "num_examples": result["num_examples"]}
    extra = run.extra()
    for name, entry in extra.items():
        if name in out and "autoattack" in entry:
            out[name]["AA"] = entry["autoattack"]["robust_accuracy"]
            out[name]["PGD_on_AA"] = entry.get("pgd_50_10_on_aa_subset")
            out[name]["AA_examples"] = entry["autoattack"]["num_examples"]
        if name in out and "pgd_50_10" in entry:
            out[name]["PGD50"] = entry["pgd_50_10"]["robust_accuracy"]
            out[name]["PGD50_examples"] = entry["pgd_50_10"]["num_examples"]
        if name in out and "clean" in entry:
            out[name]["SA_kept"] = entry["clean"]["accuracy_without_excluded"]
            out[name]["SA_kept_examples"] = entry["clean"]["num_examples_without_excluded"]
    log = reproduce.training_log(run.root)
    out["val_robust"] = [row.get("val_robust_accuracy", math.nan) for row in log]
    out["alignment"] = [row.get("gradient_alignment", math.nan) for row in log]
    out["train_accuracy"] = [row.get("accuracy", math.nan) for row in log]  # on the method's training inputs
    out["collapse"] = collapse_epochs(out["val_robust"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The table and the catastrophic-overfitting figure.

def gap_cells(runs: Sequence[Dict], reference: Sequence[Dict], checkpoint: str, key: str) -> List[str]:
    """[gap of the means in points, '> seed spread?']: yes when |gap| > std + std_ref (the mean +- std bars part)."""
    if not reference or not runs:
        return ["-", "-"]
    mean, std = reproduce.mean_std([r[checkpoint][key] for r in runs])
    ref_mean, ref_std = reproduce.mean_std([r[checkpoint][key] for r in reference])
    gap = 100 * (mean - ref_mean)
    if len(runs) < 2 or len(reference) < 2:
        return [f"{gap:+.1f}", "n/a (1 seed)"]
    return [f"{gap:+.1f}", f"{'yes' if abs(gap) > 100 * (std + ref_std) else 'no'} ({100 * (std + ref_std):.1f})"]


def paired_gaps(runs: Sequence[Dict], reference: Sequence[Dict], checkpoint: str, key: str) -> str:
    """The gap to `reference` seed by seed (same seed: same initialization and data order), in points."""
    by_seed = {r["seed"]: r[checkpoint][key] for r in reference}
    gaps = [100 * (r[checkpoint][key] - by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    return ", ".join(f"{g:+.1f}" for g in gaps) or "-"


def autoattack_cell(runs: Sequence[Dict], checkpoint: str) -> str:
    """AutoAttack RA on its first-n test images, PGD-50-10 on the same images in brackets; the seeds that have it."""
    measured = [r[checkpoint] for r in runs if "AA" in r[checkpoint]]
    if not measured:
        return "-"
    sizes = sorted({m["AA_examples"] for m in measured})
    seeds = "" if len(measured) == len(runs) else f", {len(measured)} of {len(runs)} seeds"
    return (f"{fmt([m['AA'] for m in measured])} [{fmt([m['PGD_on_AA'] for m in measured])}] "
            f"(n = {', '.join(map(str, sizes))}{seeds})")


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean +- sample std as reproduce.fmt, a single run's value alone (one seed has no spread to show)."""
    values = [v for v in values if v is not None]
    return reproduce.fmt(values, scale, digits) if len(values) != 1 else f"{scale * values[0]:.{digits}f}"


def extreme_to_last(curves: Sequence[Sequence[float]], pick, scale: float, digits: int) -> str:
    """'a → b': the mean over runs of each curve's `pick` (max, min) and of its last value, NaN epochs left out."""
    finite = [[v for v in curve if v == v] for curve in curves]
    finite = [curve for curve in finite if curve]
    if not finite:
        return "-"
    extreme = reproduce.mean_std([scale * pick(curve) for curve in finite])[0]
    return f"{extreme:.{digits}f} → {reproduce.mean_std([scale * curve[-1] for curve in finite])[0]:.{digits}f}"


def curve_cells(runs: Sequence[Dict]) -> List[str]:
    """Held-out PGD RA peak -> last epoch, collapse epochs per seed, gradient alignment lowest -> last (means)."""
    collapse = "; ".join(", ".join(map(str, r["collapse"])) or "none" for r in runs)
    return [extreme_to_last([r["val_robust"] for r in runs], max, 100.0, 1), collapse,
            extreme_to_last([r["alignment"] for r in runs], min, 1.0, 2)]


def powered_table(summaries: Dict[str, Dict], part: Part, reference: str = REFERENCE) -> str:
    """One part's table: mean +- sample std over seeds, gaps to `reference` and whether they exceed the spread."""
    ref_label = reproduce.label(reference)
    header = ["method", "SA (last)", "RA-PGD (last)", "SA (ES)", "RA-PGD (ES)", f"ΔRA (last) vs {ref_label}",
              "> seed spread?", f"ΔSA (last) vs {ref_label}", "> seed spread?", "held-out RA peak → last",
              "collapse epochs", "GA lowest → last", "best epoch", "s/epoch", "seeds", "ΔRA (last) per seed",
              "RA-AA (last) [PGD-50-10, same images]"]
    rows = {m: [summaries[n] for n in (part.cell_name(m, s) for s in part.seeds)
                if n in summaries and "best" in summaries[n] and "last" in summaries[n]] for m in part.methods}
    tests = sorted({f"{r[c]['attack'].upper()} on {r[c]['num_examples']} test images" for runs in rows.values()
                    for r in runs for c in ("best", "last")})
    lines = [f"**ε = {part.eps}/255** (train = test; {', '.join(tests) or 'no cell finished'})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in rows.items():
        if not runs:
            continue
        values = [fmt([r[c][k] for r in runs]) for c in ("last", "best") for k in ("SA", "RA")]
        if method == reference:
            values += ["(reference)", "", "(reference)", ""]
        else:
            values += gap_cells(runs, rows.get(reference, []), "last", "RA")
            values += gap_cells(runs, rows.get(reference, []), "last", "SA")
        values += curve_cells(runs)
        values += [", ".join(str(r["best_epoch"]) for r in runs),
                   fmt([r["seconds_per_epoch"] for r in runs], 1.0, 1), str(len(runs)),
                   "" if method == reference else paired_gaps(runs, rows.get(reference, []), "last", "RA"),
                   autoattack_cell(runs, "last")]
        lines.append(f"| {reproduce.label(method)} | " + " | ".join(values) + " |")
    return "\n".join(lines + [""])


# The paper's Table 1 (CIFAR-10, PreActResNet-18 at full width, 20 epochs, early stopping), only the figures restated
# in this project's issue tracker (issue 20); the other cells are left to the paper (arXiv:2112.12376) rather than
# risk miscopying them. (method, eps) -> {column: percent}.
PAPER_TABLE1 = {
    ("fast_bat", 8): {"PGD50": 48.74, "AA": 44.89},
    ("fast_at", 8): {"PGD50": 45.47, "AA": 41.97},
    ("fast_bat", 16): {"SA": 67.79, "PGD50": 26.15},
    ("fast_at_ga", 16): {"SA": 58.57, "PGD50": 26.22},
    ("fast_at", 16): {"SA": 46.02, "PGD50": 21.79},
}


SHIPPED_SOURCE = "the shipped model's card (pretrained:{}); its workdir was not kept"  # table 1's † note


def shipped_summary(cell: PoweredCell) -> Optional[Dict]:
    """Table 1's figures of a cell whose workdir was not kept but whose model ships (PRETRAINED), from the model's
    card (tf_fastbat.pretrained): the checkpoint it ships, and `last` too when that is the same epoch; None if the
    cell ships no model. No per-epoch curves: the figure and the seed tables leave it out."""
    from tf_fastbat import pretrained

    shipped = [(name, checkpoint) for name, (cell_name, checkpoint) in PRETRAINED.items() if cell_name == cell.name]
    if not shipped or shipped[0][0] not in pretrained.names():
        return None
    name, checkpoint = shipped[0]
    card = pretrained.card(pretrained.SCHEME + name)
    accuracy, training = card["accuracy"], card["training"]
    figures = {"SA": accuracy["clean"]["accuracy"], "RA": accuracy["pgd_20_1"]["accuracy"], "attack": "pgd-20-1",
               "num_examples": accuracy["clean"]["num_examples"]}
    for key, entry in (("PGD50", "pgd_50_10"), ("AA", "autoattack_standard"), ("SA_kept", "clean_without_lossy")):
        if entry in accuracy:
            figures[key] = accuracy[entry]["accuracy"]
            figures[f"{key}_examples"] = accuracy[entry]["num_examples"]
    out = {"seed": cell.seed, "seconds_per_epoch": training.get("seconds_per_epoch"), "epochs": training["epochs"],
           "best_epoch": training["best_epoch"], "command": training["command"], "source": SHIPPED_SOURCE.format(name),
           checkpoint: figures}
    if training["best_epoch"] == training["epochs"]:
        out["last" if checkpoint == "best" else "best"] = dict(figures)
    return out



def table1(summaries: Dict[str, Dict], parts: Sequence[Part], checkpoint: str) -> str:
    """Table 1's columns for one checkpoint of every cell (seed 0), beside the paper's figures where restated."""
    def percent(run: Dict, key: str) -> str:
        value = run.get(key)
        return "-" if value is None else f"{100 * value:.2f}"

    header = ["method", "ε", "SA", "SA without the 20 lossy", "RA-PGD-20", "RA-PGD-50-10", "RA-AA",
              "PGD-50-10 on AA's images", "paper SA", "paper RA-PGD-50-10", "paper RA-AA", "best epoch", "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for part in parts:
        for method in part.methods:
            run = summaries.get(part.cell_name(method, part.seeds[0]))
            if not run or checkpoint not in run:
                continue
            at = run[checkpoint]
            paper = PAPER_TABLE1.get((method, part.eps), {})
            marker = "†" if "source" in run else ""
            lines.append("| " + " | ".join([
                reproduce.label(method) + marker, f"{part.eps}/255", percent(at, "SA"), percent(at, "SA_kept"), percent(at, "RA"),
                percent(at, "PGD50"), percent(at, "AA"), percent(at, "PGD_on_AA"),
                *(f"{paper[k]:.2f}" if k in paper else "" for k in ("SA", "PGD50", "AA")),
                str(run["best_epoch"]), f"{run['seconds_per_epoch']:.0f}"]) + " |")
    sizes = sorted({f"SA and PGD-20 on {r[checkpoint]['num_examples']}, PGD-50-10 on {r[checkpoint].get('PGD50_examples', '-')}"
                    f", AutoAttack on {r[checkpoint].get('AA_examples', '-')} test images"
                    for r in summaries.values() if checkpoint in r})
    notes = sorted({f"† From {r['source']}." for r in summaries.values() if checkpoint in r and "source" in r})
    title = f"**{'Early-stopped (best)' if checkpoint == 'best' else 'Last'} models**"
    return "\n".join([f"{title} ({'; '.join(sizes) or 'no cell finished'})", "", *lines, ""]
                      + ([*notes, ""] if notes else []))


# ----------------------------------------------------------------------------------------------------------------
# The shipped model: the full grid's best Fast-BAT model at 8/255 as pretrained:cifar10_fast_bat_eps8.

PRETRAINED = {"cifar10_fast_bat_eps8": ("full_fast_bat_eps8_seed0", "best")}  # name -> (cell, checkpoint)
CANONICAL_DATASET = "cifar10"  # what the shared cifar10.npz is (shared/data/README.md): the card's dataset


def pretrained_card(name: str, cell: PoweredCell, output_dir: str, checkpoint: str, clean_first_500: float,
                    model_sha256: str) -> Dict:
    """The card of a shipped model (tf_fastbat.pretrained), from its run's records: config.json, report.json,
    extra_eval.json; the clean accuracy on the first 500 test images is measured by the caller."""
    run = cell.record(output_dir)
    config, report, extra = run.settings(), run.results(), run.extra().get(checkpoint, {})
    measured = report["checkpoints"][checkpoint]
    key = f"{cell.eps:g}/255"
    pgd = next(a for a in sorted(measured["robust_accuracy"]) if a.startswith("pgd-"))
    accuracy = {"eps_255": cell.eps,
                "clean": {"accuracy": measured["clean_accuracy"], "num_examples": measured["num_examples"]},
                "clean_first_500": {"accuracy": clean_first_500, "num_examples": 500},
                pgd.replace("-", "_"): {"accuracy": measured["robust_accuracy"][pgd][key],
                                        "num_examples": measured["num_examples"]}}
    if "pgd_50_10" in extra:
        accuracy["pgd_50_10"] = {"accuracy": extra["pgd_50_10"]["robust_accuracy"],
                                 "num_examples": extra["pgd_50_10"]["num_examples"]}
    if "autoattack" in extra:
        accuracy["autoattack_standard"] = {"accuracy": extra["autoattack"]["robust_accuracy"],
                                           "num_examples": extra["autoattack"]["num_examples"]}
    if "clean" in extra:
        accuracy["clean_without_lossy"] = {"accuracy": extra["clean"]["accuracy_without_excluded"],
                                           "num_examples": extra["clean"]["num_examples_without_excluded"]}
    settings = {k: v for k, v in config.items() if k not in ("workdir", "export_dir")}
    settings["dataset"] = CANONICAL_DATASET
    return {"name": name, "model_file": f"{name}.keras", "sha256": model_sha256,
            "summary": f"{reproduce.label(cell.method)} at eps {cell.eps}/255 on CIFAR-10 (45,000 training images), "
                       f"PreActResNet-18 at width {config['width_multiplier']:g}, {report['epochs']} epochs, the "
                       f"{'early-stopped' if checkpoint == 'best' else 'last'} model (epoch {report['best_epoch']})",
            "settings": settings,
            "training": {"command": " ".join(cell.command(output_dir, None)[1:]).replace(output_dir, "runs"),
                         "epochs": report["epochs"], "best_epoch": report["best_epoch"], "checkpoint": checkpoint,
                         "seconds_per_epoch": report.get("seconds_per_epoch"),
                         "machine": "2 CPU cores, no GPU, TensorFlow 2.21 with oneDNN, float32"},
            "accuracy": accuracy,
            "test_images": "CIFAR-10 test set in the official order; clean and PGD on all 10,000 (20 of them "
                           "JPEG-decoded in the shared copy), PGD-50-10 and AutoAttack on the first 1,000 and 500"}


def package_pretrained(output_dir: str, folder: str) -> List[str]:
    """Copies each PRETRAINED model from its run into `folder` (tf_fastbat/pretrained) with its card; paths."""
    import shutil

    import numpy as np

    from tf_fastbat import models, pretrained
    from tf_fastbat.checkpoints import write_json_atomic
    from tf_fastbat.data.test_split import test_arrays
    from tf_fastbat.evaluation import classifier_logits, predictions

    written = []
    cells = {c.name: c for c in part_cells(PARTS["full_eps8"]) + part_cells(PARTS["full_eps16"])}
    for name, (cell_name, checkpoint) in PRETRAINED.items():
        cell = cells[cell_name]
        run = cell.record(output_dir)
        source = run.checkpoint(checkpoint)
        if not run.finished():
            print(f"[powered] {name}: {cell_name} has not finished training, not packaged", flush=True)
            continue
        target = os.path.join(folder, f"{name}.keras")
        shutil.copyfile(source, target)
        x, y = test_arrays(run.settings()["dataset"], 500)
        clean = float(np.mean(predictions(classifier_logits(models.load(target)), x) == y))
        card = pretrained_card(name, cell, output_dir, checkpoint, clean, pretrained.sha256(target))
        write_json_atomic(card, os.path.join(folder, f"{name}.json"))
        written += [target, os.path.join(folder, f"{name}.json")]
        print(f"[powered] {name}: packaged {source} ({checkpoint}); clean accuracy on the first 500 test images "
              f"{clean:.2%}", flush=True)
    return written


def overfitting_figure(summaries: Dict[str, Dict], part: Part, path: str):
    """Per epoch and method: held-out PGD-10-1 RA (%), training accuracy (on the method's attacked training inputs:
    it jumps when FGSM's examples stop being adversarial) and gradient alignment, collapsed epochs marked."""
    from matplotlib.figure import Figure

    from tf_fastbat.plots import save_figure

    figure = Figure(figsize=(17, 4.5))
    robust_axis, train_axis, alignment_axis = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    for number, method in enumerate(part.methods):
        color = f"C{number % 10}"  # one colour per method, one line style per seed
        for seed, style in zip(part.seeds, ("-", "--", ":", "-.") * len(part.seeds)):
            run = summaries.get(part.cell_name(method, seed))
            if not run or not run["val_robust"]:
                continue
            label = reproduce.label(method) + (f" (seed {seed})" if len(part.seeds) > 1 else "")
            epochs = list(range(1, len(run["val_robust"]) + 1))
            line, = robust_axis.plot(epochs, [100 * v for v in run["val_robust"]], marker="o", ms=3, color=color,
                                     ls=style, label=label)
            alignment_axis.plot(epochs, run["alignment"], marker="o", ms=3, color=color, ls=style, label=label)
            train_axis.plot(epochs, [100 * v for v in run["train_accuracy"]], marker="o", ms=3, color=color, ls=style,
                            label=label)
            if run["collapse"]:
                robust_axis.plot(run["collapse"], [100 * run["val_robust"][e - 1] for e in run["collapse"]], ls="none",
                                 marker="X", ms=10, color=line.get_color(), label=f"{label}: collapse")
                alignment_axis.plot(run["collapse"], [run["alignment"][e - 1] for e in run["collapse"]], ls="none",
                                    marker="X", ms=10, color=line.get_color(), label=f"{label}: collapse")
    robust_axis.set(xlabel="epoch", ylabel="held-out RA, PGD-10-1 (%)", ylim=(0, None),
                    title=f"ε = {part.eps}/255: held-out robust accuracy (X: collapse)")
    train_axis.set(xlabel="epoch", ylabel="training accuracy (%)", ylim=(0, 100),
                   title="training accuracy on the attacked training inputs")
    alignment_axis.set(xlabel="epoch", ylabel="gradient alignment (cos)", ylim=(-0.05, 1.05),
                       title="gradient alignment (held-out images)")
    for axis in (robust_axis, train_axis, alignment_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return save_figure(figure, path)


def report(cells: Sequence[PoweredCell], output_dir: str, parts: Sequence[Part], results_dir: str,
           figures_dir: str, stem: str = "powered") -> str:
    """Tables to <results_dir>/<stem>.{md,json}, one figure per part to <figures_dir>/<stem>_co_<prefix>eps<E>.png."""
    import json

    summaries = {c.name: s for c in cells if (s := summary(c, output_dir)) is not None}
    title = "Full CIFAR-10 grid" if stem == FULL_STEM else "Powered grid"
    shipped = {c.name: s for c in cells if c.name not in summaries and (s := shipped_summary(c)) is not None}
    tables = ([table1({**summaries, **shipped}, parts, c) for c in reproduce.CHECKPOINTS] if stem == FULL_STEM
              else [])
    text = "\n".join([f"## {title}", ""] + tables + [powered_table(summaries, part) for part in parts])
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{stem}.md"), "w") as out:
        out.write(text)
    with open(os.path.join(results_dir, f"{stem}.json"), "w") as out:
        json.dump({**summaries, **shipped}, out, indent=1)
    for part in parts:
        path = os.path.join(figures_dir, f"powered_co_{part.prefix}eps{part.eps}.png")
        overfitting_figure(summaries, part, path)
        print(f"[powered] wrote {path}", flush=True)
    return text


ARCHIVED_RECORDS = ("command", "config", "training_log", "report", "report_table", "extra_evaluation", "best_state")
ARCHIVED_FIGURES = ("training_curves", "ra_vs_eps")


def files_to_archive(run, measured: Sequence[str]) -> List[str]:
    """The files of `run` (a record.Workdir) that let every later stage go on from a copy on another machine: its
    records always (never train.log, the progress bars); `checkpoints/*.keras` while a stage still needs them
    (training unfinished, or `measured` checkpoints without AutoAttack in extra_eval.json); the newest backup while
    training (exact resume reads only that one)."""
    from tf_fastbat import backup

    keep = [getattr(run, name) for name in ARCHIVED_RECORDS] + [run.figure(name) for name in ARCHIVED_FIGURES]
    extra = run.extra()
    if not run.finished() or any("autoattack" not in extra.get(c, {}) for c in measured):
        keep += [run.checkpoint(c) for c in reproduce.CHECKPOINTS]
    if not run.finished():  # the one resume would read: tf_fastbat.backup's rule (a corrupt newest one is skipped)
        newest = backup.newest(run.backups, warn=lambda message: print(f"[powered] {message}", flush=True))
        keep += [newest.path] if newest else []
    return [path for path in keep if os.path.exists(path)]


def archive(cells: Sequence[PoweredCell], output_dir: str, archive_dir: str, measured: Sequence[str]) -> List[str]:
    """Replaces <archive_dir>/<cell> by the cell's `files_to_archive` (in a repository, the machine that trains a
    grid may not be kept: the archive is what the next one copies back into --output_dir); the cells archived."""
    import shutil

    archived = []
    for cell in cells:
        run = cell.record(output_dir)
        if not run.is_run():
            continue
        target, staging = os.path.join(archive_dir, cell.name), os.path.join(archive_dir, f".{cell.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        for path in files_to_archive(run, measured):
            copy = os.path.join(staging, os.path.relpath(path, run.root))
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, copy)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        archived.append(cell.name)
        print(f"[powered] archived {cell.name} in {target}", flush=True)
    return archived


# ----------------------------------------------------------------------------------------------------------------

def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=[*PARTS, *GROUPS],
                        help="Which part to train and report: all is the small-data grid, full the full CIFAR-10.")
    parser.add_argument("--stage", default="all", choices=["train", "autoattack", "report", "pretrained", "archive", "all"],
                        help="all: train, then report; autoattack (never part of all): AutoAttack and PGD-50-10 on "
                        "the first test images of each trained cell's --checkpoints; pretrained (never part of all): "
                        "copy the full grid's shipped models (PRETRAINED) into --pretrained_dir with their cards; archive (never "
                        "part of all): each cell's records, and what a later stage still needs, into --archive_dir.")
    parser.add_argument("--aa_examples", type=int, default=None, help="Test images AutoAttack runs on in the "
                        "autoattack stage (default: 200; 500 for --part=full).")
    parser.add_argument("--pgd_examples", type=int, default=None, help="Test images PGD-50-10 runs on in the "
                        "autoattack stage (default: AutoAttack's; 1,000 for --part=full).")
    parser.add_argument("--checkpoints", default=None, help="Checkpoints the autoattack stage measures (default: "
                        "last; best,last for --part=full).")
    parser.add_argument("--train_flags", default="", help="Extra training flags for every cell, comma-separated "
                        "(quick checks, e.g. --steps_per_epoch=2; use another --output_dir).")
    parser.add_argument("--only", default="", help="Comma-separated cell names (e.g. fast_at_eps16_seed0).")
    parser.add_argument("--epochs", type=int, default=None, help="Override every part's epochs (quick checks; use "
                        "another --output_dir, since a cell's epochs are part of it).")
    parser.add_argument("--output_dir", default=None, help="Default: runs/powered, or runs/full_cifar10 for the "
                        "full parts.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--figures_dir", default="results")
    parser.add_argument("--pretrained_dir", default=os.path.join("tf_fastbat", "pretrained"),
                        help="Where --stage=pretrained writes the shipped models and their cards.")
    parser.add_argument("--archive_dir", default=None, help="Where --stage=archive keeps each cell's records "
                        "(default: benchmarks/results/<full_cifar10|powered>_runs).")
    args = parser.parse_args(argv)
    args.parts = [PARTS[name] for name in GROUPS.get(args.part, (args.part,))]
    full = [part.prefix == "full_" for part in args.parts]
    if any(full) and not all(full):
        parser.error(f"--part={args.part}: mixes full and small-data parts")
    args.stem = FULL_STEM if all(full) else "powered"
    args.output_dir = args.output_dir or os.path.join("runs", args.stem)
    args.archive_dir = args.archive_dir or os.path.join(args.results_dir, f"{args.stem}_runs")
    full_defaults = {"aa_examples": 500, "pgd_examples": 1000, "checkpoints": "best,last"}
    small_defaults = {"aa_examples": 200, "pgd_examples": None, "checkpoints": "last"}
    for name, value in (full_defaults if args.stem == FULL_STEM else small_defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.checkpoints = tuple(c for c in args.checkpoints.split(",") if c)
    if set(args.checkpoints) - set(reproduce.CHECKPOINTS) or not args.checkpoints:
        parser.error(f"--checkpoints: choose from {','.join(reproduce.CHECKPOINTS)}")
    if args.pgd_examples is not None and args.pgd_examples < 1:
        parser.error("--pgd_examples must be positive")
    extra = [f for f in args.train_flags.split(",") if f]
    if any(not f.startswith("--") or "=" not in f for f in extra):
        parser.error(f"--train_flags={args.train_flags}: give --name=value pairs separated by commas")
    args.cells = [c for part in args.parts for c in part_cells(part, args.epochs)]
    for cell in args.cells:
        cell.extra.update(dict(f[2:].split("=", 1) for f in args.train_flags.split(",") if f))
    args.only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(args.only) - {c.name for c in args.cells})
    if unknown:
        parser.error(f"--only: no cell {', '.join(unknown)} in --part={args.part}")
    if args.only:
        args.cells = [c for c in args.cells if c.name in args.only]
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be positive")
    if args.aa_examples < 1:
        parser.error("--aa_examples must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    os.environ.setdefault(runtime.ONEDNN_VARIABLE, "1")  # width 0.25 has no hazardous shape (runtime.onednn_hazards);
    # the grid's seconds per epoch were measured with oneDNN (BUILD_NOTES.md, "CPU kernels")
    os.chdir(reproduce.ROOT)  # the flagfile's dataset path is relative to the repository
    start = time.perf_counter()
    if args.stage in ("train", "all"):
        reproduce.train(known_cells(args.cells, method_names()), args.output_dir, None)
        print(f"[powered] trained; {time.perf_counter() - start:.0f} s", flush=True)
    if args.stage == "autoattack":  # resumable: a checkpoint's finished measurement is kept and skipped
        excluded = lossy_test_indices() if args.stem == FULL_STEM else ()
        evaluate = reproduce.Evaluator(args.aa_examples, sweep_examples=1,  # no sweep: powered cells have extras
                                       pgd_examples=args.pgd_examples, excluded=excluded)
        for cell in args.cells:
            evaluate(cell, args.output_dir, checkpoints=args.checkpoints)
        print(f"[powered] AutoAttack done; {time.perf_counter() - start:.0f} s", flush=True)
    if args.stage == "pretrained":  # never part of all: it writes into the package
        package_pretrained(args.output_dir, args.pretrained_dir)
    if args.stage == "archive":  # never part of all: it writes into the repository
        archive(args.cells, args.output_dir, args.archive_dir, args.checkpoints)
    if args.stage in ("report", "all"):
        print(report(args.cells, args.output_dir, args.parts, args.results_dir, args.figures_dir, args.stem))


if __name__ == "__main__":
    main()
