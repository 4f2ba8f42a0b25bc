"""ResNets (He et al. 2015) with the CIFAR stem (3x3 conv) or the ImageNet stem (7x7/2 conv and max-pool)."""

from __future__ import annotations

import keras

from tf_fastbat.models.layers import activation, batch_norm, classifier_head, conv, scaled

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


@keras.saving.register_keras_serializable(package="tf_fastbat")
class MaxPoolPadding2D(keras.layers.Layer):
    """Pads height and width by `padding` with -inf, as torch's MaxPool2d(padding=p) does: no pad is ever the
    maximum, whatever the activations' sign (zero padding would be one after swish)."""

    def __init__(self, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, x):
        p = self.padding
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf"))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, *(None if size is None else size + 2 * self.padding for size in (height, width)), channels)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


def _basic_block(x, planes, stride, act, prefix):
    out = activation(act)(batch_norm(f"{prefix}_bn1")(conv(planes, 3, stride, name=f"{prefix}_conv1")(x)))
    out = batch_norm(f"{prefix}_bn2")(conv(planes, 3, 1, name=f"{prefix}_conv2")(out))
    return activation(act)(keras.layers.Add()([out, _shortcut(x, planes, stride, prefix)]))


def _bottleneck(x, planes, stride, act, prefix):
    out = activation(act)(batch_norm(f"{prefix}_bn1")(conv(planes, 1, 1, name=f"{prefix}_conv1")(x)))
    out = activation(act)(batch_norm(f"{prefix}_bn2")(conv(planes, 3, stride, name=f"{prefix}_conv2")(out)))
    out = batch_norm(f"{prefix}_bn3")(conv(4 * planes, 1, 1, name=f"{prefix}_conv3")(out))
    return activation(act)(keras.layers.Add()([out, _shortcut(x, 4 * planes, stride, prefix)]))


def _shortcut(x, planes, stride, prefix):
    if stride == 1 and x.shape[-1] == planes:
        return x
    return batch_norm(f"{prefix}_shortcut_bn")(conv(planes, 1, stride, name=f"{prefix}_shortcut")(x))


def resnet(inputs, normalized, depth: int, num_classes: int, act: str, width_multiplier: float, stem: str):
    """Logits of ResNet-{18,34,50}; `stem` is "cifar" or "imagenet" (torchvision's: 7x7/2 conv, 3x3/2 max-pool)."""
    kind, blocks = DEPTHS[depth]
    block = _basic_block if kind == "basic" else _bottleneck
    if stem == "imagenet":
        x = conv(scaled(64, width_multiplier), 7, 2, name="stem_conv")(normalized)
        x = activation(act)(batch_norm("stem_bn")(x))
        x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(
            MaxPoolPadding2D(1, name="stem_pool_pad")(x))
    else:
        x = conv(scaled(64, width_multiplier), 3, 1, name="stem_conv")(normalized)
        x = activation(act)(batch_norm("stem_bn")(x))
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(x, scaled(planes, width_multiplier), stride, act, f"stage{stage + 1}_block{i + 1}")
    return classifier_head(x, num_classes)
