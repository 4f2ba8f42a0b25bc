"""Standard (non-adversarial) training: the clean batch is the training input."""

from __future__ import annotations

import dataclasses

from tf_fastbat.methods.base import Method
from tf_fastbat.methods.common import train_on


@dataclasses.dataclass(frozen=True)
class Standard(Method):
    name = "standard"
    label = "Standard"  # in tables and figures
    eps_may_be_zero = True  # nothing is attacked
    smoothed_losses = ("training",)

    def step(self, model, x, y, noise, context, loss_scale=None):
        del noise, context  # the clean batch, at any point of training
        return train_on(model, x, y, loss_scale, self.smoothing("training"))
