"""Robust classifiers trained by this library and shipped inside the package: `pretrained:NAME` names one wherever
a model is named (`models.load`, the tools' `--model`).

Each is two package files beside this module: NAME.keras, the classifier ([0, 1] NHWC images -> logits), and
NAME.json, its card: the training settings as the run recorded them (config.json, with the dataset under its
canonical name), how it was trained (command, commit, epochs, the checkpoint chosen), its measured accuracies with
their test-set sizes, and the sha256 of NAME.keras. Nothing is downloaded: the model works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Tuple

from tf_fastbat.errors import UsageError

SCHEME = "pretrained:"
FOLDER = os.path.dirname(os.path.abspath(__file__))


def is_pretrained(path: object) -> bool:
    """True for a `pretrained:NAME` model name."""
    return isinstance(path, str) and path.startswith(SCHEME)


def names() -> Tuple[str, ...]:
    """The shipped models: every NAME with both NAME.keras and NAME.json in the package."""
    stems = {f[:-len(".json")] for f in os.listdir(FOLDER) if f.endswith(".json")}
    return tuple(sorted(s for s in stems if os.path.isfile(os.path.join(FOLDER, f"{s}.keras"))))


def name_of(path: str) -> str:
    """NAME of `pretrained:NAME` (or NAME itself); a one-line UsageError listing the shipped models if unknown."""
    name = path[len(SCHEME):] if is_pretrained(path) else path
    if name not in names():
        raise UsageError(f"{SCHEME}{name}: no such pretrained model; shipped: "
                         f"{', '.join(SCHEME + n for n in names()) or 'none'}")
    return name


def model_file(path: str) -> str:
    """The .keras file of a shipped model, inside the installed package."""
    return os.path.join(FOLDER, f"{name_of(path)}.keras")


def card(path: str) -> Dict:
    """The model's card (module docstring)."""
    with open(os.path.join(FOLDER, f"{name_of(path)}.json")) as source:
        return json.load(source)


def settings(path: str) -> Dict:
    """The training settings of a shipped model, as a workdir's config.json records them (eps in 1/255 units)."""
    from tf_fastbat.record import current_settings

    return current_settings(card(path)["settings"])


def sha256(path: str) -> str:
    """The sha256 of a file (the card records its model file's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
