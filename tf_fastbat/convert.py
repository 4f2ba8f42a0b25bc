"""python -m tf_fastbat.convert --torch_checkpoint=PATH --architecture=preact_resnet18 --output=model.keras

A PyTorch checkpoint (the official Fast-BAT trainer's, RobustBench's PreActResNet-18) as a .keras classifier that
maps [0, 1] images to the same logits; see tf_fastbat.models.torch_import. A checkpoint that does not fit the
architecture is one line naming the keys, and exit status 2, before anything is written.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from absl import flags

from tf_fastbat import cli
from tf_fastbat.errors import UsageError

FLAGS = flags.FLAGS
TOOL = "tf_fastbat.convert"
LAYOUTS = ("auto", "zoo", "robustbench", "kuangliu")  # == torch_import.LAYOUTS (kept here: flags parse before TF)


def define_flags() -> None:
    """The tool's flags by group, each with its check beside it."""
    cli.define_groups([("Checkpoint and output", define_io_flags), ("Architecture", define_architecture_flags),
                       ("Input normalization", define_normalization_flags), ("", define_renamed_flags)])


def define_io_flags() -> None:
    flags.DEFINE_string("torch_checkpoint", None, "A torch.save file: a state dict, or a dict holding one.")
    cli.validator("torch_checkpoint", bool, lambda _: "--torch_checkpoint is required")
    cli.validator("torch_checkpoint", lambda path: not path or os.path.isfile(path),
                  lambda path: f"--torch_checkpoint={path}: file not found")
    flags.DEFINE_string("output", None, "Where the Keras model goes (.keras).")
    cli.validator("output", bool, lambda _: "--output is required")
    cli.validator("output", lambda path: not path or path.endswith(".keras"),
                  lambda path: f"--output={path}: must end with .keras")
    flags.DEFINE_string("checkpoint_key", None, "The entry of the file that holds the state dict (default: the "
                        "file itself, else state_dict, model_state_dict, model, net or last).")


def define_architecture_flags() -> None:
    flags.DEFINE_string("architecture", None, "Architecture (a tf_fastbat.models name), e.g. preact_resnet18.")
    cli.validator("architecture", bool, lambda _: "--architecture is required")
    flags.DEFINE_integer("num_classes", None, "Classes (default: the rows of the checkpoint's linear layer).")
    flags.DEFINE_enum("activation", "relu", ["relu", "softplus", "swish"], "The checkpoint's activation.")
    flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier the checkpoint was trained at.")
    flags.DEFINE_enum("layout", "auto", list(LAYOUTS),
                      "Module tree: zoo (the official model zoo), robustbench (its PreActResNet: the final BN only "
                      "if the checkpoint holds one), kuangliu (pytorch-cifar's PreActResNet: also projects "
                      "bn-relu(x) in its shortcut); auto: zoo, or robustbench for a PreActResNet without final BN.")
    flags.DEFINE_integer("image_size", 32, "Input height and width of the Keras model.")
    cli.validator("image_size", lambda v: v > 0, lambda v: f"--image_size={v}: must be positive")


def define_normalization_flags() -> None:
    flags.DEFINE_string("dataset", None, "Normalization of this dataset (cifar10, cifar100, svhn_cropped, "
                        "imagenet2012) when the checkpoint holds no mean/std buffers.")
    flags.DEFINE_list("mean", [], "Per-channel input mean when the checkpoint holds none (with --std).")
    cli.validator("mean", lambda values: _floats(values, "mean") or True)
    flags.DEFINE_list("std", [], "Per-channel input std when the checkpoint holds none (with --mean).")
    cli.validator("std", lambda values: _floats(values, "std") or True)
    flags.register_multi_flags_validator(["dataset", "mean", "std"], lambda values: _normalization_of(
        values["dataset"], values["mean"], values["std"]) is not None)


def define_renamed_flags() -> None:
    cli.renamed("model", "architecture")  # before the tools' one vocabulary, where --model names a model file


def _floats(values: List[str], flag: str) -> Optional[List[float]]:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(f"--{flag}={','.join(values)}: not a list of numbers") from None


def _normalization_of(dataset: Optional[str], mean: List[str],
                      std: List[str]) -> Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]:
    """(mean, std) from --mean/--std or --dataset, (None, None) to take the checkpoint's."""
    mean, std = _floats(mean, "mean"), _floats(std, "std")
    if (mean is None) != (std is None):
        raise flags.ValidationError("--mean and --std go together")
    if dataset is None:
        return mean, std
    if mean is not None or std is not None:
        raise flags.ValidationError("--dataset and --mean/--std exclude each other")
    from tf_fastbat.data.sources import NORMALIZATION

    if dataset not in NORMALIZATION:
        raise flags.ValidationError(f"--dataset={dataset}: no normalization known; choose one of "
                                    f"{', '.join(NORMALIZATION)} or pass --mean/--std")
    return NORMALIZATION[dataset]


def convert(f, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> str:
    """Read, check and convert the checkpoint, then write the .keras file (complete or not at all)."""
    from tf_fastbat.checkpoints import save_model_atomic
    from tf_fastbat.models import from_torch
    from tf_fastbat.models.torch_import import NoNormalization

    try:
        classifier = from_torch(f.torch_checkpoint, f.architecture, num_classes=f.num_classes,
                                activation=f.activation, width_multiplier=f.width_multiplier, layout=f.layout,
                                mean=mean, std=std, input_shape=(f.image_size, f.image_size, 3),
                                checkpoint_key=f.checkpoint_key)
    except NoNormalization as error:
        raise UsageError(f"{error.source} holds no input normalization (mean/std buffers): pass --dataset or "
                         "--mean/--std (RobustBench: Wong2020Fast --dataset=cifar10; Andriushchenko2020Understanding "
                         "--mean=0,0,0 --std=1,1,1)") from error
    save_model_atomic(classifier, f.output)
    normalize = classifier.get_layer("normalize")
    shown_mean = ",".join(f"{v:.6g}" for v in normalize.input_mean)
    shown_std = ",".join(f"{v ** 0.5:.6g}" for v in normalize.input_variance)
    return (f"wrote {f.output}: {f.architecture}, {classifier.count_params():,} parameters, "
            f"{classifier.output.shape[-1]} classes, input normalization mean={shown_mean} std={shown_std}")


def main(argv) -> None:
    print(convert(FLAGS, *_normalization_of(FLAGS.dataset, FLAGS.mean, FLAGS.std)))


def console_main() -> None:
    cli.run(TOOL, define_flags, main)


if __name__ == "__main__":
    console_main()
