"""AutoAttack (Croce & Hein, ICML 2020), L-inf, in TensorFlow: APGD-CE/DLR, APGD-T, FAB(-T), Square, runner."""

from tf_fastbat.attacks.autoattack.apgd import (APGDAttack, APGDTargetedAttack, apgd, apgd_single_run,
                                                apgd_targeted, dlr_loss, dlr_loss_targeted)
from tf_fastbat.attacks.autoattack.autoattack import (ATTACKS, VERSIONS, AutoAttackResult, build_attacks,
                                                      run_autoattack)
from tf_fastbat.attacks.autoattack.fab import FABAttack, fab, fab_single_run, fab_targeted, project_linf_hyperplane
from tf_fastbat.attacks.autoattack.square import SquareAttack, square, square_single_run

__all__ = [
    "APGDAttack", "APGDTargetedAttack", "ATTACKS", "AutoAttackResult", "FABAttack", "SquareAttack", "VERSIONS",
    "apgd", "apgd_single_run", "apgd_targeted", "build_attacks", "dlr_loss", "dlr_loss_targeted", "fab",
    "fab_single_run", "fab_targeted", "project_linf_hyperplane", "run_autoattack", "square", "square_single_run",
]
