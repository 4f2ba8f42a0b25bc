"""PNG figures of an evaluation: RA against test eps (Fig. 1), training curves, the loss landscape (Fig. A1).

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

from tf_fastbat.report import parse_eps_key

TRAINING_PANELS = (
    ("loss", ("loss",), "training loss"),
    ("accuracy (%)", ("accuracy", "val_clean_accuracy", "val_robust_accuracy"), "accuracy"),
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


def robust_accuracy_vs_eps(reports: Dict[str, Dict], path: str, attack: Optional[str] = None) -> Figure:
    """One curve per model (name -> report JSON): RA (%) under `attack` (default: its PGD) at each test eps."""
    figure = Figure(figsize=(5.5, 4))
    axes = figure.add_subplot(1, 1, 1)
    for name, report in reports.items():
        by_attack = report.get("robust_accuracy", {})
        chosen = attack if attack in by_attack else default_attack(by_attack)
        if chosen is None:
            continue
        points = sorted((parse_eps_key(k), 100.0 * v) for k, v in by_attack[chosen].items())
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{name} ({chosen})")
    axes.set_xlabel("test eps (x/255)")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_title("Robust accuracy against test eps")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
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


def training_curves(csv_path: str, path: str) -> Figure:
    """One panel per quantity the log has (loss, train/val accuracies, learning rate, epoch time, alignment)."""
    log = read_training_log(csv_path)
    if "epoch" not in log:
        raise ValueError(f"{csv_path}: no 'epoch' column (not a Keras CSVLogger file)")
    epoch = log["epoch"] + 1  # CSVLogger counts from 0
    panels = [(label, [c for c in columns if c in log], title) for label, columns, title in TRAINING_PANELS]
    panels = [p for p in panels if p[1]]
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
        if len(columns) > 1:
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


__all__ = ["robust_accuracy_vs_eps", "training_curves", "loss_landscape", "read_training_log", "default_attack"]
