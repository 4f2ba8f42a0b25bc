"""Fast-AT (FGSM-RS, Wong et al. 2020): one signed step of 1.25 eps from a uniform random start."""

from __future__ import annotations

import dataclasses
from typing import Optional

from tf_fastbat import fields
from tf_fastbat.methods.base import Method
from tf_fastbat.methods.common import train_on, project, signed_step


@dataclasses.dataclass(frozen=True)
class FastAT(Method):
    attack_lr: Optional[float] = fields.attack_lr("1.25 eps, as in the official code")

    name = "fast_at"
    label = "Fast-AT"  # in tables and figures
    smoothed_losses = ("attack", "training")  # FastAT_Benchmark's FGSM-RS uses its criterion for both

    def step_size(self) -> float:
        return 1.25 * self.eps if self.attack_lr is None else self.attack_lr

    def step(self, model, x, y, noise, context, loss_scale=None):
        del context  # the same update at every step
        random_start = project(noise, x, self.eps)
        delta = project(signed_step(model, x, y, random_start, self.step_size(), loss_scale, self.smoothing("attack")),
                        x, self.eps)
        x_adv = x + delta
        return train_on(model, x_adv, y, loss_scale, self.smoothing("training"))
