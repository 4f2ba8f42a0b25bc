"""The report's eps keys, written once ("8/255"), its short Markdown table and its reading guide. No TensorFlow.
Each attack owns its own report key (its `name`)."""

from __future__ import annotations

from typing import Dict, Optional

from tf_fastbat.flagtypes import in_units


def eps_key(eps: float) -> str:
    """The report's key of an eps (a fraction of 1): "8/255"."""
    return f"{in_units(eps):g}/255"








def parse_eps_key(key: str) -> float:
    """An eps key in 1/255 units, for plot axes: "8/255" -> 8.0."""
    numerator, _, denominator = key.partition("/")
    if denominator != "255":
        raise ValueError(f"not an eps key of the form 'N/255': {key!r}")
    return float(numerator)


# What the same recipe reaches at full scale, for datasets whose figures are small-data figures.
FULL_SCALE = {
    "bundled:cifar10_slice": (
        "At full scale (flags/table1_fast_bat_eps8.cfg: 45,000 CIFAR-10 training images, width 1, 20 epochs) fast "
        "single-step training reaches about 80% SA and 45-50% RA at 8/255: Fast-AT 83.8% / 46.1% under PGD-50-10 "
        "(Wong et al. 2020); Fast-BAT's figures are in arXiv:2112.12376, Table 1."),
}


def markdown_table(rows: Dict[str, Dict]) -> str:
    """One row per model (best, last...): SA and each attack at each eps, as percentages."""
    columns = []
    for result in rows.values():
        for attack, by_eps in result["robust_accuracy"].items():
            for eps in by_eps:
                if (attack, eps) not in columns:
                    columns.append((attack, eps))
    header = "| model | SA | " + " | ".join(f"RA {a} @ {e}" for a, e in columns) + " |"
    lines = [header, "|" + "---|" * (2 + len(columns))]
    for name, result in rows.items():
        cells = [f"{100 * result['robust_accuracy'].get(a, {}).get(e, float('nan')):.2f}" for a, e in columns]
        lines.append(f"| {name} | {100 * result['clean_accuracy']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading_guide(dataset: str, num_train: int, num_held_out: int, num_test: int, num_classes: int,
                  num_early_stopping: Optional[int] = None) -> str:
    """What the results table's numbers mean: the data they come from, the chance level, the full-scale figure.

    `num_held_out` training examples were held out; early stopping attacked `num_early_stopping` of them (all if
    None).
    """
    held_out = f"{num_held_out:,} more held out for early stopping"
    if num_early_stopping is not None and num_early_stopping < num_held_out:
        held_out = f"{num_held_out:,} more held out, of which early stopping attacked the first {num_early_stopping:,}"
    lines = [f"Trained on {num_train:,} images ({held_out}), tested on {num_test:,}; chance level "
             f"{100 / num_classes:.0f}% ({num_classes} classes)."]
    if dataset in FULL_SCALE:
        lines.append("These are small-data figures. " + FULL_SCALE[dataset])
    return "\n".join(lines)
