"""A training run's record: the workdir's layout, every file name written once here, and what the run recorded.

    <workdir>/config.json            the run's settings (the training flags, eps in 1/255 units) and data facts
    <workdir>/training_log.csv       one row per epoch (CSVLogger): losses, held-out accuracies, gradient alignment
    <workdir>/checkpoints/last.keras the classifier after the newest epoch
    <workdir>/checkpoints/best.keras the early-stopped classifier; checkpoints/best.json: its epoch and accuracies
    <workdir>/backup/                step backups (exact resume)
    <workdir>/tensorboard/           TensorBoard logs
    <workdir>/report.json, report.md the final test evaluation of best and last; <figure>.png beside them
    <workdir>/extra_eval.json        measurements added later by the benchmarks (AutoAttack, PGD-50-10, ...)
    <workdir>/command.txt, train.log the benchmarks' command line and output of the run

Train writes these, evaluate, export and the benchmarks read them: all through `Workdir`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

CHECKPOINTS = ("best", "last")  # checkpoints/<name>.keras, in the order a workdir's model is chosen
CONFIG_FILE = "config.json"  # the run's settings, the name users see in messages and help
CHECKPOINT_FOLDER = "checkpoints"
BEST_STATE = "best.json"  # in the checkpoints folder: the best epoch and its held-out accuracies
TENSORBOARD_FOLDER = "tensorboard"


def checkpoint_file(name: str) -> str:
    """The file name of checkpoint `name` (best or last) in the checkpoints folder."""
    return f"{name}.keras"


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The files of one training run under `root`."""

    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, CONFIG_FILE)

    @property
    def training_log(self) -> str:
        return os.path.join(self.root, "training_log.csv")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, CHECKPOINT_FOLDER)

    def checkpoint(self, name: str) -> str:
        """checkpoints/<name>.keras (name: best or last)."""
        return os.path.join(self.checkpoints, checkpoint_file(name))

    @property
    def best_state(self) -> str:
        """checkpoints/best.json: the best epoch and its held-out accuracies."""
        return os.path.join(self.checkpoints, BEST_STATE)

    @property
    def backups(self) -> str:
        return os.path.join(self.root, "backup")

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, TENSORBOARD_FOLDER)

    @property
    def report(self) -> str:
        return os.path.join(self.root, "report.json")

    @property
    def report_table(self) -> str:
        return os.path.join(self.root, "report.md")

    def figure(self, name: str) -> str:
        """<name>.png in the workdir (training_curves, ra_vs_eps)."""
        return os.path.join(self.root, f"{name}.png")

    @property
    def extra_evaluation(self) -> str:
        return os.path.join(self.root, "extra_eval.json")

    @property
    def command(self) -> str:
        return os.path.join(self.root, "command.txt")

    @property
    def output(self) -> str:
        return os.path.join(self.root, "train.log")

    def is_run(self) -> bool:
        """True if the folder holds a run's settings (config.json)."""
        return os.path.isfile(self.config)

    def finished(self) -> bool:
        """True once the final evaluation is written (report.json)."""
        return os.path.isfile(self.report)

    def settings(self) -> Dict:
        """config.json in today's flag names (`current_settings`), {} if absent; a one-line UsageError naming the
        file if unreadable."""
        return current_settings(_read(self.config))

    def results(self) -> Optional[Dict]:
        """report.json, None before the run finishes."""
        return _read(self.report) or None

    def best_epoch(self) -> Optional[int]:
        """The epoch checkpoints/best.keras comes from, None before the first held-out check."""
        return _read(self.best_state).get("epoch")

    def extra(self) -> Dict:
        """extra_eval.json, {} before any extra measurement."""
        return _read(self.extra_evaluation)


# The training flags renamed for one vocabulary across the tools (old name, new name); the old names still work for
# a release (config.py), and an older run's config.json is read in the new names.
RENAMED_TRAINING_FLAGS = (("es_attack_step", "es_pgd_steps"), ("es_restarts", "es_pgd_restarts"),
                          ("eval_attack_step", "eval_pgd_steps"), ("eval_restarts", "eval_pgd_restarts"),
                          ("attack_step", "attack_steps"), ("export_model_name", "model_name"))


def current_settings(settings: Dict) -> Dict:
    """A run's recorded settings in today's names: before the renaming, "model" held the architecture's name."""
    current = dict(settings)
    if "model" in current and "architecture" not in current:
        current["architecture"], current["model"] = current.pop("model"), None
    for old, new in RENAMED_TRAINING_FLAGS:
        if old in current and new not in current:
            current[new] = current.pop(old)
    return current


def of_checkpoint(keras_file: str) -> Optional[Workdir]:
    """The run a <workdir>/checkpoints/<name>.keras file belongs to (it has a config.json), else None."""
    folder = os.path.dirname(os.path.abspath(keras_file))
    if os.path.basename(folder) != CHECKPOINT_FOLDER:
        return None
    run = Workdir(os.path.dirname(folder))
    return run if run.is_run() else None


def checkpoint_names() -> str:
    """'checkpoints/best.keras or checkpoints/last.keras', for messages about a workdir without a model."""
    return " or ".join(f"{CHECKPOINT_FOLDER}/{checkpoint_file(name)}" for name in CHECKPOINTS)


def is_checkpoint_file(path: str) -> bool:
    """True for a file inside a workdir's checkpoints folder."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) == CHECKPOINT_FOLDER


def _read(path: str) -> Dict:
    from tf_fastbat.checkpoints import read_json
    from tf_fastbat.errors import UsageError

    try:
        return read_json(path, {}) or {}
    except ValueError as error:
        raise UsageError(str(error)) from error
