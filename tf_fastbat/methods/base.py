"""The interface every training method implements."""

from __future__ import annotations

import dataclasses
from typing import List, NamedTuple, Optional

import tensorflow as tf


class Step(NamedTuple):
    """What one method step produces: gradients (aligned with trainable_variables), the training input, its logits."""

    grads: List[tf.Tensor]
    x_adv: tf.Tensor
    logits: tf.Tensor


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method; `eps` and step sizes are fractions of the [0, 1] pixel range (8/255, not 8)."""

    eps: float = 8.0 / 255.0

    name = "method"

    def step(self, model, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor,
             loss_scale: Optional[tf.Tensor] = None) -> Step:
        """Gradient of the batch-mean objective (weight decay excluded), the input used, and its logits.

        With `loss_scale` S (float16 training) every differentiated loss is multiplied by S: the returned
        gradients are S times the true ones (the LossScaleOptimizer divides S out); attack directions are not.
        """
        raise NotImplementedError

    def gradients(self, model, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor):
        """(grads, x_adv): the pure interface of the design card."""
        result = self.step(model, x, y, noise)
        return result.grads, result.x_adv

    def hparams(self) -> dict:
        """Hyperparameters, for reports and export metadata."""
        return {"method": self.name, **dataclasses.asdict(self)}
