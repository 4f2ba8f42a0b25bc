"""Materialize an older revision's AutoAttack as an importable package, for A/B timing and equivalence runs.

Copies `tf_fastbat/attacks/autoattack/` of --revision (default a5b5c0e, the implementation before issue 15) into
--into/<--name>/, renaming its imports, and makes its runner record the cumulative robust mask after each attack
(`AutoAttackResult.robust_masks`, which that revision did not return). Then, for example:

    .venv/bin/python -m benchmarks.autoattack_previous --into=/tmp/aa_impl
    PYTHONPATH=/tmp/aa_impl .venv/bin/python -m benchmarks.attack_throughput --implementation=aa_before
    PYTHONPATH=/tmp/aa_impl .venv/bin/python -m benchmarks.autoattack_equivalence \\
        --model=benchmarks/results/quickstart_model.keras --implementation=aa_before --save=/tmp/masks_before.npz
"""

from __future__ import annotations

import argparse
import os
import subprocess

PACKAGE = "tf_fastbat/attacks/autoattack"
# Instrumentation of the old runner: (text in that revision, replacement), applied once each.
MASK_PATCHES = (
    ("    warnings: List[str]\n",
     "    warnings: List[str]\n    robust_masks: Dict[str, np.ndarray] = None  # added for the A/B benchmark\n"),
    ("    seconds: Dict[str, float] = {}\n", "    seconds: Dict[str, float] = {}\n    masks: Dict[str, np.ndarray] = {}\n"),
    ("        per_attack[name] = float(robust.mean())\n",
     "        per_attack[name] = float(robust.mean())\n        masks[name] = robust.copy()\n"),
    ("seconds_per_attack=seconds, warnings=found_warnings)",
     "seconds_per_attack=seconds, warnings=found_warnings, robust_masks=masks)"),
)


def git(*args: str) -> str:
    """Output of a git command in this repository."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def instrument(source: str) -> str:
    """The old runner with robust masks recorded; refuses a revision whose runner does not match the patches."""
    if "robust_masks" in source:
        return source
    for old, new in MASK_PATCHES:
        if source.count(old) != 1:
            raise SystemExit(f"cannot instrument this revision's autoattack.py: {old.strip()!r} not found once")
        source = source.replace(old, new)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default="a5b5c0e")
    parser.add_argument("--into", required=True, help="directory to put on PYTHONPATH")
    parser.add_argument("--name", default="aa_before", help="the package name")
    args = parser.parse_args()
    target = os.path.join(args.into, args.name)
    os.makedirs(target, exist_ok=True)
    for path in git("ls-tree", "--name-only", f"{args.revision}:{PACKAGE}").split():
        source = git("show", f"{args.revision}:{PACKAGE}/{path}").replace("tf_fastbat.attacks.autoattack", args.name)
        with open(os.path.join(target, path), "w") as handle:
            handle.write(instrument(source) if path == "autoattack.py" else source)
    print(target)


if __name__ == "__main__":
    main()
