"""Evaluation attacks against any callable from [0, 1] NHWC images to logits."""

from tf_fastbat.attacks.cleverhans_pgd import CleverhansPGD, cleverhans_name
from tf_fastbat.attacks.pgd import PGD, pgd_robust_mask
from tf_fastbat.attacks.transfer import transfer_name, transfer_robust_mask

__all__ = ["PGD", "pgd_robust_mask", "CleverhansPGD", "cleverhans_name", "transfer_robust_mask", "transfer_name"]
