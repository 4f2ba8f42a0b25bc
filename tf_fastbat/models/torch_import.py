"""PyTorch checkpoints as `models.build` classifiers: the official Fast-BAT model zoo's parameter names, and the
PreActResNet-18 of RobustBench (Wong2020Fast, Andriushchenko2020Understanding) and of pytorch-cifar.

torch is imported only to read the file. A checkpoint that does not fit (another architecture, a missing or extra
key, another shape) is one TorchImportError naming the keys, raised before any weight is copied.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from tf_fastbat import models
from tf_fastbat.errors import UsageError

# zoo: the official model_zoo.py. robustbench: RobustBench's PreActResNet(PreActBlock), its final BN optional
# (bn_before_fc; Wong2020Fast and Andriushchenko2020Understanding have none). kuangliu: pytorch-cifar's
# PreActResNet, whose basic block projects bn-relu(x) (RobustBench's out_shortcut / PreActBlockV2). For ResNets
# all three are the same module tree; a WideResNet has only the zoo's.
LAYOUTS = ("auto", "zoo", "robustbench", "kuangliu")
# Where a dict that is not itself a state dict keeps one: our own choice of common names, then RobustBench's
# Andriushchenko2020Understanding file ({"last": ..., "best": ...}, of which RobustBench evaluates "last").
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "last")
# Input normalization buffers: the zoo's NormalizeByChannelMeanStd (`normalize.mean`), RobustBench's Wong2020FastNet
# (`mu`, `sigma`) and a wrapper's (`0.mean`, ...).
NORMALIZATION_NAMES = {"mean": "mean", "mu": "mean", "std": "std", "sigma": "std"}
TORCH_VARIABLES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                   "moving_mean": "running_mean", "moving_variance": "running_var"}
SHOWN_KEYS = 4


TorchImportError = UsageError  # a checkpoint that cannot become the requested model; names the file and the keys


class NoNormalization(TorchImportError):
    """A checkpoint without input-normalization buffers, and no mean and std given: the caller says where they
    come from (the conversion tool names its flags)."""

    def __init__(self, source: str):
        super().__init__(f"{source} holds no input normalization (mean/std buffers): pass mean and std (RobustBench: "
                         "Wong2020Fast, CIFAR-10's; Andriushchenko2020Understanding, mean=(0, 0, 0) and std=(1, 1, 1))")
        self.source = source


class Target(NamedTuple):
    """One Keras variable and the torch parameter that fills it."""

    key: str
    variable: Any
    transpose: Optional[Tuple[int, ...]]


def from_torch(checkpoint: Union[str, os.PathLike, Mapping[str, Any]], model: str, *,
               num_classes: Optional[int] = None, activation: str = "relu", width_multiplier: float = 1.0,
               layout: str = "auto", mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               input_shape: Tuple[int, int, int] = (32, 32, 3), checkpoint_key: Optional[str] = None) -> keras.Model:
    """The Keras `model` (a models.NAMES entry) holding the weights of a torch state dict, or of a file holding one.

    `layout` names the torch module tree (LAYOUTS); "auto" is the zoo's, or RobustBench's for a PreActResNet without
    the final BN. The normalization comes from the checkpoint's mean/std buffers, else from `mean` and `std`.
    """
    family = _family(model, layout)
    if isinstance(checkpoint, Mapping):
        source, state = "the state dict", _numpy(_state_dict_of(checkpoint, checkpoint_key, "the state dict"))
    else:
        source, state = os.fspath(checkpoint), read_state_dict(checkpoint, checkpoint_key)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state, buffers = _split_normalization(state, source)
    mean, std = _normalization(buffers, mean, std, source, input_shape[-1])
    final_bn = _has_final_bn(state)
    if layout == "auto":
        layout = "robustbench" if family == "preact" and not final_bn else "zoo"
    options = {}
    if family == "preact":  # the zoo's always has the final BN (a missing one is named); the others as they hold
        options = {"final_bn": layout == "zoo" or final_bn, "preact_shortcut": layout == "kuangliu"}
    if num_classes is None:
        num_classes = _num_classes(state)
    classifier = models.build(model, num_classes, activation, width_multiplier, input_shape, mean, std, **options)
    targets = torch_targets(classifier, family)
    prefix = _model_prefix(state, {t.key for t in targets})
    _check_keys(state, prefix, targets, f"{model} ({layout} layout)", source)
    _check_shapes(state, prefix, targets, model, source, width_multiplier, num_classes)
    for target in targets:
        value = state[prefix + target.key]
        if target.transpose:
            value = np.transpose(value, target.transpose)
        target.variable.assign(value.astype(target.variable.dtype))
    return classifier


def read_state_dict(path: Union[str, os.PathLike], checkpoint_key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The tensors of a torch.save file (a state dict, or a dict holding one), read with weights_only as numpy."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and RuntimeError types for foreign or unsafe files
        raise TorchImportError(f"cannot read {path} as a PyTorch checkpoint: {_reason(error)} (read with "
                               "weights_only, which takes tensors and plain containers only: save a state dict)"
                               ) from error
    return _numpy(_state_dict_of(saved, checkpoint_key, path))


def _reason(error: Exception) -> str:
    """The informative sentence of torch.load's error (its weights_only errors are paragraphs of advice)."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(" was not an allowed global")[0] if lines else type(error).__name__


def _state_dict_of(saved: Any, checkpoint_key: Optional[str], source: str) -> Mapping[str, Any]:
    if checkpoint_key:
        if not isinstance(saved, Mapping) or checkpoint_key not in saved:
            raise TorchImportError(f"checkpoint_key={checkpoint_key}: no such entry in {source}")
        return _state_dict_of(saved[checkpoint_key], None, source)
    if isinstance(saved, Mapping) and saved and all(_is_tensor(v) for v in saved.values()):
        return saved
    if isinstance(saved, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(saved.get(key), Mapping):
                return _state_dict_of(saved[key], None, source)
        entries = ", ".join(str(k) for k in list(saved)[:8])
        raise TorchImportError(f"{source} holds no state dict (its entries: {entries}); name one with checkpoint_key")
    raise TorchImportError(f"{source} holds a {type(saved).__name__}, not a state dict")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") or isinstance(value, np.ndarray)


def _numpy(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """float32 numpy copies of the floating tensors (half-precision checkpoints included), others as they are."""
    arrays = {}
    for key, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        value = np.asarray(value)
        arrays[str(key)] = value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    return arrays


def _family(model: str, layout: str) -> str:
    """preact, resnet or wrn: which module tree `model` has; refuses layouts that the architecture lacks."""
    if model not in models.NAMES:
        raise TorchImportError(f"architecture={model!r}: unknown; choose one of {', '.join(models.NAMES)}")
    if layout not in LAYOUTS:
        raise TorchImportError(f"layout={layout!r}: unknown; choose one of {', '.join(LAYOUTS)}")
    if model == "resnet50_imagenet":
        raise TorchImportError("architecture=resnet50_imagenet has no PyTorch layout here: the zoo's 7x7 stem "
                               "(conv1_size=7) has no max-pool, so its checkpoints would give other logits")
    family = "preact" if model.startswith("preact_resnet") else "wrn" if model.startswith("wrn") else "resnet"
    if family == "wrn" and layout in ("robustbench", "kuangliu"):
        raise TorchImportError(f"layout={layout} is a PreActResNet/ResNet module tree; architecture={model} has "
                               "only the zoo's (RobustBench's WideResNet is another one)")
    return family


def _split_normalization(state: Dict[str, np.ndarray], source: str):
    """The state without its input-normalization buffers, and those as {parent: {"mean": .., "std": ..}}."""
    kept, buffers = {}, collections.defaultdict(dict)
    for key, value in state.items():
        parent, _, name = key.rpartition(".")
        if name in NORMALIZATION_NAMES:
            buffers[parent][NORMALIZATION_NAMES[name]] = (key, value)
        else:
            kept[key] = value
    for parent, pair in buffers.items():
        if set(pair) != {"mean", "std"}:
            raise TorchImportError(f"{source}: {next(iter(pair.values()))[0]} has no matching mean/std buffer")
    if len(buffers) > 1:
        keys = ", ".join(key for pair in buffers.values() for key, _ in pair.values())
        raise TorchImportError(f"{source} holds several input normalizations: {keys}")
    return kept, next(iter(buffers.values()), None)


def _normalization(buffers, mean, std, source: str, channels: int) -> Tuple[List[float], List[float]]:
    """The checkpoint's mean/std, else the given ones; both given must agree, since either changes every logit."""
    if (mean is None) != (std is None):
        raise TorchImportError("mean and std go together (give both or neither)")
    given = None if mean is None else (_channel_values(mean, f"mean={_shown(mean)}", channels),
                                       _channel_values(std, f"std={_shown(std)}", channels))
    if buffers is None:
        if given is None:
            raise NoNormalization(source)
        return given
    (mean_key, mean_value), (std_key, std_value) = buffers["mean"], buffers["std"]
    stored = (_channel_values(mean_value, mean_key, channels), _channel_values(std_value, std_key, channels))
    if given is not None and not np.allclose(given, stored, rtol=0, atol=1e-6):
        raise TorchImportError(f"the given mean/std {given[0]}/{given[1]} differ from "
                               f"{source}'s {mean_key}/{std_key} {stored[0]}/{stored[1]}; drop them to use the "
                               "checkpoint's")
    return stored


def _shown(values) -> str:
    """Given mean or std values as a comma list."""
    return ",".join(f"{float(v):g}" for v in np.asarray(values).reshape(-1))


def _channel_values(values, name: str, channels: int) -> List[float]:
    """Per-channel values as floats; a float32 buffer's as its shortest decimals (0.247, not 0.24699999392)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size != channels:
        raise TorchImportError(f"{name}: {flat.size} values for {channels} input channels")
    return [float(str(v)) if isinstance(v, np.float32) else float(v) for v in flat]


def _has_final_bn(state: Mapping[str, np.ndarray]) -> bool:
    """Whether the PreActResNet's `bn` sits beside its `linear` (the zoo's, Wong et al.'s) or is absent
    (RobustBench's, pytorch-cifar's)."""
    prefixes = {key[:-len("linear.weight")] for key in state if re.fullmatch(r"(.*\.)?linear\.weight", key)}
    return any(prefix + "bn.weight" in state for prefix in prefixes)


def _num_classes(state: Mapping[str, np.ndarray]) -> int:
    """The rows of the `linear` layer (10 when there is none: the key check then names it)."""
    for key, value in state.items():
        if re.fullmatch(r"(.*\.)?linear\.weight", key) and value.ndim == 2:
            return int(value.shape[0])
    return 10


# ----------------------------------------------------------------------------------------------------------------
# Keras layer names -> torch module paths.

def torch_targets(classifier: keras.Model, family: str) -> List[Target]:
    """Every variable of `classifier` with its torch key (relative to the module tree) and layout change."""
    module_path = {"preact": preact_module, "resnet": resnet_module, "wrn": wrn_module}[family]
    targets = []
    for layer in classifier.layers:
        if not layer.weights or layer.name == "normalize":
            continue
        path = module_path(layer.name)
        for variable in layer.weights:
            transpose = None
            if isinstance(layer, keras.layers.Conv2D) and variable.name == "kernel":
                transpose = (2, 3, 1, 0)  # OIHW -> HWIO
            elif isinstance(layer, keras.layers.Dense) and variable.name == "kernel":
                transpose = (1, 0)  # (out, in) -> (in, out)
            targets.append(Target(f"{path}.{TORCH_VARIABLES[variable.name]}", variable, transpose))
    return targets


def _fixed(layer: str, names: Mapping[str, str]) -> str:
    if layer not in names:
        raise RuntimeError(f"no torch module for the Keras layer {layer!r}")
    return names[layer]


def preact_module(layer: str) -> str:
    """PreActResNet: stage2_block1_conv1 -> layer2.0.conv1 (zoo, Wong et al., RobustBench and pytorch-cifar)."""
    match = re.fullmatch(r"stage(\d+)_block(\d+)_(bn\d|conv\d|shortcut)", layer)
    if match:
        stage, block, part = match.groups()
        return f"layer{stage}.{int(block) - 1}.{'shortcut.0' if part == 'shortcut' else part}"
    return _fixed(layer, {"stem_conv": "conv1", "final_bn": "bn", "logits": "linear"})


def resnet_module(layer: str) -> str:
    """ResNet: stage2_block1_shortcut_bn -> layer2.0.shortcut.1 (the zoo's BasicBlock/Bottleneck)."""
    match = re.fullmatch(r"stage(\d+)_block(\d+)_(bn\d|conv\d|shortcut|shortcut_bn)", layer)
    if match:
        stage, block, part = match.groups()
        part = {"shortcut": "shortcut.0", "shortcut_bn": "shortcut.1"}.get(part, part)
        return f"layer{stage}.{int(block) - 1}.{part}"
    return _fixed(layer, {"stem_conv": "conv1", "stem_bn": "bn1", "logits": "linear"})


WRN_DOWNSAMPLE_UNIT = {"bn1": "norm_act.0_normalization", "conv1": "block.0_convolution",
                       "bn2": "block.1_normalization", "conv2": "block.4_convolution", "downsample": "downsample"}
WRN_BASIC_UNIT = {"bn1": "block.0_normalization", "conv1": "block.2_convolution", "bn2": "block.3_normalization",
                  "conv2": "block.6_convolution"}


def wrn_module(layer: str) -> str:
    """WideResNet: stage2_unit1_conv1 -> f.2_block.block.1.block.2_convolution (the zoo's nn.Sequential names)."""
    match = re.fullmatch(r"stage(\d+)_(down|unit(\d+))_(\w+)", layer)
    if match:
        stage, kind, unit, part = match.groups()
        parts = WRN_DOWNSAMPLE_UNIT if kind == "down" else WRN_BASIC_UNIT
        return f"f.{stage}_block.block.{unit or 0}.{_fixed(part, parts)}"
    return _fixed(layer, {"stem_conv": "f.0_convolution", "final_bn": "f.4_normalization", "logits": "linear"})


# ----------------------------------------------------------------------------------------------------------------
# Checks: the checkpoint's keys and shapes against the model's.

def _model_prefix(state: Mapping[str, np.ndarray], expected: set) -> str:
    """What the checkpoint puts before the module tree's names: "", "module." (DataParallel), "1." or "model."
    (a normalization wrapper)...; the prefix under which most expected names occur."""
    counts = collections.Counter()
    for key in state:
        parts = key.split(".")
        for cut in range(len(parts)):
            if ".".join(parts[cut:]) in expected:
                counts["".join(p + "." for p in parts[:cut])] += 1
    return max(counts, key=lambda prefix: (counts[prefix], -len(prefix))) if counts else ""


def _check_keys(state: Mapping[str, np.ndarray], prefix: str, targets: List[Target], architecture: str,
                source: str) -> None:
    expected = {prefix + t.key for t in targets}
    missing = [prefix + t.key for t in targets if prefix + t.key not in state]
    extra = [key for key in state if key not in expected]
    if not missing and not extra:
        return
    problems = [f"missing {_listed(missing)}"] if missing else []
    problems += [f"unexpected {_listed(extra)}"] if extra else []
    raise TorchImportError(f"{source} does not hold a {architecture}: {'; '.join(problems)}")


def _check_shapes(state: Mapping[str, np.ndarray], prefix: str, targets: List[Target], model: str, source: str,
                  width_multiplier: float, num_classes: int) -> None:
    wrong = []
    for target in targets:
        shape = tuple(target.variable.shape)
        if target.transpose:
            shape = tuple(shape[target.transpose.index(axis)] for axis in range(len(shape)))
        found = tuple(state[prefix + target.key].shape)
        if found != shape:
            wrong.append(f"{prefix + target.key} is {found} there, {shape} here")
    if wrong:
        raise TorchImportError(f"{source} does not fit {model} at width_multiplier={width_multiplier:g}, "
                               f"num_classes={num_classes}: {_listed(wrong)}")


def _listed(items: List[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return f"{shown} (+{len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else shown
