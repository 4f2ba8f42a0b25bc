"""Evaluation attacks against any callable from [0, 1] NHWC images to logits, behind one interface
(`attacks.base.Attack`); `build(name, settings)` makes an --attacks entry. Importing this package loads no attack
module: cleverhans and AutoAttack load when their attack is built."""

from tf_fastbat.attacks.base import Attack, Outcome, build, names, register

__all__ = ["Attack", "Outcome", "build", "names", "register"]
