"""The report JSON and its short Markdown table."""

from __future__ import annotations

import time
from typing import Dict, Sequence

import keras
import numpy as np

from tf_fastbat.attacks.pgd import PGD


def eps_key(eps_255: float) -> str:
    """The report's eps key: "8/255"."""
    return f"{eps_255:g}/255"


def pgd_name(steps: int, restarts: int) -> str:
    return f"pgd-{steps}-{restarts}"


def parse_eps_key(key: str) -> float:
    """The inverse of eps_key: "8/255" -> 8.0 (1/255 units)."""
    numerator, _, denominator = key.partition("/")
    if denominator != "255":
        raise ValueError(f"not an eps key of the form 'N/255': {key!r}")
    return float(numerator)


AUTOATTACK_NAME = "autoattack"


def evaluate_classifier(classifier: keras.Model, x: np.ndarray, y: np.ndarray, eps_list_255: Sequence[float],
                        steps: int, restarts: int, seed: int, batch_size: int = 256) -> Dict:
    """Clean accuracy and PGD robust accuracy at each eps, in the report's format."""
    pgd = PGD(lambda images: classifier(images, training=False), batch_size)
    start = time.perf_counter()
    clean = float(np.mean(pgd.predict(x) == y)) if len(x) else 0.0
    robust = {eps_key(e): float(np.mean(pgd.robust_mask(x, y, e / 255.0, steps, restarts, seed=seed)))
              for e in eps_list_255}
    return {"clean_accuracy": clean, "robust_accuracy": {pgd_name(steps, restarts): robust},
            "num_examples": int(len(x)), "seed": seed,
            "attack_settings": {pgd_name(steps, restarts): {"steps": steps, "restarts": restarts,
                                                              "step_size": "eps/4", "random_start": True}},
            "seconds": time.perf_counter() - start}


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
