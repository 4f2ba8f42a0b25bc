"""PNG figures of an evaluation: RA against test eps (Fig. 1), AutoAttack attack by attack, training curves with
the held-out RA and best epoch, the loss landscape (Fig. A1).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend
switch) and returned after saving, so that callers and tests can read back what was drawn.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tf_fastbat.report import parse_eps_key

HELD_OUT_TITLE = "held-out RA (early stopping)"
TRAINING_PANELS = (
    ("loss", ("loss",), "training loss"),
    ("accuracy (%)", ("accuracy", "val_clean_accuracy", "val_robust_accuracy"), "accuracy"),
    ("robust accuracy (%)", ("val_robust_accuracy",), HELD_OUT_TITLE),
    ("learning rate", ("learning_rate",), "learning rate"),
    ("seconds", ("epoch_seconds",), "epoch time"),
    ("cosine", ("gradient_alignment",), "gradient alignment"),
)
PERCENT_COLUMNS = ("accuracy", "val_clean_accuracy", "val_robust_accuracy")


def save_figure(figure: Figure, path: str) -> Figure:
    """Renders `figure` on the Agg canvas into the PNG `path` (folders created); returns the figure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure


def default_attack(robust_accuracy: Dict[str, Dict[str, float]]) -> Optional[str]:
    """The attack a model's curve shows when none is named: its PGD-K-R entry, else its first attack."""
    names = list(robust_accuracy)
    pgd = [n for n in names if n.startswith("pgd-")]
    return (pgd or names or [None])[0]


def eps_curve(report: Dict, attack: str) -> List[tuple]:
    """(eps in 1/255, RA in %) of `attack` in a report, sorted by eps, starting at eps = 0 with the clean accuracy
    (RA at radius 0 is SA by definition; a measured 0/255 entry is kept as measured)."""
    points = {parse_eps_key(k): 100.0 * v for k, v in report["robust_accuracy"][attack].items()}
    if "clean_accuracy" in report:
        points.setdefault(0.0, 100.0 * report["clean_accuracy"])
    return sorted(points.items())


def robust_accuracy_vs_eps(reports: Dict[str, Dict], path: str, attack: Optional[str] = None) -> Figure:
    """RA (%) against test eps, from eps = 0 (SA): one line per model (name -> report JSON) and attack, or only
    `attack` where a model has it (its PGD where it does not). The y axis spans 0-100%."""
    figure = Figure(figsize=(6, 4.2))
    axes = figure.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "P", "X")
    ticks = set()
    for number, (name, report) in enumerate(reports.items()):
        by_attack = report.get("robust_accuracy", {})
        chosen = [attack] if attack in by_attack else [default_attack(by_attack)] if attack else list(by_attack)
        for index, name_of_attack in enumerate(a for a in chosen if a is not None):
            points = eps_curve(report, name_of_attack)
            ticks.update(p[0] for p in points)
            axes.plot([p[0] for p in points], [p[1] for p in points], linestyle=styles[number % len(styles)],
                      marker=markers[index % len(markers)], label=f"{name}: {name_of_attack}")
    axes.set_xlabel("test eps (x/255); eps 0 is the clean accuracy")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(0, 100)
    if ticks:
        axes.set_xticks(sorted(ticks))
    axes.set_title("Robust accuracy against test eps")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    return save_figure(figure, path)


def autoattack_breakdown(details: Dict[str, Dict], path: str, title: str = "AutoAttack, attack by attack") -> Figure:
    """Per eps (report key -> AutoAttack details), bars of SA and the RA (%) left after each attack in turn
    (cumulative: the last bar is AutoAttack's RA), each bar labelled with its value."""
    keys = sorted(details, key=parse_eps_key)
    figure = Figure(figsize=(max(4.5, 4.2 * len(keys)), 3.8))
    for number, key in enumerate(keys):
        axes = figure.add_subplot(1, max(len(keys), 1), number + 1)
        per_attack = details[key].get("per_attack_robust_accuracy", {})
        names = (["clean"] if "clean_accuracy" in details[key] else []) + [f"after {a}" for a in per_attack]
        heights = ([100.0 * details[key]["clean_accuracy"]] if "clean_accuracy" in details[key] else []) + \
            [100.0 * v for v in per_attack.values()]
        colors = ["tab:gray"] * (len(names) - len(per_attack)) + ["tab:blue"] * (len(per_attack) - 1) + \
            ["tab:orange"] * bool(per_attack)  # the last is AutoAttack's RA
        bars = axes.bar(range(len(names)), heights, color=colors)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axes.set_ylim(0, 105)
        axes.set_ylabel("robust accuracy (%)")
        axes.set_title(f"eps {key}")
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


def read_training_log(csv_path: str) -> Dict[str, np.ndarray]:
    """The CSVLogger file as column name -> float array (empty cells become NaN)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: Dict[str, List[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value) if value not in (None, "") else float("nan")
            except ValueError:
                number = float("nan")
            columns.setdefault(key, []).append(number)
    return {k: np.asarray(v, np.float64) for k, v in columns.items()}


def best_epoch_of(log: Dict[str, np.ndarray]) -> Optional[int]:
    """The epoch (from 1) early stopping keeps: the first with the highest held-out robust accuracy."""
    robust = log.get("val_robust_accuracy")
    if robust is None or not np.isfinite(robust).any():
        return None
    return int(log["epoch"][int(np.nanargmax(robust))]) + 1


def mark_best_epoch(axes, epoch: np.ndarray, robust: np.ndarray, best: int) -> None:
    """A vertical line at the best epoch, labelled with it and its held-out RA."""
    axes.axvline(best, color="tab:red", linestyle="--", linewidth=1, label=f"best epoch {best}")
    at = np.flatnonzero(epoch == best)
    if at.size and np.isfinite(robust[at[0]]):
        right_half = best > (np.nanmin(epoch) + np.nanmax(epoch)) / 2  # the label goes on the side with room
        axes.annotate(f"best epoch {best}\n{robust[at[0]]:.1f}%", (best, robust[at[0]]), textcoords="offset points",
                      xytext=(-4 if right_half else 4, -22), ha="right" if right_half else "left", fontsize=7,
                      color="tab:red")


def training_curves(csv_path: str, path: str, best_epoch: Optional[int] = None) -> Figure:
    """One panel per quantity the log has (loss, train/val accuracies, learning rate, epoch time, alignment), and
    the held-out robust accuracy of early stopping with the best epoch marked (`best_epoch`, else the log's)."""
    log = read_training_log(csv_path)
    if "epoch" not in log:
        raise ValueError(f"{csv_path}: no 'epoch' column (not a Keras CSVLogger file)")
    epoch = log["epoch"] + 1  # CSVLogger counts from 0
    panels = [(label, [c for c in columns if c in log], title) for label, columns, title in TRAINING_PANELS]
    panels = [p for p in panels if p[1]]
    best = best_epoch if best_epoch is not None else best_epoch_of(log)
    columns_per_row = min(3, max(1, len(panels)))
    rows = -(-len(panels) // columns_per_row)
    figure = Figure(figsize=(4.2 * columns_per_row, 3.4 * rows))
    for number, (label, columns, title) in enumerate(panels):
        axes = figure.add_subplot(rows, columns_per_row, number + 1)
        for column in columns:
            values = log[column] * (100.0 if column in PERCENT_COLUMNS else 1.0)
            axes.plot(epoch, values, marker=".", label=column)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == HELD_OUT_TITLE:
            highest = np.nanmax(100.0 * log["val_robust_accuracy"], initial=0.0)
            axes.set_ylim(0, min(100.0, max(10.0, 1.3 * highest)))  # from 0, with room above the best epoch
            if best is not None:
                mark_best_epoch(axes, epoch, 100.0 * log["val_robust_accuracy"], best)
        if len(axes.get_lines()) > 1:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def loss_landscape(a: Sequence[float], b: Sequence[float], loss: np.ndarray, path: str,
                   title: str = "Adversarial loss landscape") -> Figure:
    """Surface and contour of loss[i, j] at x + a_i sign(grad) + b_j r (a, b in fractions; axes in 1/255)."""
    a255, b255 = np.asarray(a) * 255.0, np.asarray(b) * 255.0
    grid_a, grid_b = np.meshgrid(a255, b255, indexing="ij")
    figure = Figure(figsize=(10, 4.2))
    surface = figure.add_subplot(1, 2, 1, projection="3d")
    surface.plot_surface(grid_a, grid_b, loss, cmap="viridis", linewidth=0)
    surface.set_xlabel("a: sign-gradient (x/255)")
    surface.set_ylabel("b: Rademacher (x/255)")
    surface.set_zlabel("loss", labelpad=8)
    contour = figure.add_subplot(1, 2, 2)
    filled = contour.contourf(grid_a, grid_b, loss, levels=20, cmap="viridis")
    figure.colorbar(filled, ax=contour, label="cross-entropy")
    contour.set_xlabel("a: sign-gradient (x/255)")
    contour.set_ylabel("b: Rademacher (x/255)")
    figure.suptitle(title)
    figure.subplots_adjust(wspace=0.35)
    return save_figure(figure, path)


__all__ = ["robust_accuracy_vs_eps", "autoattack_breakdown", "training_curves", "loss_landscape", "read_training_log",
           "default_attack", "best_epoch_of", "eps_curve"]
