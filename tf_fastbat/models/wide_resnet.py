"""Wide ResNets as in the Fast-BAT model zoo: each stage a downsampling unit plus (depth-4)/6 basic units."""

from __future__ import annotations

import keras

from tf_fastbat.models.layers import activation, batch_norm, classifier_head, conv, he_normal, scaled


def _basic_unit(x, channels, dropout, act, prefix):
    out = activation(act)(batch_norm(f"{prefix}_bn1")(x))
    out = conv(channels, 3, 1, name=f"{prefix}_conv1", initializer=he_normal)(out)
    out = keras.layers.Dropout(dropout)(activation(act)(batch_norm(f"{prefix}_bn2")(out)))
    out = conv(channels, 3, 1, name=f"{prefix}_conv2", initializer=he_normal)(out)
    return keras.layers.Add()([x, out])


def _downsample_unit(x, channels, stride, dropout, act, prefix):
    x = activation(act)(batch_norm(f"{prefix}_bn1")(x))
    out = conv(channels, 3, stride, name=f"{prefix}_conv1", initializer=he_normal)(x)
    out = keras.layers.Dropout(dropout)(activation(act)(batch_norm(f"{prefix}_bn2")(out)))
    out = conv(channels, 3, 1, name=f"{prefix}_conv2", initializer=he_normal)(out)
    shortcut = conv(channels, 1, stride, name=f"{prefix}_downsample", initializer=he_normal)(x)
    return keras.layers.Add()([out, shortcut])


def wide_resnet(inputs, normalized, depth: int, widen: int, num_classes: int, act: str, width_multiplier: float,
                dropout: float = 0.1):
    """Logits of WRN-depth-widen."""
    units = (depth - 4) // 6
    x = conv(scaled(16, width_multiplier), 3, 1, name="stem_conv", initializer=he_normal)(normalized)
    for stage, channels in enumerate((16 * widen, 32 * widen, 64 * widen)):
        channels = scaled(channels, width_multiplier)
        stride = 1 if stage == 0 else 2
        x = _downsample_unit(x, channels, stride, dropout, act, f"stage{stage + 1}_down")
        for i in range(units):
            x = _basic_unit(x, channels, dropout, act, f"stage{stage + 1}_unit{i + 1}")
    x = activation(act)(batch_norm("final_bn")(x))
    return classifier_head(x, num_classes, zero_init=True)
