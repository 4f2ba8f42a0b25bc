"""Weight averaging as FastAT_Benchmark does it: an exponential moving average of the whole classifier state.

The benchmark keeps `exp_avg[key] = (1 - tau) * value + tau * exp_avg[key]` over `model.state_dict()` after every
`opt.step()`: every weight and BatchNorm's running mean and variance, with a constant tau (no warm-up). Its
`exp_avg` starts as the state dict itself, whose tensors alias the live parameters, so its first update yields
the weights after the first step: the average starts there. Keras' optimizer `use_ema` averages trainable
variables only (not BatchNorm's statistics) and writes the average into the model at the end of every `fit`,
so it is not used; the average here is a second classifier, which is what is validated, checkpointed and
reported.
"""

from __future__ import annotations

from typing import List, Tuple

import keras
import tensorflow as tf


def _blend(average: tf.Variable, current: tf.Variable, decay: tf.Tensor) -> None:
    decay = tf.cast(decay, average.dtype)
    average.assign((1.0 - decay) * current + decay * average)


def _blend_all(strategy: tf.distribute.Strategy, pairs: List[Tuple[tf.Variable, tf.Variable]],
               decay: tf.Tensor) -> None:
    """Every replica's copy of each average, from that replica's copy of the variable (as Keras' optimizers do)."""
    for average, current in pairs:
        strategy.extended.update(average, _blend, args=(current, decay), group=False)


class WeightAverage:
    """`model`, a clone of `classifier` holding tau * average + (1 - tau) * current of every variable of it.

    Build it where the classifier was built (inside the strategy's scope), and call `update` after each
    optimizer step.
    """

    def __init__(self, classifier: keras.Model, tau: float):
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau={tau}: the decay must be in (0, 1) (0 turns averaging off)")
        self.tau = float(tau)
        self.model = keras.models.clone_model(classifier)  # never trained: its variables change only by `update`
        if [v.path for v in self.model.variables] != [v.path for v in classifier.variables]:
            raise ValueError("the averaged clone does not have the classifier's variables")
        self.pairs = list(zip(self.model.variables, classifier.variables))
        for average, current in self.pairs:
            average.assign(current)

    def update(self, steps_done: tf.Tensor) -> None:
        """After optimizer step number `steps_done` (1 for the first): the first copies, later ones blend."""
        decay = tf.where(tf.cast(steps_done, tf.int64) > 1, self.tau, 0.0)
        pairs = [(average.value, current.value) for average, current in self.pairs]
        tf.__internal__.distribute.interim.maybe_merge_call(_blend_all, tf.distribute.get_strategy(), pairs, decay)


def maybe(classifier: keras.Model, tau: float):
    """A WeightAverage of `classifier`, or None when tau is 0 (averaging off)."""
    return WeightAverage(classifier, tau) if tau else None
