"""The paper's optimizer: PyTorch-style SGD (momentum, coupled L2 weight decay) and its learning-rate schedules."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import keras
from keras import ops


def _momentum_config(momentum):
    return momentum if isinstance(momentum, (int, float)) else keras.optimizers.schedules.serialize(momentum)


def after_scheduler_step(schedule, step):
    """A schedule's value for an optimizer step taken after the scheduler stepped once more within the batch, as in
    LIONS-EPFL/ELLE's trainer (optimizer.step(); scheduler.step(); optimizer.step()): the next step's value for a
    schedule torch steps per batch; the same value for one it steps per epoch (`steps_per_unit` > 1: OneCycleLR as
    FastAT_Benchmark runs it), whose scheduler.step() comes after the epoch's last batch."""
    per_batch = getattr(schedule, "steps_per_unit", 1) == 1
    return schedule(step + 1 if per_batch else step)


@keras.saving.register_keras_serializable(package="tf_fastbat")
class CoupledSGD(keras.optimizers.Optimizer):
    """torch.optim.SGD: g <- g + wd*theta; buf <- m*buf + g; theta <- theta - lr*buf.

    Keras 3's `weight_decay` is decoupled (AdamW-style) and its momentum keeps lr inside the buffer, so
    neither matches the paper's optimizer when the learning rate changes every step. `momentum` is a number or,
    like the learning rate, a schedule of the step (torch's CyclicLR cycles it).

    `steps_per_batch` = n > 1 applies the same gradient n times per `apply` (one optimizer iteration), as torch's
    SGD does when `optimizer.step()` is called n times without `zero_grad` (LIONS-EPFL/ELLE's trainer calls it twice,
    its per-batch scheduler stepped in between): each repeat adds the weight decay of the weights the previous one
    left and updates the momentum buffer again; the first takes the schedules at this iteration, the later ones at
    `after_scheduler_step`. The trainer sets it from its method's `optimizer_steps_per_batch`.
    """

    def __init__(self, learning_rate=0.2, momentum=0.9, l2: float = 5e-4, name: str = "coupled_sgd",
                 steps_per_batch: int = 1, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if isinstance(momentum, dict):
            momentum = keras.optimizers.schedules.deserialize(momentum)
        if isinstance(momentum, (int, float)) and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum}: must be in [0, 1)")
        if l2 < 0:
            raise ValueError(f"l2={l2}: the weight decay must be >= 0")
        self.momentum = momentum
        self.l2 = l2
        self.steps_per_batch = steps_per_batch

    @property
    def steps_per_batch(self) -> int:
        return self._steps_per_batch

    @steps_per_batch.setter
    def steps_per_batch(self, value: int) -> None:
        if int(value) != value or value < 1:
            raise ValueError(f"optimizer steps per batch must be a whole number >= 1, got {value}")
        self._steps_per_batch = int(value)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(reference_variable=v, name="momentum") for v in variables]

    def _momentum_now(self, dtype, repeat: int = 0):
        if callable(self.momentum):
            value = self.momentum(self.iterations) if repeat == 0 else after_scheduler_step(self.momentum,
                                                                                            self.iterations)
            return ops.cast(value, dtype)
        return ops.cast(self.momentum, dtype)

    def _learning_rate_now(self, learning_rate, dtype, repeat: int):
        """`learning_rate` (this iteration's) for the first repeat; a schedule's value after the batch's scheduler
        step for the later ones."""
        schedule = self._learning_rate
        if repeat and isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            learning_rate = after_scheduler_step(schedule, self.iterations)
        return ops.cast(learning_rate, dtype)

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        for repeat in range(self.steps_per_batch):
            decayed = gradient + self.l2 * variable  # the weights the previous repeat left
            self.assign(buffer, self._momentum_now(variable.dtype, repeat) * buffer + decayed)
            self.assign_sub(variable, self._learning_rate_now(learning_rate, variable.dtype, repeat) * buffer)

    def get_config(self):
        return {**super().get_config(), "momentum": _momentum_config(self.momentum), "l2": self.l2,
                "steps_per_batch": self.steps_per_batch}


def set_steps_per_batch(optimizer, steps: int) -> None:
    """Makes `optimizer` (a CoupledSGD, or a LossScaleOptimizer around one) apply each gradient `steps` times."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if isinstance(inner, CoupledSGD):
        inner.steps_per_batch = steps
    elif steps != 1:
        raise ValueError(f"{steps} optimizer steps per batch need tf_fastbat.optim.CoupledSGD (torch's SGD rule), not "
                         f"{type(inner).__name__}")


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


def cosine_phase(start, end, pct):
    """torch OneCycleLR's cosine annealing from `start` to `end` as `pct` goes 0 -> 1."""
    return end + (start - end) / 2.0 * (ops.cos(math.pi * pct) + 1.0)


def one_cycle_phases(total_steps: int, pct_start: float) -> Tuple[float, float]:
    """torch OneCycleLR's two phase ends (two-phase form): pct_start * total - 1, then total - 1."""
    return float(pct_start * total_steps) - 1.0, float(total_steps - 1)


def one_cycle(step, steps_per_unit: int, total_steps: int, pct_start: float, rising: Tuple[float, float],
              falling: Tuple[float, float]):
    """torch OneCycleLR's value at `step` optimizer steps when the scheduler steps every `steps_per_unit` of them:
    cosine `rising` = (start, end) up to the first phase end, then `falling` = (start, end) to the last step
    (held there: the step after training, whose rate Keras logs, gets the final value). In float64 like torch's
    Python floats: in float32, cos near -1 would cost the final epochs' small rates 1e-4 of their value."""
    unit = ops.minimum(ops.floor(ops.cast(step, "float64") / float(steps_per_unit)), float(total_steps - 1))
    first_end, last_end = one_cycle_phases(total_steps, pct_start)
    up = cosine_phase(rising[0], rising[1], unit / first_end if first_end else unit * 0.0)
    down = cosine_phase(falling[0], falling[1], (unit - first_end) / (last_end - first_end))
    return ops.cast(ops.where(unit <= first_end, up, down), "float32")


@keras.saving.register_keras_serializable(package="tf_fastbat")
class OneCycleLR(keras.optimizers.schedules.LearningRateSchedule):
    """torch's OneCycleLR (cosine, two phases): max_lr/div_factor -> max_lr over pct_start of `total_steps`
    scheduler steps, then -> max_lr/(div_factor*final_div_factor); one scheduler step per `steps_per_unit`
    optimizer steps (FastAT_Benchmark calls scheduler.step() once per epoch with total_steps = epochs)."""

    def __init__(self, max_lr: float, total_steps: int, steps_per_unit: int = 1, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        self.max_lr, self.total_steps = float(max_lr), int(total_steps)
        self.steps_per_unit = max(1, int(steps_per_unit))
        self.pct_start = float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        if self.total_steps < 1 or not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"one-cycle schedule needs total_steps >= 1 and pct_start in (0, 1), got "
                             f"{total_steps}, {pct_start}")

    def __call__(self, step):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        return one_cycle(step, self.steps_per_unit, self.total_steps, self.pct_start, (initial, self.max_lr),
                         (self.max_lr, final))

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "steps_per_unit": self.steps_per_unit,
                "pct_start": self.pct_start, "div_factor": self.div_factor, "final_div_factor": self.final_div_factor}


@keras.saving.register_keras_serializable(package="tf_fastbat")
class OneCycleMomentum(keras.optimizers.schedules.LearningRateSchedule):
    """torch OneCycleLR's momentum (cycle_momentum=True): max_momentum -> base_momentum while the lr rises,
    back to max_momentum while it falls, on the same steps as OneCycleLR."""

    def __init__(self, base_momentum: float, max_momentum: float, total_steps: int, steps_per_unit: int = 1,
                 pct_start: float = 0.3):
        self.base_momentum, self.max_momentum = float(base_momentum), float(max_momentum)
        self.total_steps, self.pct_start = int(total_steps), float(pct_start)
        self.steps_per_unit = max(1, int(steps_per_unit))

    def __call__(self, step):
        return one_cycle(step, self.steps_per_unit, self.total_steps, self.pct_start,
                         (self.max_momentum, self.base_momentum), (self.base_momentum, self.max_momentum))

    def get_config(self):
        return {"base_momentum": self.base_momentum, "max_momentum": self.max_momentum,
                "total_steps": self.total_steps, "steps_per_unit": self.steps_per_unit, "pct_start": self.pct_start}


def cyclic_steps(epochs: int, steps_per_epoch: int, cyclic_milestone: float = None) -> Tuple[int, int]:
    """(step_size_up, step_size_down) as the official trainer passes them to CyclicLR (int() truncates)."""
    milestone = epochs / 2 if cyclic_milestone is None else cyclic_milestone
    return int(milestone * steps_per_epoch), int((epochs - milestone) * steps_per_epoch)


def schedule(kind: str, *, epochs: int, steps_per_epoch: int, lr_max: float, lr_min: float = 0.0,
             cyclic_milestone: float = None, key_epochs: Sequence[int] = (), decay: float = 0.1):
    """The --lr_schedule: "cyclic" (peak at `cyclic_milestone` epochs, default mid-run), "multistep", or
    "one_cycle" (torch's OneCycleLR stepped once per epoch, peak lr_max, as FastAT_Benchmark uses it)."""
    if kind == "one_cycle":
        return OneCycleLR(lr_max, epochs, steps_per_epoch)
    if kind == "cyclic":
        return CyclicLR(lr_min, lr_max, *cyclic_steps(epochs, steps_per_epoch, cyclic_milestone))
    if kind == "multistep":
        return MultiStepLR(lr_max, [e * steps_per_epoch for e in key_epochs], decay)
    raise ValueError(f"kind={kind!r}: unknown learning-rate schedule; choose cyclic, multistep or one_cycle")


def momentum_schedule(kind: str, *, momentum: float, cycle_momentum: bool, base_momentum: float = 0.8,
                      epochs: int, steps_per_epoch: int, cyclic_milestone: float = None):
    """SGD's momentum: cycled against the cyclic or one-cycle learning rate (torch's CyclicLR and OneCycleLR
    default), else constant."""
    if kind == "one_cycle" and cycle_momentum:
        return OneCycleMomentum(base_momentum, momentum, epochs, steps_per_epoch)
    if kind == "cyclic" and cycle_momentum:
        return CyclicMomentum(base_momentum, momentum, *cyclic_steps(epochs, steps_per_epoch, cyclic_milestone))
    return momentum
