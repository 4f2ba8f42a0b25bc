"""Publishing a trained checkpoint for TF Serving: the next version of DIR/NAME, with metadata (data, training
method, and the clean and PGD robust accuracy measured on the exported artifact itself, compared with what the
training run measured on the checkpoint)."""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, Optional, Sequence

from tf_fastbat import __version__, artifacts, record
from tf_fastbat.errors import UsageError, one_line
from tf_fastbat.flagtypes import fractions, in_units
from tf_fastbat.serving.protocol import DEFAULT_MODEL_NAME


def preprocessing_for(dataset: Optional[str]) -> str:
    """Center crop like the evaluation pipeline for ImageNet-style data; a plain resize otherwise."""
    return "center_crop" if dataset and (dataset == "imagenet2012" or dataset.startswith("folder:")) else "resize"


def training_metadata(config: Optional[Dict], report: Optional[Dict], kind: str, classifier) -> Dict:
    """What the training run recorded: data, architecture, method and its hyperparameters, its own evaluation."""
    config = config or {}
    num_classes = int(classifier.output_shape[-1])
    class_names = config.get("class_names") or [str(i) for i in range(num_classes)]
    eps_255 = config.get("eps")
    training_report = None
    if report and kind in (report.get("checkpoints") or {}):
        training_report = {k: report["checkpoints"][kind].get(k) for k in
                           ("clean_accuracy", "robust_accuracy", "num_examples", "seed")}
    return {
        "dataset": config.get("dataset"), "num_classes": num_classes, "class_names": list(class_names),
        "checkpoint_kind": kind, "architecture": config.get("architecture"), "activation": config.get("activation"),
        "width_multiplier": config.get("width_multiplier"),
        "training": {"method": config.get("method"), "hparams": config.get("method_hparams"),
                     "eps_255": eps_255, "eps": None if eps_255 is None else eps_255 / 255.0,
                     "epochs": config.get("epochs"), "seed": config.get("seed")} if config else None,
        "training_evaluation": training_report,
    }


def agrees_with_training(measured: Dict, training: Optional[Dict]) -> Optional[bool]:
    """Whether the export's measurement equals the training run's own evaluation of the checkpoint; None when
    they are not comparable (different examples, seed, or no attack/eps in common)."""
    if not training or training.get("num_examples") != measured["num_examples"] or \
            training.get("seed") != measured["seed"]:
        return None
    pairs = [(by_eps[eps], (training.get("robust_accuracy") or {}).get(attack, {}).get(eps))
             for attack, by_eps in measured["robust_accuracy"].items() for eps in by_eps]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs:
        return None
    return training.get("clean_accuracy") == measured["clean_accuracy"] and all(a == b for a, b in pairs)


def measurement(x, y, eps_list: Sequence[float], attack_step: int, restarts: int, seed: int, dataset: str,
                training: Optional[Dict] = None) -> Callable[[Callable], Dict]:
    """An `evaluate(logits_fn)` for saved_model.export_saved_model: pgd_report on the exported logits."""
    def evaluate(logits_fn) -> Dict:
        from tf_fastbat.evaluation import pgd_report

        result = pgd_report(logits_fn, x, y, eps_list, attack_step, restarts, seed, label="exported SavedModel")
        return {**result, "dataset": dataset, "split": "test", "examples": f"the first {len(x)} test examples",
                "eps_255": [in_units(e) for e in eps_list],
                "measured_on": "the exported SavedModel (serving_default logits)",
                "agrees_with_training_evaluation": agrees_with_training(result, training)}

    return evaluate


def _test_examples(dataset: str, num_examples: int, data_dir, manual_dir, image_size: int, seed: int):
    from tf_fastbat.data.test_split import test_arrays

    return test_arrays(dataset, num_examples, data_dir, manual_dir, image_size, seed)


def export_checkpoint(model: str, export_dir: str, model_name: str = DEFAULT_MODEL_NAME,
                      dataset: Optional[str] = None, num_examples: int = 1000,
                      eps_list: Optional[Sequence[float]] = None, pgd_steps: int = 10, pgd_restarts: int = 1,
                      seed: Optional[int] = None, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                      image_size: Optional[int] = None, examples=None) -> str:
    """Export a workdir's best (else last) model or a .keras file; measure it on `num_examples` test examples.

    eps are fractions of 1. Settings left None come from the workdir's config.json. `examples=(x, y)` skips
    loading the dataset. Returns the new version directory.
    """
    from tf_fastbat.serving.saved_model import export_saved_model

    artifact = artifacts.resolve(model, "model", saved_models=False)
    config = artifacts.recorded_settings(artifact)
    report_json = record.Workdir(artifact.workdir).results() if artifact.workdir else None
    dataset = dataset or config.get("dataset")
    if num_examples < 0:
        raise UsageError(f"num_examples={num_examples}: must be >= 0 (0 skips the measurement)")
    if pgd_steps < 0:
        raise UsageError(f"pgd_steps={pgd_steps}: must be >= 0")
    if pgd_restarts < 1:
        raise UsageError(f"pgd_restarts={pgd_restarts}: must be >= 1")
    if not eps_list:
        eps_list = fractions("eps", [str(e) for e in config.get("eval_eps") or []] or [str(config.get("eps", 8.0))])
    if num_examples and examples is None and not dataset:
        raise UsageError(f"dataset is required: {model} has no {record.CONFIG_FILE} to take it from "
                         "(or pass num_examples=0 to skip the robustness measurement)")
    seed = config.get("seed", 0) if seed is None else seed
    image_size = config.get("image_size", 224) if image_size is None else image_size

    from tf_fastbat import models

    try:
        classifier = models.load(artifact.file)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(f"model={model}: {one_line(error)}") from error
    metadata = {**training_metadata(config, report_json, artifact.checkpoint, classifier),
                "checkpoint": os.path.abspath(artifact.file), "dataset": dataset,
                "eps_255": [in_units(e) for e in eps_list], "eps": list(eps_list), "tf_fastbat_version": __version__}
    evaluate = None
    if num_examples:
        x, y = examples if examples is not None else _test_examples(
            dataset, num_examples, data_dir or config.get("data_dir"), manual_dir or config.get("manual_dir"),
            image_size, seed)
        x, y = x[:num_examples], y[:num_examples]
        if tuple(x.shape[1:]) != tuple(classifier.input_shape[1:]):
            raise UsageError(f"dataset={dataset}: images of shape {tuple(x.shape[1:])} do not fit the model's "
                             f"input {tuple(classifier.input_shape[1:])}")
        evaluate = measurement(x, y, eps_list, pgd_steps, pgd_restarts, seed, dataset, metadata["training_evaluation"])
    return export_saved_model(classifier, export_dir, model_name, metadata, evaluate,
                              preprocessing=preprocessing_for(dataset))


def export_after_training(workdir: str, export_dir: str, model_name: str = DEFAULT_MODEL_NAME,
                          examples=None, num_examples: Optional[int] = None) -> Dict[str, str]:
    """At the end of training: export last.keras, then best.keras (so that the newest version, the one TF Serving
    serves by default, is the best model), each measured with the run's own evaluation settings.

    `examples=(x, y)`: the test arrays train.py evaluated (then the measurement can be checked against report.json,
    see metadata["evaluation"]["agrees_with_training_evaluation"]); else the dataset's first `num_examples` test
    examples (default: the run's eval_num_examples, -1 meaning all). Returns {"last": dir, "best": dir}.
    """
    config = record.Workdir(workdir).settings()
    if num_examples is None:
        num_examples = config.get("eval_num_examples", 1000)
        if num_examples is None or num_examples < 0:
            num_examples = len(examples[0]) if examples is not None else sys.maxsize
    if examples is None and num_examples and config.get("dataset"):  # loaded once for both exports
        examples = _test_examples(config["dataset"], num_examples, config.get("data_dir"), config.get("manual_dir"),
                                  config.get("image_size", 224), config.get("seed", 0))
    exported = {}
    for kind in ("last", "best"):
        path = artifacts.checkpoint_path(workdir, kind)
        if os.path.isfile(path):
            exported[kind] = export_checkpoint(
                path, export_dir, model_name, num_examples=num_examples,
                pgd_steps=config.get("eval_pgd_steps", 10), pgd_restarts=config.get("eval_pgd_restarts", 1),
                examples=examples)
    if not exported:
        raise UsageError(f"{workdir}: no {record.checkpoint_names()} to export")
    return exported
