"""The paper's claims at CPU scale (issue 5): the Table 1 grid, its ablations, extra evaluations and RESULTS tables.

Stages, each resumable (a finished cell is skipped; a killed training run resumes from its backup):
  grid       methods x training eps x seeds, one `python -m tf_fastbat.train` per cell (flags/reproduce/base.cfg)
  ablations  Fast-BAT at eps 8/255, seed 0: lambda (Table A1), linearization point (A3), Hessian-aware implicit
             gradient (A4), activation (A5); the grid's Fast-BAT cell is the default of each
  evaluate   per cell and checkpoint (best = early-stopped, last): AutoAttack (standard) on the first
             --aa_examples test images; for fast_at and fast_bat a PGD-20-1 sweep over test eps 2..16 (Fig. 1)
  report     tables (mean +- std over seeds) to benchmarks/results/reproduce.{md,json}, figures to results/

    .venv/bin/python -m benchmarks.reproduce --stage=all > runs/reproduce.log 2>&1 &
    .venv/bin/python -m benchmarks.reproduce --stage=grid --methods=fast_bat --eps=16 --seeds=1   # one cell

A cell's training command is printed before it runs (and kept in its workdir's command.txt).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from benchmarks import registry
from tf_fastbat.checkpoints import write_json_atomic  # no TensorFlow import
from tf_fastbat.record import Workdir
from tf_fastbat.runtime import default_cpu_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE_FLAGFILE = os.path.join("flags", "reproduce", "base.cfg")
METHODS = ("fast_at", "fast_at_ga", "pgd", "fast_bat", "n_fgsm")  # the grid's choice among the registered methods
ABLATIONS = {  # name: (table, extra train flags); Fast-BAT, eps 8/255, seed 0
    "lambda_1": ("A1", {"lmbda": 1}),
    "lambda_100": ("A1", {"lmbda": 100}),
    "linearization_uniform": ("A3", {"linearization": "uniform"}),
    "linearization_pgd_sign": ("A3", {"linearization": "pgd_sign"}),
    "hessian_aware": ("A4", {"implicit_gradient": "hessian_aware", "cg_steps": 5}),
    "activation_softplus": ("A5", {"activation": "softplus"}),
    "activation_swish": ("A5", {"activation": "swish"}),
}
ABLATION_DEFAULTS = {"A1": "lambda = 10", "A3": "pgd_nosign (official)", "A4": "Hessian-free (eq. 11)",
                     "A5": "ReLU"}
SWEEP_EPS = (0, 2, 4, 6, 8, 10, 12, 14, 16)  # eps 0: the clean accuracy on the sweep's images


def flagfile_value(path: str, name: str) -> str:
    """The value --`name` has in the flagfile at `path` (relative to the repository root)."""
    with open(os.path.join(ROOT, path)) as lines:
        values = [line.strip().split("=", 1)[1] for line in lines if line.strip().startswith(f"--{name}=")]
    if not values:
        raise ValueError(f"{path}: no --{name}")
    return values[-1]


def label(method: str) -> str:
    """A method's label in tables and figures (the registry's; PGD-AT with the grid's steps, PGD-2-AT)."""
    if method == "pgd":
        return f"PGD-{flagfile_value(BASE_FLAGFILE, 'attack_steps')}-AT"
    return registry.label(method)
SWEEP_METHODS = ("fast_at", "fast_bat")
CHECKPOINTS = ("best", "last")
PGD_KEY = "pgd-50-10"


class Cell:
    """One training run: a method at a training eps and seed, with optional extra flags."""

    def __init__(self, name: str, method: str, eps: int, seed: int, extra: Optional[Dict] = None):
        self.name, self.method, self.eps, self.seed, self.extra = name, method, eps, seed, dict(extra or {})

    def workdir(self, output_dir: str) -> str:
        return os.path.join(output_dir, self.name)

    def record(self, output_dir: str) -> Workdir:
        """The cell's run record (tf_fastbat.record)."""
        return Workdir(self.workdir(output_dir))

    def command(self, output_dir: str, epochs: Optional[int]) -> List[str]:
        flags = {"method": self.method, "eps": self.eps, "seed": self.seed, "workdir": self.workdir(output_dir),
                 **({"epochs": epochs} if epochs else {}), **self.extra}
        return [sys.executable, "-m", "tf_fastbat.train", f"--flagfile={BASE_FLAGFILE}",
                *(f"--{k}={v}" for k, v in flags.items())]


def grid_cells(methods: Sequence[str], eps_list: Sequence[int], seeds: Sequence[int]) -> List[Cell]:
    return [Cell(f"{m}_eps{e}_seed{s}", m, e, s) for e in eps_list for s in seeds for m in methods]


def ablation_cells(names: Iterable[str] = ABLATIONS) -> List[Cell]:
    return [Cell(f"ablation_{n}", "fast_bat", 8, 0, ABLATIONS[n][1]) for n in names]


# ----------------------------------------------------------------------------------------------------------------
# Training.

def train(cells: Sequence[Cell], output_dir: str, epochs: Optional[int]) -> None:
    """Run each unfinished cell's training command, its output in <workdir>/train.log."""
    for cell in cells:
        run = cell.record(output_dir)
        if run.finished():
            print(f"[reproduce] {cell.name}: done, skipped", flush=True)
            continue
        os.makedirs(run.root, exist_ok=True)
        command = cell.command(output_dir, epochs)
        with open(run.command, "w") as out:
            out.write(" ".join(command[1:]) + "\n")
        print(f"[reproduce] {cell.name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        with open(run.output, "a") as log:
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        status = "finished" if code == 0 else f"FAILED (exit {code}, see {run.output})"
        print(f"[reproduce] {cell.name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Extra evaluations (AutoAttack, the eps sweep), in this process.

def follow(cells: Sequence[Cell], output_dir: str, evaluate: "Evaluator", poll_seconds: float = 30.0) -> None:
    """Evaluate cells as their training finishes (best checkpoints first, then last), until all are evaluated."""
    while True:
        trained = [c for c in cells if c.record(output_dir).finished()]
        for cell in trained:
            evaluate(cell, output_dir, ("best",))
        if len(trained) == len(cells):
            break
        time.sleep(poll_seconds)
    for cell in cells:
        evaluate(cell, output_dir, ("last",))


def measure(title: str, attack, logits_fn, x, y, eps: float):
    """One attack run with progress lines (time spent, ETA) and a closing line (robust accuracy, seconds)."""
    import numpy as np

    from tf_fastbat.progress import ProgressBars

    start = time.perf_counter()
    outcome = attack.attack(logits_fn, x, y, eps, ProgressBars(f"[reproduce] {title}"))
    print(f"[reproduce] {title}: robust accuracy {np.mean(outcome.robust):.2%} ({time.perf_counter() - start:.1f} s)",
          flush=True)
    return outcome


class Evaluator:
    """AutoAttack and the Fig. 1 sweep, one classifier per architecture whose weights are swapped per checkpoint.

    The attacks' traced functions are cached per logits function, so reusing one classifier (and one logits
    function) across checkpoints traces each attack once instead of once per checkpoint.
    """

    def __init__(self, aa_examples: int, sweep_examples: int, pgd_examples: Optional[int] = None,
                 excluded: Sequence[int] = ()):
        """AutoAttack on the first `aa_examples` test images; PGD-50-10 on the first `pgd_examples` (default: the
        same images), its accuracy on AutoAttack's images kept apart; `excluded` test indices (e.g. the lossy ones
        of cifar10.npz): the clean accuracy is also measured without them."""
        self.aa_examples, self.sweep_examples = aa_examples, sweep_examples
        self.pgd_examples, self.excluded = pgd_examples, tuple(excluded)
        self._classifiers: Dict[Tuple, Tuple] = {}
        self._test_sets: Dict[str, Tuple] = {}

    def _test_set(self, dataset: str) -> Tuple:
        """The dataset's test images in [0, 1] and labels, loaded once per dataset."""
        from tf_fastbat.data.test_split import test_arrays

        if dataset not in self._test_sets:
            self._test_sets[dataset] = test_arrays(dataset)
        return self._test_sets[dataset]

    def _logits_fn(self, config: Dict, checkpoint_path: str):
        from tf_fastbat import models
        from tf_fastbat.evaluation import classifier_logits

        loaded = models.load(checkpoint_path)
        key = (config.get("architecture"), config.get("model"), config["activation"], config["width_multiplier"],
               config["dataset"])
        if key not in self._classifiers:
            self._classifiers[key] = (loaded, classifier_logits(loaded))
        else:
            self._classifiers[key][0].set_weights(loaded.get_weights())
        return self._classifiers[key][1]

    def _pgd_on_aa_subset(self, entry: Dict, logits_fn, x, y, cell: Cell, checkpoint: str) -> None:
        """PGD-50-10 on AutoAttack's images, so that the two are compared on the same examples (and, with
        `pgd_examples`, on that many first test images, of which AutoAttack's are the first)."""
        import numpy as np

        from tf_fastbat.attacks.pgd import PGDAttack

        n = entry["autoattack"]["num_examples"]
        total = max(n, self.pgd_examples or n)
        pgd = PGDAttack(50, 10, seed=cell.seed)
        title = f"{cell.name} {checkpoint}: PGD-50-10 at eps {cell.eps}/255 on the first {total} images"
        robust = measure(title, pgd, logits_fn, x[:total], y[:total], cell.eps / 255.0).robust
        entry["pgd_50_10_on_aa_subset"] = float(np.mean(robust[:n]))
        if self.pgd_examples:
            entry["pgd_50_10"] = {"robust_accuracy": float(np.mean(robust)), "num_examples": int(total)}

    def _clean_without(self, entry: Dict, logits_fn, x, y) -> None:
        """Clean accuracy on every test image and on those not in `excluded`."""
        import numpy as np

        from tf_fastbat.evaluation import predictions

        correct = predictions(logits_fn, x) == y
        keep = np.ones(len(y), bool)
        keep[[i for i in self.excluded if i < len(y)]] = False
        entry["clean"] = {"accuracy": float(np.mean(correct)), "num_examples": int(len(y)),
                          "accuracy_without_excluded": float(np.mean(correct[keep])),
                          "num_examples_without_excluded": int(keep.sum())}

    def __call__(self, cell: Cell, output_dir: str, checkpoints: Sequence[str] = CHECKPOINTS) -> None:
        """Fills <workdir>/extra_eval.json for `checkpoints` (atomically, one checkpoint at a time)."""
        import numpy as np

        from tf_fastbat.attacks.autoattack.attack import AutoAttack
        from tf_fastbat.attacks.pgd import PGDAttack

        run = cell.record(output_dir)
        report = run.results()
        if report is None:
            print(f"[reproduce] {cell.name}: not trained, not evaluated", flush=True)
            return
        path = run.extra_evaluation
        extra = run.extra()
        config = run.settings()
        x, y = self._test_set(config["dataset"])
        for checkpoint in checkpoints:
            if checkpoint == "last" and report["best_epoch"] == report["epochs"] and "best" in extra:
                extra["last"] = dict(extra["best"])  # the early-stopped model is the last one
                write_json_atomic(extra, path)
                continue
            entry = extra.setdefault(checkpoint, {})
            want_aa = bool(self.aa_examples) and "autoattack" not in entry
            want_sweep = cell.method in SWEEP_METHODS and not cell.extra and "pgd_20_1_sweep" not in entry
            want_subset = "autoattack" in entry and ("pgd_50_10_on_aa_subset" not in entry or (
                bool(self.pgd_examples) and "pgd_50_10" not in entry))
            want_clean = bool(self.excluded) and "clean" not in entry
            if not (want_aa or want_sweep or want_subset or want_clean):
                continue  # what this run measures is there already (a partial entry is completed, not redone)
            logits_fn = self._logits_fn(config, run.checkpoint(checkpoint))
            start = time.perf_counter()
            if want_aa:
                n = self.aa_examples
                title = f"{cell.name} {checkpoint}: AutoAttack at eps {cell.eps}/255 on {n} images"
                aa = measure(title, AutoAttack(seed=cell.seed), logits_fn, x[:n], y[:n], cell.eps / 255.0).details
                entry["autoattack"] = {"robust_accuracy": aa["robust_accuracy"],
                                       "clean_accuracy": aa["clean_accuracy"], "num_examples": n,
                                       "seconds": time.perf_counter() - start}
            if want_clean:
                self._clean_without(entry, logits_fn, x, y)
            if want_aa or want_subset:
                self._pgd_on_aa_subset(entry, logits_fn, x, y, cell, checkpoint)
            if want_sweep:
                pgd = PGDAttack(20, 1, seed=cell.seed)
                xs, ys = x[:self.sweep_examples], y[:self.sweep_examples]
                entry["pgd_20_1_sweep"] = {str(e): float(np.mean(measure(
                    f"{cell.name} {checkpoint}: PGD-20-1 at eps {e}/255 on {len(xs)} images", pgd, logits_fn, xs, ys,
                    e / 255.0).robust)) for e in SWEEP_EPS}
                entry["sweep_examples"] = self.sweep_examples
            write_json_atomic(extra, path)
            print(f"[reproduce] {cell.name} {checkpoint}: evaluated in {time.perf_counter() - start:.0f} s "
                  f"({', '.join(entry)})", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# The report: tables and figures.

def training_log(workdir: str) -> List[Dict[str, float]]:
    path = Workdir(workdir).training_log
    if not os.path.exists(path):
        return []
    with open(path) as rows:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(rows)]


def cell_summary(cell: Cell, output_dir: str) -> Optional[Dict]:
    """SA, RA-PGD-50-10, RA-AA of best and last, seconds per epoch, best epoch, per-epoch logs; None if untrained."""
    run = cell.record(output_dir)
    report = run.results()
    if report is None:
        return None
    extra = run.extra()
    if "last" not in extra and "best" in extra and report["best_epoch"] == report["epochs"]:
        extra["last"] = extra["best"]  # the same weights
    key = f"{cell.eps:g}/255"
    summary = {"seconds_per_epoch": report["seconds_per_epoch"], "best_epoch": report["best_epoch"],
               "epochs": report["epochs"], "log": training_log(run.root), "command": " ".join(cell.command(
                   output_dir, None)[1:])}
    for checkpoint in CHECKPOINTS:
        result = report["checkpoints"].get(checkpoint)
        if result is None:
            continue
        summary[checkpoint] = {"SA": result["clean_accuracy"], "RA_PGD": result["robust_accuracy"][PGD_KEY][key],
                               "num_examples": result["num_examples"]}
        if "autoattack" in extra.get(checkpoint, {}):
            summary[checkpoint]["RA_AA"] = extra[checkpoint]["autoattack"]["robust_accuracy"]
            summary[checkpoint]["RA_PGD_AA_subset"] = extra[checkpoint].get("pgd_50_10_on_aa_subset")
            summary[checkpoint]["AA_examples"] = extra[checkpoint]["autoattack"]["num_examples"]
        if checkpoint in extra:
            if "pgd_20_1_sweep" in extra[checkpoint]:
                summary[checkpoint]["sweep"] = extra[checkpoint]["pgd_20_1_sweep"]
    return summary


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    if mean != mean:
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def aa_cell(runs: Sequence[Dict], checkpoint: str) -> str:
    """RA-AA on its subset, with PGD-50-10 on the same images in brackets (AA must not exceed it)."""
    aa = [r[checkpoint].get("RA_AA") for r in runs if r[checkpoint].get("RA_AA") is not None]
    if not aa:
        return "-"
    pgd = [r[checkpoint].get("RA_PGD_AA_subset") for r in runs if r[checkpoint].get("RA_AA") is not None]
    seeds = "" if len(aa) == len(runs) else f" ({len(aa)} seed{'s' if len(aa) > 1 else ''})"
    return f"{fmt(aa)} [{fmt(pgd)}]{seeds}"


def grid_table(summaries: Dict[str, Dict], methods: Sequence[str], eps_list: Sequence[int],
               seeds: Sequence[int]) -> str:
    lines = []
    for eps in eps_list:
        lines += [f"**ε = {eps}/255** (train = test)", "",
                  "| method | SA (ES) | RA-PGD-50-10 (ES) | RA-AA [PGD] (ES) | SA (last) | RA-PGD-50-10 (last) | "
                  "RA-AA [PGD] (last) | best epoch | s/epoch | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            runs = [summaries.get(f"{method}_eps{eps}_seed{s}") for s in seeds]
            runs = [r for r in runs if r and "best" in r and "last" in r]
            if not runs:
                continue
            cells = [fmt([r[c].get(k) for r in runs]) for c in CHECKPOINTS for k in ("SA", "RA_PGD")]
            cells.insert(2, aa_cell(runs, "best"))
            cells.append(aa_cell(runs, "last"))
            epochs = ", ".join(str(r["best_epoch"]) for r in runs)
            lines.append(f"| {label(method)} | " + " | ".join(cells) +
                         f" | {epochs} | {fmt([r['seconds_per_epoch'] for r in runs], 1.0, 1)} | {len(runs)} |")
        lines.append("")
    return "\n".join(lines)


def ablation_table(summaries: Dict[str, Dict], seeds: Sequence[int]) -> str:
    lines = ["| table | variant | SA (ES) | RA-PGD-50-10 (ES) | RA-AA [PGD] (ES) | SA (last) | RA-PGD-50-10 (last) | "
             "s/epoch |", "|---|---|---|---|---|---|---|---|"]
    default = summaries.get(f"fast_bat_eps8_seed{seeds[0]}")
    for table in ("A1", "A3", "A4", "A5"):
        rows = [(ABLATION_DEFAULTS[table] + " (grid cell)", default)]
        rows += [(name, summaries.get(f"ablation_{name}")) for name, (t, _) in ABLATIONS.items() if t == table]
        for ablation, run in rows:
            if not run or "best" not in run:
                continue
            values = [fmt([run["best"].get(k)]).split(" ±")[0] for k in ("SA", "RA_PGD")]
            values.append(aa_cell([run], "best"))
            values += [fmt([run["last"].get(k)]).split(" ±")[0] for k in ("SA", "RA_PGD")]
            lines.append(f"| {table} | {ablation} | " + " | ".join(values) + f" | {run['seconds_per_epoch']:.1f} |")
    return "\n".join(lines)


def sweep_curve(entry: Dict) -> List[float]:
    """A checkpoint's PGD-20-1 RA at each SWEEP_EPS; eps 0 from its SA where an older sweep lacks it."""
    sweep = entry["sweep"]
    return [sweep.get(str(e), entry["SA"] if e == 0 else float("nan")) for e in SWEEP_EPS]


def figures(summaries: Dict[str, Dict], eps_list: Sequence[int], seeds: Sequence[int], methods: Sequence[str],
            folder: str) -> List[str]:
    """Fig. 1 (RA against test eps), Fig. 2 (gradient alignment per epoch), held-out RA per epoch; their paths."""
    import numpy as np
    from matplotlib.figure import Figure

    from tf_fastbat.plots import save_figure

    os.makedirs(folder, exist_ok=True)
    written = []
    figure = Figure(figsize=(5 * len(eps_list), 4))
    for i, train_eps in enumerate(eps_list):
        axis = figure.add_subplot(1, len(eps_list), i + 1)
        for color, method in zip(("tab:blue", "tab:red"), SWEEP_METHODS):
            for checkpoint, style in (("best", "-"), ("last", "--")):
                runs = [summaries.get(f"{method}_eps{train_eps}_seed{s}") for s in seeds]
                curves = [sweep_curve(r[checkpoint]) for r in runs if r and "sweep" in r.get(checkpoint, {})]
                if curves:
                    axis.errorbar(SWEEP_EPS, 100 * np.mean(curves, 0), yerr=100 * np.std(curves, 0), ls=style,
                                  marker="o", capsize=2, color=color, label=f"{label(method)} ({'ES' if checkpoint == 'best' else 'last'})")
        axis.set(xlabel="test ε (1/255); ε 0 is the clean accuracy", ylabel="RA, PGD-20-1 (%)",
                 title=f"trained at ε = {train_eps}/255", ylim=(0, 100))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    written.append(os.path.join(folder, "fig1_ra_vs_eps.png"))
    save_figure(figure, written[-1])
    for key, name, ylabel in (("gradient_alignment", "fig2_gradient_alignment.png", "gradient alignment (cos)"),
                              ("val_robust_accuracy", "held_out_ra_per_epoch.png", "held-out RA, PGD-10-1 (%)")):
        figure = Figure(figsize=(5 * len(eps_list), 4))
        for i, eps in enumerate(eps_list):
            axis = figure.add_subplot(1, len(eps_list), i + 1)
            for method in methods:
                logs = [summaries[n]["log"] for n in (f"{method}_eps{eps}_seed{s}" for s in seeds)
                        if n in summaries and summaries[n]["log"]]
                if not logs:
                    continue
                length = min(len(log) for log in logs)
                values = np.array([[row.get(key, np.nan) for row in log[:length]] for log in logs])
                scale = 100.0 if key == "val_robust_accuracy" else 1.0
                mean = scale * np.nanmean(values, 0)
                line, = axis.plot(np.arange(1, length + 1), mean, marker="o", label=label(method))
                if key == "val_robust_accuracy" and np.isfinite(mean).any():
                    best = int(np.nanargmax(mean)) + 1  # early stopping's pick on the mean curve
                    axis.axvline(best, color=line.get_color(), ls="--", lw=1, label=f"{label(method)} best: {best}")
                    axis.set_ylim(0, 100)
            axis.set(xlabel="epoch", ylabel=ylabel, title=f"ε = {eps}/255 (mean over seeds)")
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=8)
        written.append(os.path.join(folder, name))
        save_figure(figure, written[-1])
    return written


def report(cells: Sequence[Cell], output_dir: str, methods, eps_list, seeds, results_dir: str,
           figures_dir: str) -> str:
    summaries = {c.name: s for c in cells if (s := cell_summary(c, output_dir)) is not None}
    text = "\n".join(["## Grid", "", grid_table(summaries, methods, eps_list, seeds), "## Ablations (ε = 8/255, "
                      "seed 0)", "", ablation_table(summaries, seeds), ""])
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "reproduce.md"), "w") as out:
        out.write(text)
    with open(os.path.join(results_dir, "reproduce.json"), "w") as out:
        json.dump(summaries, out, indent=1)
    for path in figures(summaries, eps_list, seeds, methods, figures_dir):
        print(f"[reproduce] wrote {path}", flush=True)
    return text


# ----------------------------------------------------------------------------------------------------------------

def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="all", choices=["grid", "ablations", "evaluate", "report", "all"])
    parser.add_argument("--follow", action="store_true",
                        help="With --stage=evaluate: evaluate cells as a concurrent training stage finishes them.")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--eps", default="8,16", help="Training (= test) eps list, 1/255 units.")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--ablations", default=",".join(ABLATIONS))
    parser.add_argument("--epochs", type=int, default=None, help="Override the flagfile's epochs (quick checks).")
    parser.add_argument("--output_dir", default=os.path.join("runs", "reproduce"))
    parser.add_argument("--aa_examples", type=int, default=64, help="Test images AutoAttack runs on (0: none, only the eps sweep).")
    parser.add_argument("--sweep_examples", type=int, default=200, help="Test images of the Fig. 1 eps sweep.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--figures_dir", default="results")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(registry.method_names()))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(registry.method_names())}")
    args.ablations = [a for a in args.ablations.split(",") if a]
    unknown = sorted(set(args.ablations) - set(ABLATIONS))
    if unknown:
        parser.error(f"--ablations: unknown {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")
    try:
        args.eps = [int(e) for e in args.eps.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as error:
        parser.error(f"--eps and --seeds take comma-separated integers: {error}")
    if args.aa_examples < 0 or args.sweep_examples < 1:
        parser.error("--aa_examples must be >= 0 (0: no AutoAttack) and --sweep_examples positive")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    default_cpu_kernels()
    os.chdir(ROOT)
    grid = grid_cells(args.methods, args.eps, args.seeds)
    ablations = ablation_cells(args.ablations)
    evaluate = Evaluator(args.aa_examples, args.sweep_examples)
    start = time.perf_counter()
    if args.stage == "evaluate" and args.follow:
        follow(grid + ablations, args.output_dir, evaluate)
        print(f"[reproduce] evaluated; {time.perf_counter() - start:.0f} s", flush=True)
        return
    for group, cells in (("grid", grid), ("ablations", ablations)):
        if args.stage in (group, "all"):
            train(cells, args.output_dir, args.epochs)
        if args.stage in ("evaluate", "all"):
            for cell in cells:
                evaluate(cell, args.output_dir)
        print(f"[reproduce] {group}: {time.perf_counter() - start:.0f} s since the start", flush=True)
    if args.stage in ("report", "all"):
        print(report(grid + ablations, args.output_dir, args.methods, args.eps, args.seeds, args.results_dir,
                     args.figures_dir))
    print(f"[reproduce] stage {args.stage} took {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
