"""python -m tf_fastbat.export --checkpoint=WORKDIR|FILE.keras --export_dir=DIR --model_name=NAME

A trained classifier as a SavedModel in TF Serving's layout, DIR/NAME/<version>/ (the next integer each time),
written to a hidden temporary directory beside the versions and renamed into place, so that a server polling
DIR/NAME never loads a half-written version. Signatures: `serving_default` (float32 NHWC images in [0, 1] ->
logits, probabilities, classes) and `predict_images_bytes` (JPEG/PNG bytes, decoded and resized in the graph).
assets/metadata.json records the data, the training method, and the clean and PGD robust accuracy measured on
the exported artifact itself.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from tf_fastbat import __version__

FLAGS = flags.FLAGS
DEFAULT_MODEL_NAME = "tf_fastbat"
METADATA_FILE = "metadata.json"  # == serving_model.METADATA_FILE (kept here so bad input fails before TF loads)
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ExportError(ValueError):
    """Input the export cannot use (missing checkpoint, no dataset for the measurement...); a one-line message."""


# ----------------------------------------------------------------------------------------------------------------
# Inputs: the checkpoint and what the training run recorded about it.

def resolve_checkpoint(path: str) -> Tuple[str, Optional[str], str]:
    """(.keras file, its training workdir or None, "best" | "last" | "file") for a workdir or a .keras file."""
    if not path:
        raise ExportError("--checkpoint is required (a training workdir or a .keras file)")
    if os.path.isdir(path):
        for kind in ("best", "last"):
            candidate = os.path.join(path, "checkpoints", f"{kind}.keras")
            if os.path.isfile(candidate):
                return candidate, path, kind
        raise ExportError(f"--checkpoint={path}: no checkpoints/best.keras or checkpoints/last.keras in this workdir")
    if not os.path.exists(path):
        raise ExportError(f"--checkpoint={path}: no such file or directory")
    if not path.endswith(".keras"):
        raise ExportError(f"--checkpoint={path}: expected a training workdir or a .keras file")
    if not zipfile.is_zipfile(path):
        raise ExportError(f"--checkpoint={path}: not a .keras archive (a .keras file is a zip archive)")
    folder = os.path.dirname(os.path.abspath(path))
    workdir = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None
    if workdir and not os.path.isfile(os.path.join(workdir, "config.json")):
        workdir = None
    name = os.path.basename(path)[:-len(".keras")]
    return path, workdir, name if workdir and name in ("best", "last") else "file"


def validate_model_name(name: str) -> None:
    """A TF Serving model name is a plain directory name under export_dir, and not a number (versions are)."""
    if not name or os.sep in name or name.startswith(".") or name.isdigit():
        raise ExportError(f"--model_name={name!r}: must be a plain directory name, not a number")


def read_json_file(path: str) -> Optional[Dict]:
    """A JSON file's content, None if absent; an ExportError naming the file if unreadable."""
    from tf_fastbat.checkpoints import read_json

    try:
        return read_json(path)
    except ValueError as error:
        raise ExportError(str(error)) from error


def eps_fraction(eps_255: float) -> float:
    """An eps in 1/255 units as a fraction of 1; a value in (0, 1) is refused as an already-fractional eps."""
    from tf_fastbat import config

    try:
        return config.fraction("eps", eps_255, maximum=255, noun="eps is")
    except config.ConfigError as error:
        raise ExportError(str(error)) from error


# ----------------------------------------------------------------------------------------------------------------
# The serving graph.

def _decode_one(image_bytes, image_shape: Tuple[int, int, int], preprocessing: str):
    """JPEG/PNG bytes -> float32 [H, W, C] in [0, 1], resized (or center-cropped) like the evaluation pipeline."""
    import tensorflow as tf

    from tf_fastbat.data.pipeline import _center_crop

    height, width, channels = image_shape
    image = tf.io.decode_image(image_bytes, channels=channels, dtype=tf.float32, expand_animations=False)
    if preprocessing == "center_crop":
        image = _center_crop(image, height)
    else:
        same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        image = tf.cond(same_size, lambda: image, lambda: tf.image.resize(image, [height, width]))
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), image_shape)


def _check_encoded(image_bytes):
    """Fail with a clear message (and the offending indices) unless every element starts like a JPEG or PNG."""
    import tensorflow as tf

    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(image_bytes, 0, len(PNG_MAGIC)), PNG_MAGIC)
    valid = tf.logical_or(is_jpeg, is_png)
    return tf.debugging.Assert(tf.reduce_all(valid), [
        "predict_images_bytes: every element of image_bytes must be a JPEG or PNG file; these indices are not:",
        tf.reshape(tf.where(tf.logical_not(valid)), [-1])], summarize=20)


def _check_image_shape(images, image_shape: Tuple[int, int, int]):
    """Fail with a clear message unless images are [batch, H, W, C] of the model's size: the server does not check
    a request's shape against the signature, and these fully convolutional models would silently accept others."""
    import tensorflow as tf

    shape = tf.shape(images)
    fits = tf.logical_and(tf.equal(tf.size(shape), 4),
                          tf.reduce_all(tf.equal(tf.pad(shape, [[0, 4]])[1:4], list(image_shape))))
    return tf.debugging.Assert(fits, [
        f"serving_default: images must be float32 [batch, {', '.join(map(str, image_shape))}] in [0, 1]; got shape",
        shape], summarize=4)


def serving_signatures(classifier, image_shape: Tuple[int, int, int], preprocessing: str) -> Dict:
    """The two signatures as concrete functions: serving_default (float images) and predict_images_bytes."""
    import tensorflow as tf

    from tf_fastbat.serving_model import BYTES_INPUT, BYTES_SIGNATURE, IMAGES_INPUT, IMAGES_SIGNATURE

    def outputs(images):
        logits = tf.cast(classifier(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
                "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name=IMAGES_INPUT)],
                 autograph=False)
    def serve_images(images):
        with tf.control_dependencies([_check_image_shape(images, image_shape)]):
            return outputs(tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def serve_image_bytes(image_bytes):
        with tf.control_dependencies([_check_encoded(image_bytes)]):
            images = tf.map_fn(lambda b: _decode_one(b, image_shape, preprocessing), image_bytes,
                               fn_output_signature=tf.TensorSpec(image_shape, tf.float32))
        return outputs(images)

    return {IMAGES_SIGNATURE: serve_images.get_concrete_function(),
            BYTES_SIGNATURE: serve_image_bytes.get_concrete_function()}


def _normalization(classifier) -> Optional[Dict]:
    """The (mean, std) of the model's `normalize` layer, if it has one."""
    try:
        layer = classifier.get_layer("normalize")
    except ValueError:
        return None
    import numpy as np

    mean = np.asarray(layer.mean, np.float64).reshape(-1)
    std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
    return {"mean": mean.tolist(), "std": std.tolist(), "applied": "inside the model"}


# ----------------------------------------------------------------------------------------------------------------
# Writing a version.

def next_version(model_dir: str) -> int:
    """1 + the highest integer version under `model_dir` (1 for a new model)."""
    versions = [int(e) for e in os.listdir(model_dir) if e.isdigit()] if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def _claim(saved: str, model_dir: str, metadata: Dict) -> int:
    """Stamp the next free version into the metadata, then rename the complete SavedModel to it in one step.

    A version taken meanwhile (another export) is never overwritten: the stamp and rename move one further.
    """
    for _ in range(1000):
        version = next_version(model_dir)
        target = os.path.join(model_dir, str(version))
        _write_json({**metadata, "version": version}, os.path.join(saved, "assets", METADATA_FILE))
        if os.path.exists(target):
            continue
        try:
            os.rename(saved, target)  # atomic on one filesystem; fails on an existing non-empty directory
            return version
        except OSError:
            if not os.path.exists(target):
                raise
    raise ExportError(f"{model_dir}: could not claim a free version number (other exports keep taking them)")


def export_saved_model(classifier, export_dir: str, model_name: str, metadata: Dict,
                       evaluate: Optional[Callable[[Callable], Dict]] = None, preprocessing: str = "resize") -> str:
    """Write the SavedModel to a temporary dir, measure it (`evaluate(logits_fn)`), then rename it into place.

    Returns the version directory. `evaluate`, if given, maps the exported logits function to a dict stored
    under metadata["evaluation"].
    """
    import keras
    import tensorflow as tf

    from tf_fastbat.serving_model import load_logits_fn

    validate_model_name(model_name)
    image_shape = tuple(int(d) for d in classifier.input_shape[1:])
    if len(image_shape) != 3 or None in image_shape:
        raise ExportError(f"the model's input shape {classifier.input_shape} is not [batch, height, width, channels]")
    model_dir = os.path.join(export_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=".partial-", dir=model_dir)  # not an integer: TF Serving ignores it
    try:
        saved = os.path.join(temporary, "saved_model")
        staging = os.path.join(temporary, METADATA_FILE)
        full = {**metadata, "model_name": model_name, "input_shape": list(image_shape), "preprocessing": preprocessing,
                "normalization": _normalization(classifier), "exported_at": _now(),
                "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
                "signatures": _signature_summary(image_shape), "evaluation": None}
        _write_json(full, staging)
        module = tf.Module()  # the variables and the asset only: tracking the Keras model or the tf.functions
        module.model_variables = list(classifier.variables)  # makes the save retrace them (seconds)
        module.metadata = tf.saved_model.Asset(staging)
        tf.saved_model.save(module, saved, signatures=serving_signatures(classifier, image_shape, preprocessing))
        if evaluate is not None:
            full["evaluation"] = evaluate(load_logits_fn(saved))
        version = _claim(saved, model_dir, full)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return os.path.join(model_dir, str(version))


def _signature_summary(image_shape: Sequence[int]) -> Dict:
    shape = ["batch", *image_shape]
    outputs = {"logits": "float32 [batch, classes]", "probabilities": "float32 [batch, classes]",
               "classes": "int64 [batch]"}
    return {"serving_default": {"inputs": {"images": f"float32 {shape} in [0, 1], NHWC"}, "outputs": outputs},
            "predict_images_bytes": {"inputs": {"image_bytes": "string [batch]: JPEG or PNG files"},
                                     "outputs": outputs}}


def _write_json(data: Dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    """numpy scalars and tuples in metadata -> plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# Measuring the export, and the end-to-end entry points.

def evaluation_examples(dataset: str, num_examples: int, data_dir: Optional[str] = None,
                        manual_dir: Optional[str] = None, image_size: int = 224, seed: int = 0):
    """The first `num_examples` test examples of `dataset` as ([0, 1] float32 NHWC images, int labels)."""
    import numpy as np

    from tf_fastbat import data

    source = data.load(dataset, data_dir, manual_dir, image_size)
    if source.in_memory:
        return source.x_test[:num_examples].astype(np.float32) / 255.0, source.y_test[:num_examples]
    if source.test_files is not None:
        stream = data.pipeline.file_dataset(source.test_files[:num_examples], source.test_labels[:num_examples],
                                            256, source.image_shape[0], training=False, seed=seed)
    else:
        stream = data.pipeline.tfds_stream(source.name, "validation", data_dir, 256, source.image_shape[0],
                                           training=False, seed=seed).take(-(-num_examples // 256))
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in stream]) if num_examples else ((), ())
    if not xs:
        return np.zeros((0, *source.image_shape), np.float32), np.zeros([0], np.int64)
    return np.concatenate(xs)[:num_examples], np.concatenate(ys)[:num_examples].astype(np.int64)


def _load_examples(dataset: str, num_examples: int, data_dir, manual_dir, image_size: int, seed: int):
    """evaluation_examples, with a dataset that cannot be loaded reported as an ExportError."""
    from tf_fastbat.data import DataError

    try:
        return evaluation_examples(dataset, num_examples, data_dir, manual_dir, image_size, seed)
    except DataError as error:
        raise ExportError(str(error)) from error


def _preprocessing_for(dataset: Optional[str]) -> str:
    """Center crop like the evaluation pipeline for ImageNet-style data; a plain resize otherwise."""
    return "center_crop" if dataset and (dataset == "imagenet2012" or dataset.startswith("folder:")) else "resize"


def _training_metadata(config: Optional[Dict], report: Optional[Dict], kind: str, classifier) -> Dict:
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
        "checkpoint_kind": kind, "architecture": config.get("model"), "activation": config.get("activation"),
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


def _measure(x, y, eps_list_255: Sequence[float], attack_step: int, restarts: int, seed: int, dataset: str,
             training: Optional[Dict] = None) -> Callable[[Callable], Dict]:
    """An `evaluate(logits_fn)` for export_saved_model: report.evaluate_classifier on the exported logits."""
    from tf_fastbat import report

    def evaluate(logits_fn) -> Dict:
        adapter = _LogitsAsClassifier(logits_fn)
        result = report.evaluate_classifier(adapter, x, y, eps_list_255, attack_step, restarts, seed)
        return {**result, "dataset": dataset, "split": "test", "examples": f"the first {len(x)} test examples",
                "eps_255": list(eps_list_255), "measured_on": "the exported SavedModel (serving_default logits)",
                "agrees_with_training_evaluation": agrees_with_training(result, training)}

    return evaluate


class _LogitsAsClassifier:
    """evaluate_classifier calls classifier(images, training=False); a SavedModel logits function has no mode."""

    def __init__(self, logits_fn):
        self.logits_fn = logits_fn

    def __call__(self, images, training: bool = False):
        return self.logits_fn(images)


def export_checkpoint(checkpoint: str, export_dir: str, model_name: str = DEFAULT_MODEL_NAME,
                      dataset: Optional[str] = None, num_examples: int = 1000,
                      eps_255: Optional[Sequence[float]] = None, attack_step: int = 10, restarts: int = 1,
                      seed: Optional[int] = None, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                      image_size: Optional[int] = None, examples=None) -> str:
    """Export a workdir's best (else last) model or a .keras file; measure it on `num_examples` test examples.

    Settings left None come from the workdir's config.json. `examples=(x, y)` skips loading the dataset.
    Returns the new version directory.
    """
    keras_path, workdir, kind = resolve_checkpoint(checkpoint)
    config = read_json_file(os.path.join(workdir, "config.json")) if workdir else None
    report_json = read_json_file(os.path.join(workdir, "report.json")) if workdir else None
    config = config or {}
    dataset = dataset or config.get("dataset")
    if num_examples < 0:
        raise ExportError(f"--num_examples={num_examples}: must be >= 0 (0 skips the measurement)")
    if attack_step < 0 or restarts < 1:
        raise ExportError(f"--attack_step={attack_step} --restarts={restarts}: need attack_step >= 0, restarts >= 1")
    if eps_255 is None or not len(eps_255):
        eps_255 = [float(e) for e in config.get("eval_eps") or []] or [float(config.get("eps", 8.0))]
    for e in eps_255:
        eps_fraction(e)
    if num_examples and examples is None and not dataset:
        raise ExportError(f"--dataset is required: {checkpoint} has no config.json to take it from "
                          "(or pass --num_examples=0 to skip the robustness measurement)")
    seed = config.get("seed", 0) if seed is None else seed
    image_size = config.get("image_size", 224) if image_size is None else image_size

    from tf_fastbat import models

    try:
        classifier = models.load(keras_path)
    except (ValueError, FileNotFoundError) as error:
        raise ExportError(f"--checkpoint={checkpoint}: {str(error).splitlines()[0]}") from error
    metadata = {**_training_metadata(config, report_json, kind, classifier),
                "checkpoint": os.path.abspath(keras_path), "dataset": dataset,
                "eps_255": list(eps_255), "eps": [e / 255.0 for e in eps_255], "tf_fastbat_version": __version__}
    evaluate = None
    if num_examples:
        x, y = examples if examples is not None else _load_examples(
            dataset, num_examples, data_dir or config.get("data_dir"), manual_dir or config.get("manual_dir"),
            image_size, seed)
        x, y = x[:num_examples], y[:num_examples]
        if tuple(x.shape[1:]) != tuple(classifier.input_shape[1:]):
            raise ExportError(f"--dataset={dataset}: images of shape {tuple(x.shape[1:])} do not fit the model's "
                              f"input {tuple(classifier.input_shape[1:])}")
        evaluate = _measure(x, y, eps_255, attack_step, restarts, seed, dataset, metadata["training_evaluation"])
    return export_saved_model(classifier, export_dir, model_name, metadata, evaluate,
                              preprocessing=_preprocessing_for(dataset))


def export_after_training(workdir: str, export_dir: str, model_name: str = DEFAULT_MODEL_NAME,
                          examples=None, num_examples: Optional[int] = None) -> Dict[str, str]:
    """At the end of training: export last.keras, then best.keras (so that the newest version, the one TF Serving
    serves by default, is the best model), each measured with the run's own evaluation settings.

    `examples=(x, y)`: the test arrays train.py evaluated (then the measurement can be checked against report.json,
    see metadata["evaluation"]["agrees_with_training_evaluation"]); else the dataset's first `num_examples` test
    examples (default: the run's eval_num_examples, -1 meaning all). Returns {"last": dir, "best": dir}.
    """
    config = read_json_file(os.path.join(workdir, "config.json")) or {}
    if num_examples is None:
        num_examples = config.get("eval_num_examples", 1000)
        if num_examples is None or num_examples < 0:
            num_examples = len(examples[0]) if examples is not None else sys.maxsize
    if examples is None and num_examples and config.get("dataset"):  # loaded once for both exports
        examples = _load_examples(config["dataset"], num_examples, config.get("data_dir"), config.get("manual_dir"),
                                  config.get("image_size", 224), config.get("seed", 0))
    exported = {}
    for kind in ("last", "best"):
        path = os.path.join(workdir, "checkpoints", f"{kind}.keras")
        if os.path.isfile(path):
            exported[kind] = export_checkpoint(
                path, export_dir, model_name, num_examples=num_examples,
                attack_step=config.get("eval_attack_step", 10), restarts=config.get("eval_restarts", 1),
                examples=examples)
    if not exported:
        raise ExportError(f"{workdir}: no checkpoints/best.keras or checkpoints/last.keras to export")
    return exported


# ----------------------------------------------------------------------------------------------------------------
# Command line.

def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that train.py can import this module."""
    flags.DEFINE_string("checkpoint", None, "A training workdir (its best model, else the last) or a .keras file.")
    flags.DEFINE_string("export_dir", None, "TF Serving base directory; the model goes to export_dir/model_name/N.")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "TF Serving model name (a sub-directory of export_dir).")
    flags.DEFINE_string("dataset", None, "Data for the robustness measurement (default: the workdir's config.json): "
                        "a TFDS name, npz:PATH or folder:PATH.")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual-download directory (imagenet2012).")
    flags.DEFINE_integer("image_size", None, "Image size for folder:/imagenet2012 data (default: the workdir's).")
    flags.DEFINE_integer("num_examples", 1000, "Test examples for the clean and robust accuracy; 0 skips it.")
    flags.DEFINE_list("eps", [], "PGD eps list in 1/255 units (default: the workdir's eval_eps, else its eps).")
    flags.DEFINE_integer("attack_step", 10, "PGD steps of the measurement.")
    flags.DEFINE_integer("restarts", 1, "PGD restarts of the measurement.")
    flags.DEFINE_integer("seed", None, "PGD seed (default: the workdir's seed).")


def _fail(message: str) -> None:
    sys.stderr.write(f"tf_fastbat.export: error: {message}\n")
    sys.exit(2)


def _parse_eps(values: List[str]) -> Optional[List[float]]:
    try:
        return [float(v) for v in values] or None
    except ValueError as error:
        raise ExportError(f"--eps={','.join(values)}: not a list of numbers") from error


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.export_dir:
        _fail("--export_dir is required (TF Serving's base directory)")
    try:
        resolve_checkpoint(FLAGS.checkpoint)  # before TensorFlow loads: bad input fails in a blink
        validate_model_name(FLAGS.model_name)
        eps_list = _parse_eps(FLAGS.eps)
    except ExportError as error:
        _fail(str(error))
    try:
        target = export_checkpoint(FLAGS.checkpoint, FLAGS.export_dir, FLAGS.model_name, FLAGS.dataset,
                                   FLAGS.num_examples, eps_list, FLAGS.attack_step, FLAGS.restarts,
                                   FLAGS.seed, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.image_size)
    except (ExportError, FileNotFoundError) as error:
        _fail(str(error))
    with open(os.path.join(target, "assets", METADATA_FILE)) as f:
        evaluation = json.load(f).get("evaluation")
    print(f"exported {target}")
    if evaluation:
        from tf_fastbat.report import markdown_table

        print(markdown_table({os.path.basename(target): evaluation}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
