"""PGD-K-AT (Madry et al. 2018): K signed projected steps from a uniform random start."""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_fastbat import fields
from tf_fastbat.methods.base import Method
from tf_fastbat.fields import at_least, hparam
from tf_fastbat.methods.common import train_on, project, signed_step


def default_step_size(eps: float, steps: int) -> float:
    """The official rule: 0.5 eps for PGD-2, otherwise the official --attack_lr default of 2/255."""
    return 0.5 * eps if steps == 2 else 2.0 / 255.0


@dataclasses.dataclass(frozen=True)
class PGD(Method):
    steps: int = hparam(2, "PGD-K-AT's attack steps K.", flag="attack_steps", check=at_least(1))
    attack_lr: Optional[float] = fields.attack_lr("0.5 eps for 2 steps, otherwise 2")

    name = "pgd"
    label = "PGD-AT"  # in tables and figures
    smoothed_losses = ("training",)  # FastAT_Benchmark's PGD-AT attack is torchattacks' PGD, its own plain CE

    def step_size(self) -> float:
        return default_step_size(self.eps, self.steps) if self.attack_lr is None else self.attack_lr

    def step(self, model, x, y, noise, context, loss_scale=None):
        del context  # the same update at every step
        delta = project(noise, x, self.eps)
        for _ in range(self.steps):
            delta = project(signed_step(model, x, y, delta, self.step_size(), loss_scale, self.smoothing("attack")),
                            x, self.eps)
        x_adv = x + tf.stop_gradient(delta)
        return train_on(model, x_adv, y, loss_scale, self.smoothing("training"))
