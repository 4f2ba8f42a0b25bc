"""python -m tf_fastbat.export --model=WORKDIR|FILE.keras --export_dir=DIR --model_name=NAME

A trained classifier as a SavedModel in TF Serving's layout, DIR/NAME/<version>/ (the next integer each time),
published atomically. Signatures: `serving_default` (float32 NHWC images in [0, 1] -> logits, probabilities,
classes) and `predict_images_bytes` (JPEG/PNG bytes, decoded and resized in the graph). assets/metadata.json records
the data, the training method, and the clean and PGD robust accuracy measured on the exported artifact itself.
The work is tf_fastbat.serving's; this module is the command.
"""

from __future__ import annotations

import json
import os

from absl import flags

from tf_fastbat import artifacts, cli, flagtypes, record
from tf_fastbat.serving.protocol import DEFAULT_MODEL_NAME, METADATA_FILE, validate_model_name

FLAGS = flags.FLAGS
TOOL = "tf_fastbat.export"
RENAMED = (("checkpoint", "model"), ("attack_step", "pgd_steps"), ("restarts", "pgd_restarts"))  # (old, new)


def define_model_flags() -> None:
    flags.DEFINE_string("model", None, "The model to export: a training workdir (its best model, else the last), a "
                        ".keras file mapping [0, 1] NHWC images to logits, or pretrained:NAME.")
    cli.validator("model", lambda path: artifacts.resolve(path, "model", saved_models=False))
    flags.DEFINE_string("export_dir", None, "TF Serving base directory; the model goes to export_dir/model_name/N.")
    cli.validator("export_dir", bool, lambda _: "--export_dir is required (TF Serving's base directory)")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "TF Serving model name (a sub-directory of export_dir).")
    cli.validator("model_name", lambda name: validate_model_name(name) is None)


def define_data_flags() -> None:
    flags.DEFINE_string("dataset", None, "Data for the robustness measurement "
                        f"(default: the workdir's {record.CONFIG_FILE}): "
                        "a TFDS name, npz:PATH or folder:PATH.")
    flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory.")
    flags.DEFINE_string("manual_dir", None, "Manual-download directory (imagenet2012).")
    flags.DEFINE_integer("image_size", None, "Image size for folder:/imagenet2012 data (default: the workdir's).")


def define_measurement_flags() -> None:
    flags.DEFINE_integer("num_examples", 1000, "Test examples for the clean and robust accuracy; 0 skips it.")
    flagtypes.DEFINE_eps_list("eps", [], "PGD eps list in 1/255 units (default: the workdir's eval_eps, else its "
                              "eps).")
    flags.DEFINE_integer("pgd_steps", 10, "PGD steps of the measurement.")
    flags.DEFINE_integer("pgd_restarts", 1, "PGD restarts of the measurement.")
    flags.DEFINE_integer("seed", None, "PGD seed (default: the workdir's seed).")


def define_renamed_flags() -> None:
    for old, new in RENAMED:
        cli.renamed(old, new)


def define_flags() -> None:
    """The tool's flags by group, each with its check beside it."""
    cli.define_groups([("Model and export", define_model_flags), ("Data", define_data_flags),
                       ("Robustness measurement (written into the export's metadata)", define_measurement_flags),
                       ("", define_renamed_flags)])


def main(argv) -> None:
    from tf_fastbat.report import markdown_table
    from tf_fastbat.publish import export_checkpoint

    target = export_checkpoint(FLAGS.model, FLAGS.export_dir, FLAGS.model_name, FLAGS.dataset,
                               FLAGS.num_examples, FLAGS.eps or None, FLAGS.pgd_steps, FLAGS.pgd_restarts, FLAGS.seed,
                               FLAGS.data_dir, FLAGS.manual_dir, FLAGS.image_size)
    with open(os.path.join(target, "assets", METADATA_FILE)) as f:
        evaluation = json.load(f).get("evaluation")
    print(f"exported {target}")
    if evaluation:
        print(markdown_table({os.path.basename(target): evaluation}))


def console_main() -> None:
    cli.run(TOOL, define_flags, main)


if __name__ == "__main__":
    console_main()
