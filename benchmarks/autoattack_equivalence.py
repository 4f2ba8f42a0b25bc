"""Per-example AutoAttack outcomes against a saved reference: after each attack, which test images are still robust.

Runs standard AutoAttack (eps 8/255, fixed seed) on the first --n_images test images of the shared CIFAR-10 slice
and compares every attack's cumulative robust mask with --reference (an .npz with one boolean array per attack,
as written by --save). Exits with status 1 if the robust accuracy after some attack differs by more than
--tolerance images; differing images are listed either way. Prints one JSON object.

    .venv/bin/python -m benchmarks.autoattack_equivalence --model=benchmarks/results/quickstart_model.keras \\
        --reference=benchmarks/results/autoattack_masks_before.npz
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time

import numpy as np

from tf_fastbat.runtime import default_cpu_kernels

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "data",
                    "cifar10_subset.npz")


def sha256(path: str) -> str:
    """Hex digest of a file, to tie saved masks to the model they came from."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def load_model(path: str):
    """A .keras classifier as a logits function (inference mode)."""
    import tensorflow as tf

    from tf_fastbat import models

    classifier = models.load(path)
    return lambda images: tf.cast(classifier(images, training=False), tf.float32)


def compare(masks: dict, reference: dict, tolerance: int) -> dict:
    """Per attack: differing image indices and robust counts now and in the reference; overall verdicts."""
    attacks = {}
    for name, mask in masks.items():
        expected = reference.get(name.replace("-", "_"))
        if expected is not None:
            attacks[name] = {"robust_now": int(mask.sum()), "robust_reference": int(expected.sum()),
                             "differing_images": np.flatnonzero(mask != expected).tolist()}
    return {"attacks": attacks, "identical": all(not a["differing_images"] for a in attacks.values()),
            "within_tolerance": all(abs(a["robust_now"] - a["robust_reference"]) <= tolerance
                                    for a in attacks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .keras file")
    parser.add_argument("--n_images", type=int, default=200)
    parser.add_argument("--eps", type=float, default=8.0, help="in 1/255 units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--reference", help="masks to compare with (.npz)")
    parser.add_argument("--save", help="write this run's masks here (.npz)")
    parser.add_argument("--implementation", default="tf_fastbat.attacks.autoattack",
                        help="module whose run_autoattack runs (e.g. an older copy of the package, for --save)")
    parser.add_argument("--tolerance", type=int, default=1, help="images of robust-accuracy difference allowed")
    args = parser.parse_args()
    default_cpu_kernels()  # before TensorFlow is imported
    run_autoattack = importlib.import_module(args.implementation).run_autoattack

    if not os.path.exists(DATA):
        raise FileNotFoundError(f"CIFAR-10 slice missing: {DATA}")
    data = np.load(DATA)
    x = data["x_test"][:args.n_images].astype(np.float32) / 255.0
    y = data["y_test"].reshape(-1)[:args.n_images].astype(np.int64)
    logits_fn = load_model(args.model)
    start = time.perf_counter()
    result = run_autoattack(logits_fn, x, y, args.eps / 255.0, seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    masks = {"clean": np.argmax(np.concatenate(
        [logits_fn(x[i:i + args.batch_size]).numpy() for i in range(0, len(x), args.batch_size)]), axis=1) == y,
        **result.robust_masks}
    out = {"implementation": args.implementation, "model": args.model, "model_sha256": sha256(args.model), "n_images": args.n_images, "eps": args.eps,
           "seed": args.seed, "seconds": round(seconds, 1), "seconds_per_attack":
           {k: round(v, 1) for k, v in result.seconds_per_attack.items()},
           "robust_accuracy": result.per_attack_robust_accuracy}
    if args.save:
        np.savez(args.save, model_sha256=out["model_sha256"], n_images=args.n_images, eps=args.eps, seed=args.seed,
                 **{k.replace("-", "_"): v for k, v in masks.items()})
    if args.reference:
        reference = dict(np.load(args.reference))
        if str(reference.get("model_sha256", "")) not in ("", out["model_sha256"]):
            out["warning"] = "the reference masks were computed on another model"
        out["comparison"] = compare(masks, reference, args.tolerance)
    print(json.dumps(out, indent=2))
    if args.reference and not out["comparison"]["within_tolerance"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
