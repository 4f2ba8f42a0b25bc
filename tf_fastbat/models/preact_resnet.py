"""Pre-activation ResNets (He et al. 2016) with the CIFAR stem, as in the Fast-BAT model zoo."""

from __future__ import annotations

import keras

from tf_fastbat.models.layers import activation, batch_norm, classifier_head, conv, scaled

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _preact_block(x, planes, stride, act, prefix, preact_shortcut):
    out = activation(act)(batch_norm(f"{prefix}_bn1")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:  # the zoo (and Wong et al.) project the raw x; pytorch-cifar bn-relu(x)
        shortcut = conv(planes, 1, stride, name=f"{prefix}_shortcut")(out if preact_shortcut else x)
    out = conv(planes, 3, stride, name=f"{prefix}_conv1")(out)
    out = conv(planes, 3, 1, name=f"{prefix}_conv2")(activation(act)(batch_norm(f"{prefix}_bn2")(out)))
    return keras.layers.Add(name=f"{prefix}_add")([out, shortcut])


def _preact_bottleneck(x, planes, stride, act, prefix, preact_shortcut):
    expansion_planes = 4 * planes
    out = activation(act)(batch_norm(f"{prefix}_bn1")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != expansion_planes:  # every version projects bn-relu(x) here
        shortcut = conv(expansion_planes, 1, stride, name=f"{prefix}_shortcut")(out)
    out = conv(planes, 1, 1, name=f"{prefix}_conv1")(out)
    out = conv(planes, 3, stride, name=f"{prefix}_conv2")(activation(act)(batch_norm(f"{prefix}_bn2")(out)))
    out = conv(expansion_planes, 1, 1, name=f"{prefix}_conv3")(activation(act)(batch_norm(f"{prefix}_bn3")(out)))
    return keras.layers.Add(name=f"{prefix}_add")([out, shortcut])


def preact_resnet(inputs, normalized, depth: int, num_classes: int, act: str, width_multiplier: float,
                  final_bn: bool = True, preact_shortcut: bool = False):
    """Logits of PreActResNet-{18,34,50} for `normalized` images.

    The zoo's by default. `final_bn=False` pools the last block's sum directly (no BN, no activation), as
    RobustBench's PreActResNet and pytorch-cifar's do; `preact_shortcut=True` projects bn-act(x) in the basic
    block, as pytorch-cifar's does.
    """
    kind, blocks = DEPTHS[depth]
    block = _preact_block if kind == "basic" else _preact_bottleneck
    x = conv(scaled(64, width_multiplier), 3, 1, name="stem_conv")(normalized)
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(x, scaled(planes, width_multiplier), stride, act, f"stage{stage + 1}_block{i + 1}",
                      preact_shortcut)
    if final_bn:
        x = activation(act)(batch_norm("final_bn")(x))
    return classifier_head(x, num_classes)
