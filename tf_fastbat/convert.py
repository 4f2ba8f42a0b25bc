"""python -m tf_fastbat.convert --torch_checkpoint=PATH --model=preact_resnet18 --output=model.keras

A PyTorch checkpoint (the official Fast-BAT trainer's, RobustBench's PreActResNet-18) as a .keras classifier that
maps [0, 1] images to the same logits; see tf_fastbat.models.torch_import. A checkpoint that does not fit the
architecture is one line naming the keys, and exit status 2, before anything is written.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app, flags

from tf_fastbat.config import ConfigError

FLAGS = flags.FLAGS
LAYOUTS = ("auto", "zoo", "robustbench", "kuangliu")  # == torch_import.LAYOUTS (kept here: flags parse before TF)


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program."""
    flags.DEFINE_string("torch_checkpoint", None, "A torch.save file: a state dict, or a dict holding one.")
    flags.DEFINE_string("model", None, "Architecture (a tf_fastbat.models name), e.g. preact_resnet18.")
    flags.DEFINE_string("output", None, "Where the Keras model goes (.keras).")
    flags.DEFINE_integer("num_classes", None, "Classes (default: the rows of the checkpoint's linear layer).")
    flags.DEFINE_enum("activation", "relu", ["relu", "softplus", "swish"], "The checkpoint's activation.")
    flags.DEFINE_float("width_multiplier", 1.0, "Channel multiplier the checkpoint was trained at.")
    flags.DEFINE_enum("layout", "auto", list(LAYOUTS),
                      "Module tree: zoo (the official model zoo), robustbench (its PreActResNet: the final BN only "
                      "if the checkpoint holds one), kuangliu (pytorch-cifar's PreActResNet: also projects "
                      "bn-relu(x) in its shortcut); auto: zoo, or robustbench for a PreActResNet without final BN.")
    flags.DEFINE_string("dataset", None, "Normalization of this dataset (cifar10, cifar100, svhn_cropped, "
                        "imagenet2012) when the checkpoint holds no mean/std buffers.")
    flags.DEFINE_list("mean", [], "Per-channel input mean when the checkpoint holds none (with --std).")
    flags.DEFINE_list("std", [], "Per-channel input std when the checkpoint holds none (with --mean).")
    flags.DEFINE_integer("image_size", 32, "Input height and width of the Keras model.")
    flags.DEFINE_string("checkpoint_key", None, "The entry of the file that holds the state dict (default: the "
                        "file itself, else state_dict, model_state_dict, model, net or last).")


def _fail(message: str) -> None:
    sys.stderr.write(f"tf_fastbat.convert: error: {message}\n")
    sys.exit(2)


def _floats(values: List[str], flag: str) -> Optional[List[float]]:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ConfigError(f"--{flag}={','.join(values)}: not a list of numbers") from None


def _normalization(f) -> Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]:
    """(mean, std) from --mean/--std or --dataset, (None, None) to take the checkpoint's."""
    mean, std = _floats(f.mean, "mean"), _floats(f.std, "std")
    if f.dataset is None:
        return mean, std
    if mean is not None or std is not None:
        raise ConfigError("--dataset and --mean/--std exclude each other")
    from tf_fastbat.data.sources import NORMALIZATION

    if f.dataset not in NORMALIZATION:
        raise ConfigError(f"--dataset={f.dataset}: no normalization known; choose one of "
                          f"{', '.join(NORMALIZATION)} or pass --mean/--std")
    return NORMALIZATION[f.dataset]


def _validate(f) -> None:
    """Bad flags fail here, before torch and TensorFlow load."""
    for name in ("torch_checkpoint", "model", "output"):
        if not getattr(f, name):
            raise ConfigError(f"--{name} is required")
    if not os.path.isfile(f.torch_checkpoint):
        raise ConfigError(f"--torch_checkpoint={f.torch_checkpoint}: file not found")
    if not f.output.endswith(".keras"):
        raise ConfigError(f"--output={f.output}: must end with .keras")
    if f.image_size <= 0:
        raise ConfigError(f"--image_size={f.image_size}: must be positive")


def convert(f, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> str:
    """Read, check and convert the checkpoint, then write the .keras file (complete or not at all)."""
    from tf_fastbat.models import from_torch

    classifier = from_torch(f.torch_checkpoint, f.model, num_classes=f.num_classes, activation=f.activation,
                            width_multiplier=f.width_multiplier, layout=f.layout, mean=mean, std=std,
                            input_shape=(f.image_size, f.image_size, 3), checkpoint_key=f.checkpoint_key)
    directory = os.path.dirname(os.path.abspath(f.output))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".{os.path.basename(f.output)}.partial.keras")
    try:
        classifier.save(partial)
        os.replace(partial, f.output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    normalize = classifier.get_layer("normalize")
    shown_mean = ",".join(f"{v:.6g}" for v in normalize.input_mean)
    shown_std = ",".join(f"{v ** 0.5:.6g}" for v in normalize.input_variance)
    return (f"wrote {f.output}: {f.model}, {classifier.count_params():,} parameters, {classifier.output.shape[-1]} "
            f"classes, input normalization mean={shown_mean} std={shown_std}")


def main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        _validate(FLAGS)
        mean, std = _normalization(FLAGS)
    except ConfigError as error:
        _fail(str(error))
    from tf_fastbat.models.torch_import import TorchImportError

    try:
        print(convert(FLAGS, mean, std))
    except (TorchImportError, FileNotFoundError) as error:
        _fail(str(error))


if __name__ == "__main__":
    define_flags()
    app.run(main)
