"""The interface every training method implements, and the per-step context every method's `step` is given.

One interface for all methods: `step(model, x, y, noise, context, loss_scale=None)`. The trainer builds the context
from its optimizer step and the method's state variables; library code that calls a method once (`gradients`, the
exactness tests) gets a standalone one from `standalone_context`: step 0 of epoch 0, fresh zero state, the batch's
examples at positions 0..n-1, which is what the trainer gives a method at the start of training.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf

from tf_fastbat import units
from tf_fastbat import fields
from tf_fastbat.fields import PIXEL, SMOOTHING_APPLIES, hparam, within

StateSpec = Dict[str, Tuple[Tuple[int, ...], tf.DType]]


class Step(NamedTuple):
    """What one method step produces: gradients (aligned with trainable_variables), the training input, its logits."""

    grads: List[tf.Tensor]
    x_adv: tf.Tensor
    logits: tf.Tensor


class StepContext(NamedTuple):
    """Where the step stands and the method's state, given to every method's `step` (most methods ignore it).

    step: int64 optimizer iterations before this step; epoch: float32 fractional epochs done (step / steps per
    epoch; NaN when the trainer does not know the epoch length); epoch_index: int64 0-based epoch of this step (-1
    when unknown); index: int64 [local batch] positions of the examples in the training set (None unless the method
    `needs_index`); state: the variables of `state_spec` (write them through `methods.state`); epoch_step: int64
    0-based step within its epoch (-1 when unknown).
    """

    step: tf.Tensor
    epoch: tf.Tensor
    epoch_index: tf.Tensor
    index: Optional[tf.Tensor]
    state: Dict[str, tf.Variable]
    epoch_step: Optional[tf.Tensor] = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method; `eps` and step sizes are fractions of the [0, 1] pixel range (8/255, not 8)."""

    eps: float = hparam(8.0 / 255.0, "Training eps: the L-inf radius of the training attack.", unit=PIXEL)
    # torch's CrossEntropyLoss(label_smoothing=...), on the losses `smoothed_losses` names
    label_smoothing: float = hparam(
        0.0, "Label smoothing of the cross-entropy (torch's), on the losses the method applies it to "
        "(FastAT_Benchmark: 0.4; the training loss, and the attack's for fast_at and n_fgsm).",
        check=[within(0, 1, high_open=True), SMOOTHING_APPLIES])

    name = "method"
    label: ClassVar[str] = "Method"  # the method's name in the paper's tables and figures ("Fast-BAT")
    needs_index: ClassVar[bool] = False  # True: the training batches carry the examples' positions (context.index)
    # True: the update follows the epoch (context.epoch_index / epoch_step), so the trainer must know its length.
    needs_epoch: ClassVar[bool] = False
    # Where label smoothing applies: "training" (the loss the weights descend) and "attack" (the attack's loss),
    # as FastAT_Benchmark applies its criterion per method; a method that names neither refuses label_smoothing > 0.
    smoothed_losses: ClassVar[Tuple[str, ...]] = ()
    # Optimizer steps the trainer takes per batch with the method's gradient (torch's optimizer.step() called that many
    # times without zero_grad; see optim.CoupledSGD); a method whose official trainer does so makes it a field.
    optimizer_steps_per_batch: ClassVar[int] = 1
    # Fields in fractions of the [0, 1] pixel range, in (0, 1] (None: the official default): checked at
    # construction, so that eps=8 is refused rather than trained with. Fast-BAT's non-sign step is not one.
    fraction_fields: ClassVar[Tuple[str, ...]] = ("eps", "attack_lr", "noise_magnitude", "init_magnitude")
    eps_may_be_zero: ClassVar[bool] = False  # True for a method that does not attack (standard)

    def __post_init__(self):
        fields.validate(self)  # every field's checks (its metadata), the pixel fractions of `fraction_fields`

    def check_units(self) -> None:
        """A one-line UsageError naming the first field that is not a fraction of the [0, 1] pixel range."""
        for field in dataclasses.fields(self):
            if field.name in self.fraction_fields:
                units.fraction(field.name, getattr(self, field.name),
                               zero_ok=field.name == "eps" and self.eps_may_be_zero)

    def smoothing(self, loss: str) -> float:
        """The label smoothing of `loss` ("training" or "attack"): label_smoothing where the method applies it."""
        return self.label_smoothing if loss in self.smoothed_losses else 0.0

    def state_spec(self, num_examples: int, input_shape: Tuple[int, ...],
                   num_classes: Optional[int] = None) -> StateSpec:
        """name -> (shape, dtype) of the variables the method keeps across steps (zeros at the start); none here."""
        return {}

    def step(self, model, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor, context: StepContext,
             loss_scale: Optional[tf.Tensor] = None) -> Step:
        """Gradient of the batch-mean objective (weight decay excluded), the input used, and its logits.

        `context` says where training stands and holds the method's state (a method with state writes it here);
        methods that need neither ignore it. With `loss_scale` S (float16 training) every differentiated loss is
        multiplied by S: the returned gradients are S times the true ones (the LossScaleOptimizer divides S out);
        attack directions are not.
        """
        raise NotImplementedError

    def gradients(self, model, x: tf.Tensor, y: tf.Tensor, noise: tf.Tensor,
                  context: Optional[StepContext] = None):
        """(grads, x_adv) of one step: the pure interface of the design card, for every method.

        Without `context`, a method with state or a schedule takes its first training step (`standalone_context`):
        its state is created fresh for this call and discarded.
        """
        x, noise, y = tf.cast(x, tf.float32), tf.cast(noise, tf.float32), tf.convert_to_tensor(y)  # arrays too
        result = self.step(model, x, y, noise, standalone_context(self, model, x) if context is None else context)
        return result.grads, result.x_adv

    def hyperparameters(self) -> dict:
        """The fields as set (None where the official default applies): `methods.build(self.name, **these)` rebuilds
        this method (the trainer's saved configuration)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def hparams(self) -> dict:
        """Hyperparameters, for reports and export metadata."""
        return {"method": self.name, **dataclasses.asdict(self)}


def output_classes(model, x: tf.Tensor) -> int:
    """The number of classes `model` scores (its output width), from its output shape or one inference forward."""
    try:
        return int(model.output_shape[-1])
    except (AttributeError, ValueError, TypeError):  # a subclassed model records no output shape
        return int(model(x[:1], training=False).shape[-1])


def standalone_context(method: Method, model, x: tf.Tensor, *, step: int = 0, epoch: int = 0,
                       epoch_step: int = 0) -> StepContext:
    """The context of a call outside the trainer: step `step`, at the start of 0-based epoch `epoch` (whose
    `epoch_step`-th step it is), the batch's examples at positions 0..n-1, and the method's state variables created
    here as zeros, as the trainer creates them at the start of training. Call it eagerly: it creates variables."""
    batch, shape = int(x.shape[0]), tuple(int(d) for d in x.shape[1:])
    spec = method.state_spec(batch, shape, output_classes(model, x))
    variables = {name: tf.Variable(tf.zeros(var_shape, dtype), trainable=False, name=f"standalone_{name}")
                 for name, (var_shape, dtype) in spec.items()}
    index = tf.range(batch, dtype=tf.int64) if method.needs_index else None
    return StepContext(tf.constant(step, tf.int64), tf.constant(float(epoch), tf.float32),
                       tf.constant(epoch, tf.int64), index, variables, tf.constant(epoch_step, tf.int64))
