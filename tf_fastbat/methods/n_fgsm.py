"""N-FGSM (de Jorge et al., NeurIPS 2022): noise U[-2eps, 2eps], one signed step of eps, box clip only."""

from __future__ import annotations

import dataclasses
from typing import Optional

from tf_fastbat import fields
from tf_fastbat.methods.base import Method
from tf_fastbat.fields import PIXEL, hparam
from tf_fastbat.methods.common import clip_to_box, train_on, signed_step


@dataclasses.dataclass(frozen=True)
class NFGSM(Method):
    noise_magnitude: Optional[float] = hparam(None, "N-FGSM's noise magnitude k: the attack starts from U[-k, k] "
                                              "noise.", type=float, unit=PIXEL, default_note="2 eps")
    attack_lr: Optional[float] = fields.attack_lr("eps")  # alpha

    name = "n_fgsm"
    label = "N-FGSM"  # in tables and figures
    smoothed_losses = ("attack", "training")  # FastAT_Benchmark's N-FGSM uses its criterion for both

    def step(self, model, x, y, noise, context, loss_scale=None):
        del context  # the same update at every step
        k = 2.0 * self.eps if self.noise_magnitude is None else self.noise_magnitude
        alpha = self.eps if self.attack_lr is None else self.attack_lr
        # `noise` is U[-eps, eps]; rescaling gives U[-k, k] without a second random draw.
        augmentation = clip_to_box(noise * (k / self.eps), x)
        delta = clip_to_box(signed_step(model, x, y, augmentation, alpha, loss_scale, self.smoothing("attack")), x)
        x_adv = x + delta
        return train_on(model, x_adv, y, loss_scale, self.smoothing("training"))
