"""Evaluation attacks against any callable from [0, 1] NHWC images to logits."""

from tf_fastbat.attacks.pgd import PGD, pgd_robust_mask

__all__ = ["PGD", "pgd_robust_mask"]
