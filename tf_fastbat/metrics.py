"""Diagnostics of a classifier's local linearity (Andriushchenko & Flammarion 2020; Fast-BAT Fig. 2 and A1).

- gradient alignment: E_x E_eta[cos(grad_x l(x), grad_x l(x + eta))], eta ~ U[-eps, eps]^d (x + eta kept in
  [0, 1] like the training methods' random points); catastrophic overfitting shows as a collapse of it;
- the adversarial loss landscape: l(x + a sign(grad_x l(x)) + b r) on a grid of (a, b) in [-eps, eps]^2, r a
  Rademacher direction;
- GradientAlignmentLogger: the alignment on a fixed batch after every training epoch, into the Keras logs.

All input gradients are taken with the model in inference mode (`logits_fn` maps [0, 1] images to logits).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_fastbat.methods.common import ce_sum, project
from tf_fastbat.methods.fast_at_ga import gradient_alignment as batch_alignment

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def _input_gradient(logits_fn: LogitsFn, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example grad_x of the cross-entropy (the gradient of the batch sum, examples being independent)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = ce_sum(logits_fn(x), y)
    return tape.gradient(loss, x)


class GradientAlignment:
    """The alignment metric of one model, traced once (free batch size, eps and seed) and reusable."""

    def __init__(self, logits_fn: LogitsFn):
        self.logits_fn = logits_fn
        self._fn = None

    def _batch(self, x, y, eps, seed):
        """(mean cosine over the batch's examples with nonzero gradients, how many those are)."""
        noise = tf.random.stateless_uniform(tf.shape(x), seed=seed, minval=-1.0, maxval=1.0) * eps
        clean = _input_gradient(self.logits_fn, x, y)
        noisy = _input_gradient(self.logits_fn, x + project(noise, x, eps), y)
        flat_clean = tf.reshape(clean, [tf.shape(x)[0], -1])
        flat_noisy = tf.reshape(noisy, [tf.shape(x)[0], -1])
        nonzero = tf.logical_and(tf.norm(flat_clean, axis=1) > 0, tf.norm(flat_noisy, axis=1) > 0)
        return batch_alignment(clean, noisy), tf.reduce_sum(tf.cast(nonzero, tf.float32))

    def __call__(self, x: np.ndarray, y: np.ndarray, eps: float, seed: int = 0, batch_size: int = 256) -> float:
        """The mean cosine over all examples; the noise of batch i comes from the stateless seed (seed, i)."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y).astype(np.int32).reshape(-1)
        if self._fn is None:
            self._fn = tf.function(self._batch, input_signature=[
                tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64)])
        total, count = 0.0, 0.0
        for number, begin in enumerate(range(0, len(x), batch_size)):
            mean, n = self._fn(tf.constant(x[begin:begin + batch_size]), tf.constant(y[begin:begin + batch_size]),
                               tf.constant(eps, tf.float32), tf.constant([seed, number], tf.int64))
            total += float(mean) * float(n)
            count += float(n)
        return total / count if count else float("nan")


def gradient_alignment(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, seed: int = 0,
                       batch_size: int = 256) -> float:
    """E[cos(grad l(x), grad l(x + eta))], eta ~ U[-eps, eps], over the examples (zero gradients left out)."""
    return GradientAlignment(logits_fn)(x, y, eps, seed, batch_size)


def loss_landscape(logits_fn: LogitsFn, x: np.ndarray, y: np.ndarray, eps: float, seed: int = 0,
                   grid: int = 21) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, loss[i, j]): mean cross-entropy at x + a_i sign(grad_x l(x)) + b_j r over the examples given.

    a and b run over `grid` values in [-eps, eps]; r is a Rademacher (+-1) direction per example drawn from
    `seed`. The slice is linear: the points are not clipped to [0, 1], so that it shows the loss surface itself.
    """
    x = tf.constant(np.asarray(x, np.float32))
    y = tf.constant(np.asarray(y).astype(np.int32).reshape(-1))
    sign_gradient = tf.sign(_input_gradient(logits_fn, x, y))
    rademacher = tf.sign(tf.random.stateless_uniform(tf.shape(x), seed=[seed, 0], minval=-1.0, maxval=1.0))
    rademacher = tf.where(rademacher == 0, tf.ones_like(rademacher), rademacher)
    a = np.linspace(-eps, eps, grid)
    b = np.linspace(-eps, eps, grid)
    n = tf.cast(tf.shape(x)[0], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([None], tf.float32)])
    def row(a_i, b_all):  # one a, every b at once: grid forward passes of the batch
        def loss_at(b_j):
            return ce_sum(logits_fn(x + a_i * sign_gradient + b_j * rademacher), y) / n
        return tf.map_fn(loss_at, b_all)

    loss = np.stack([row(tf.constant(a_i, tf.float32), tf.constant(b, tf.float32)).numpy() for a_i in a])
    return a, b, loss


class GradientAlignmentLogger(keras.callbacks.Callback):
    """After every epoch, the gradient alignment of `classifier` on a fixed batch, as logs["gradient_alignment"].

    Put it before CSVLogger/TensorBoard in the callback list so that they record the value.
    """

    def __init__(self, classifier: keras.Model, x: np.ndarray, y: np.ndarray, eps: float, seed: int = 0,
                 batch_size: int = 256, key: str = "gradient_alignment"):
        super().__init__()
        self.classifier = classifier
        self.x = np.asarray(x, np.float32)
        self.y = np.asarray(y).astype(np.int32).reshape(-1)
        self.eps, self.seed, self.batch_size, self.key = eps, seed, batch_size, key
        self.metric = GradientAlignment(lambda images: self.classifier(images, training=False))
        self.history: Dict[int, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        if not len(self.x):
            return
        value = self.metric(self.x, self.y, self.eps, self.seed, self.batch_size)
        self.history[epoch] = value
        if logs is not None:
            logs[self.key] = value


__all__ = ["gradient_alignment", "GradientAlignment", "loss_landscape", "GradientAlignmentLogger"]
