"""The paper's optimizer: PyTorch-style SGD (momentum, coupled L2 weight decay) and its learning-rate schedules."""

from __future__ import annotations

from typing import Sequence, Tuple

import keras
from keras import ops


def _momentum_config(momentum):
    return momentum if isinstance(momentum, (int, float)) else keras.optimizers.schedules.serialize(momentum)


@keras.saving.register_keras_serializable(package="tf_fastbat")
class CoupledSGD(keras.optimizers.Optimizer):
    """torch.optim.SGD: g <- g + wd*theta; buf <- m*buf + g; theta <- theta - lr*buf.

    Keras 3's `weight_decay` is decoupled (AdamW-style) and its momentum keeps lr inside the buffer, so
    neither matches the paper's optimizer when the learning rate changes every step. `momentum` is a number or,
    like the learning rate, a schedule of the step (torch's CyclicLR cycles it).
    """

    def __init__(self, learning_rate=0.2, momentum=0.9, l2: float = 5e-4, name: str = "coupled_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if isinstance(momentum, dict):
            momentum = keras.optimizers.schedules.deserialize(momentum)
        if isinstance(momentum, (int, float)) and not 0.0 <= momentum < 1.0:
            raise ValueError(f"--momentum must be in [0, 1), got {momentum}")
        if l2 < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {l2}")
        self.momentum = momentum
        self.l2 = l2

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(reference_variable=v, name="momentum") for v in variables]

    def _momentum_now(self, dtype):
        if callable(self.momentum):
            return ops.cast(self.momentum(self.iterations), dtype)
        return ops.cast(self.momentum, dtype)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype) + self.l2 * variable
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, self._momentum_now(variable.dtype) * buffer + gradient)
        self.assign_sub(variable, lr * buffer)

    def get_config(self):
        return {**super().get_config(), "momentum": _momentum_config(self.momentum), "l2": self.l2}


def triangle(step, up_steps: int, down_steps: int):
    """torch CyclicLR's scale factor, one cycle: 0 -> 1 over `up_steps`, back to 0 over `down_steps`, then 0."""
    step = ops.cast(step, "float32")
    rising = step / up_steps
    falling = 1.0 - (step - up_steps) / down_steps
    return ops.maximum(ops.where(step <= up_steps, rising, falling), 0.0)


@keras.saving.register_keras_serializable(package="tf_fastbat")
class CyclicLR(keras.optimizers.schedules.LearningRateSchedule):
    """torch's CyclicLR learning rate, one triangle: lr_min -> lr_max over `up_steps`, back over `down_steps`."""

    def __init__(self, lr_min: float, lr_max: float, up_steps: int, down_steps: int):
        self.lr_min, self.lr_max = float(lr_min), float(lr_max)
        self.up_steps, self.down_steps = max(1, int(up_steps)), max(1, int(down_steps))

    def __call__(self, step):
        return self.lr_min + (self.lr_max - self.lr_min) * triangle(step, self.up_steps, self.down_steps)

    def get_config(self):
        return {"lr_min": self.lr_min, "lr_max": self.lr_max, "up_steps": self.up_steps,
                "down_steps": self.down_steps}


@keras.saving.register_keras_serializable(package="tf_fastbat")
class CyclicMomentum(keras.optimizers.schedules.LearningRateSchedule):
    """torch CyclicLR's momentum (cycle_momentum=True): max_momentum falling to base_momentum at the lr peak."""

    def __init__(self, base_momentum: float, max_momentum: float, up_steps: int, down_steps: int):
        self.base_momentum, self.max_momentum = float(base_momentum), float(max_momentum)
        self.up_steps, self.down_steps = max(1, int(up_steps)), max(1, int(down_steps))

    def __call__(self, step):
        drop = (self.max_momentum - self.base_momentum) * triangle(step, self.up_steps, self.down_steps)
        return self.max_momentum - drop

    def get_config(self):
        return {"base_momentum": self.base_momentum, "max_momentum": self.max_momentum, "up_steps": self.up_steps,
                "down_steps": self.down_steps}


@keras.saving.register_keras_serializable(package="tf_fastbat")
class MultiStepLR(keras.optimizers.schedules.LearningRateSchedule):
    """torch's MultiStepLR: lr_max times decay^(number of milestones passed)."""

    def __init__(self, lr_max: float, milestones: Sequence[int], decay: float):
        self.lr_max, self.milestones, self.decay = float(lr_max), [int(m) for m in milestones], float(decay)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = sum(ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
        return self.lr_max * ops.power(self.decay, passed)

    def get_config(self):
        return {"lr_max": self.lr_max, "milestones": self.milestones, "decay": self.decay}


def cyclic_steps(epochs: int, steps_per_epoch: int, cyclic_milestone: float = None) -> Tuple[int, int]:
    """(step_size_up, step_size_down) as the official trainer passes them to CyclicLR (int() truncates)."""
    milestone = epochs / 2 if cyclic_milestone is None else cyclic_milestone
    return int(milestone * steps_per_epoch), int((epochs - milestone) * steps_per_epoch)


def schedule(kind: str, *, epochs: int, steps_per_epoch: int, lr_max: float, lr_min: float = 0.0,
             cyclic_milestone: float = None, key_epochs: Sequence[int] = (), decay: float = 0.1):
    """The --lr_schedule: "cyclic" (peak at `cyclic_milestone` epochs, default mid-run) or "multistep"."""
    if kind == "cyclic":
        return CyclicLR(lr_min, lr_max, *cyclic_steps(epochs, steps_per_epoch, cyclic_milestone))
    if kind == "multistep":
        return MultiStepLR(lr_max, [e * steps_per_epoch for e in key_epochs], decay)
    raise ValueError(f"unknown --lr_schedule {kind!r}; choose cyclic or multistep")


def momentum_schedule(kind: str, *, momentum: float, cycle_momentum: bool, base_momentum: float = 0.8,
                      epochs: int, steps_per_epoch: int, cyclic_milestone: float = None):
    """SGD's momentum: cycled against the cyclic learning rate (torch's CyclicLR default), else constant."""
    if kind == "cyclic" and cycle_momentum:
        return CyclicMomentum(base_momentum, momentum, *cyclic_steps(epochs, steps_per_epoch, cyclic_milestone))
    return momentum
