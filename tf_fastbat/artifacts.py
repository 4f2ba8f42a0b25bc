"""What a model path names, resolved without loading anything: a training workdir (its best, else last,
checkpoint), a .keras file, a SavedModel directory, a TF Serving model directory (its newest version), or a
shipped model, `pretrained:NAME`. Every tool resolves --model (and --surrogate) here, reads the
training settings recorded with a model through `recorded_settings`, and loads it as a logits function
(`load_logits_fn`, `check_model_fits`): the tools' side of evaluation, whose measurement (tf_fastbat.evaluation)
takes any logits function."""

from __future__ import annotations

import dataclasses
import os
import sys
import zipfile
from typing import Dict, Optional

from tf_fastbat import pretrained, record
from tf_fastbat.errors import UsageError, one_line
from tf_fastbat.serving.protocol import is_saved_model, newest_saved_model  # noqa: F401  (tools ask here)

CHECKPOINTS = record.CHECKPOINTS  # a workdir's checkpoints/<name>.keras, in the order a workdir is resolved


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
    """The artifact `path` names; if it names none, a one-line UsageError naming it as the parameter `flag`
    ("model=PATH: ..."; the tools' runner words it as their flag --model or --surrogate)."""
    forms = "a training workdir, a .keras file or a SavedModel directory" if saved_models else \
        "a training workdir or a .keras file"
    if not path:
        raise UsageError(f"{flag} is required ({forms})")
    if pretrained.is_pretrained(path):
        try:
            return Artifact(path, "keras", pretrained.model_file(path), None, "pretrained", pretrained.name_of(path))
        except UsageError as error:
            raise UsageError(f"{flag}={error}") from error
    if not os.path.exists(path):
        raise UsageError(f"{flag}={path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isdir(record.Workdir(path).checkpoints) or not saved_models:
            for name in CHECKPOINTS:
                if os.path.isfile(checkpoint_path(path, name)):
                    return Artifact(path, "keras", checkpoint_path(path, name), path, name, label(path))
            raise UsageError(f"{flag}={path}: no {record.checkpoint_names()} in this workdir")
        saved = newest_saved_model(path)
        if saved:
            return Artifact(path, "savedmodel", saved, None, "savedmodel", label(path))
        raise UsageError(f"{flag}={path}: a directory that is neither a training workdir (checkpoints/) nor a "
                         "SavedModel (saved_model.pb or integer version sub-directories)")
    if not path.endswith(".keras"):
        raise UsageError(f"{flag}={path}: expected {forms}")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{flag}={path}: not a .keras archive (a .keras file is a zip archive)")
    workdir = _workdir_of(path)
    name = os.path.basename(path)[:-len(".keras")]
    return Artifact(path, "keras", path, workdir, name if workdir and name in CHECKPOINTS else "file", label(path))


def recorded_settings(artifact: Artifact) -> Dict:
    """The training settings recorded with a model (a workdir's config.json, a shipped model's card; eps in 1/255
    units), or {} for a model from elsewhere."""
    if artifact.checkpoint == "pretrained":
        return pretrained.settings(artifact.path)
    return record.Workdir(artifact.workdir).settings() if artifact.workdir else {}

def load_logits_fn(artifact: Artifact, flag: str = "model") -> LogitsFn:
    """A resolved --model/--surrogate as a logits function: a .keras classifier or a SavedModel's serving_default."""
    if artifact.kind == "savedmodel":
        from tf_fastbat.serving.loading import load_logits_fn as load_serving

        try:
            return load_serving(artifact.file)
        except (UsageError, FileNotFoundError) as error:
            raise UsageError(f"{flag}={artifact.path}: {error}") from error
    from tf_fastbat import models, runtime
    from tf_fastbat.evaluation import classifier_logits

    try:
        classifier = models.load(artifact.file)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(f"{flag}={artifact.path}: {one_line(error)}") from error
    warning = runtime.onednn_warning(classifier)
    if warning:
        sys.stderr.write(f"WARNING: {artifact.path}: {warning}\n")
    return classifier_logits(classifier)


def check_model_fits(logits_fn: LogitsFn, x, num_labels: int, flag: str = "model") -> int:
    """Number of classes, after checking that the model takes these images and returns [batch, classes] outputs."""
    import tensorflow as tf

    try:
        output = logits_fn(tf.constant(x[:2]))
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise UsageError(f"the {flag} does not take the dataset's images of shape "
                         f"{tuple(x.shape[1:])} ({type(error).__name__}: {one_line(error)})") from error
    if output.shape.rank != 2:
        raise UsageError(f"the {flag} outputs shape {tuple(output.shape)}; expected [batch, classes]")
    if output.shape[-1] < num_labels:
        raise UsageError(f"the {flag} has {output.shape[-1]} outputs but the test labels go up to "
                         f"{num_labels - 1}")
    return int(output.shape[-1])
