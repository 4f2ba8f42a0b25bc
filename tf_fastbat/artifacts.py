"""What a model path names, resolved without loading anything: a training workdir (its best, else last,
checkpoint), a .keras file, a SavedModel directory, a TF Serving model directory (its newest version), or a
shipped model, `pretrained:NAME`. Every tool resolves --model (and --surrogate) here, and reads the
training settings recorded with a model through `recorded_settings`."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Dict, Optional

from tf_fastbat import pretrained, record
from tf_fastbat.errors import UsageError
from tf_fastbat.serving.protocol import integer_versions

CHECKPOINTS = record.CHECKPOINTS  # a workdir's checkpoints/<name>.keras, in the order a workdir is resolved
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A resolved model path."""

    path: str  # as given
    kind: str  # "keras" or "savedmodel"
    file: str  # the .keras file or the SavedModel directory to load
    workdir: Optional[str]  # the training workdir it comes from, if any (it has config.json)
    checkpoint: str  # "best", "last", "file" (a .keras file from elsewhere), "savedmodel" or "pretrained"
    label: str  # a short name for tables and plot legends


def checkpoint_path(workdir: str, name: str) -> str:
    """<workdir>/checkpoints/<name>.keras."""
    return record.Workdir(workdir).checkpoint(name)


def is_saved_model(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def newest_saved_model(path: str) -> Optional[str]:
    """`path` if it is a SavedModel, else its highest complete integer version, else None."""
    if is_saved_model(path):
        return path
    complete = [v for v in integer_versions(path) if is_saved_model(os.path.join(path, str(v)))]
    return os.path.join(path, str(complete[-1])) if complete else None


def label(path: str) -> str:
    """A short name: a workdir's or SavedModel's folder name, a .keras file's stem (workdir-best for checkpoints)."""
    path = os.path.normpath(path)
    base = os.path.basename(path)
    if base.endswith(".keras"):
        stem = base[:-len(".keras")]
        if record.is_checkpoint_file(path):
            return f"{os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))}-{stem}"
        return stem
    if base.isdigit():  # a TF Serving version directory: <name>/<version>
        return f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}-v{base}"
    return os.path.basename(os.path.abspath(path))


def _workdir_of(keras_file: str) -> Optional[str]:
    run = record.of_checkpoint(keras_file)
    return run.root if run else None


def resolve(path: Optional[str], flag: str = "model", saved_models: bool = True) -> Artifact:
    """The artifact --`flag`=`path` names; a one-line UsageError naming the flag if it names none."""
    forms = "a training workdir, a .keras file or a SavedModel directory" if saved_models else \
        "a training workdir or a .keras file"
    if not path:
        raise UsageError(f"--{flag} is required ({forms})")
    if pretrained.is_pretrained(path):
        try:
            return Artifact(path, "keras", pretrained.model_file(path), None, "pretrained", pretrained.name_of(path))
        except UsageError as error:
            raise UsageError(f"--{flag}={error}") from error
    if not os.path.exists(path):
        raise UsageError(f"--{flag}={path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isdir(record.Workdir(path).checkpoints) or not saved_models:
            for name in CHECKPOINTS:
                if os.path.isfile(checkpoint_path(path, name)):
                    return Artifact(path, "keras", checkpoint_path(path, name), path, name, label(path))
            raise UsageError(f"--{flag}={path}: no {record.checkpoint_names()} in this workdir")
        saved = newest_saved_model(path)
        if saved:
            return Artifact(path, "savedmodel", saved, None, "savedmodel", label(path))
        raise UsageError(f"--{flag}={path}: a directory that is neither a training workdir (checkpoints/) nor a "
                         "SavedModel (saved_model.pb or integer version sub-directories)")
    if not path.endswith(".keras"):
        raise UsageError(f"--{flag}={path}: expected {forms}")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"--{flag}={path}: not a .keras archive (a .keras file is a zip archive)")
    workdir = _workdir_of(path)
    name = os.path.basename(path)[:-len(".keras")]
    return Artifact(path, "keras", path, workdir, name if workdir and name in CHECKPOINTS else "file", label(path))


def recorded_settings(artifact: Artifact) -> Dict:
    """The training settings recorded with a model (a workdir's config.json, a shipped model's card; eps in 1/255
    units), or {} for a model from elsewhere."""
    if artifact.checkpoint == "pretrained":
        return pretrained.settings(artifact.path)
    return record.Workdir(artifact.workdir).settings() if artifact.workdir else {}
