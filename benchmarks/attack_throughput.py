"""Throughput of the evaluation attacks on CPU: AutoAttack (standard, L-inf) and PGD-50-10, images per second and
seconds per attack.

Models (--models):
- `quickstart`: a quick-start checkpoint (--quickstart, a .keras file; by default
  `benchmarks/results/quickstart_model.keras`, the best model of the 8-epoch quick start of commit 48697f0, so
  that figures compare across versions), on the first --n_images test images of the shared
  CIFAR-10 slice with their true labels, at each --eps: the field's protocol, where the cost depends on how many
  images survive each attack.
- `preact_resnet18_w<width>` (e.g. preact_resnet18_w0.25, preact_resnet18_w1): an untrained PreActResNet-18 of that
  width on --worst_case_images images labelled with its own predictions, at eps = 0, so that no image is ever broken
  and every attack runs its whole budget on every image: the cost per image of a fully robust model.

Times are those of the first call in the process (tracing included; --repeats > 1 adds warm calls, reported as
their median). --implementation times another copy of the package (an older version, say) under the same
protocol. Prints one JSON object (and writes it to --output).

    .venv/bin/python -m benchmarks.attack_throughput --models=quickstart
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict

import numpy as np

from tf_fastbat.runtime import default_cpu_kernels

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "data",
                    "cifar10_subset.npz")
QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quickstart_model.keras")
WORST_CASE_PREFIX = "preact_resnet18_w"


def load_test_images(n: int):
    """The first `n` test images of the shared slice as [0, 1] float32 NHWC, with int64 labels."""
    if not os.path.exists(DATA):
        raise FileNotFoundError(f"CIFAR-10 slice missing: {DATA}")
    data = np.load(DATA)
    return data["x_test"][:n].astype(np.float32) / 255.0, data["y_test"].reshape(-1)[:n].astype(np.int64)


def keras_logits(classifier) -> Callable:
    """A Keras classifier as a logits function (inference mode, float32)."""
    import tensorflow as tf

    return lambda images: tf.cast(classifier(images, training=False), tf.float32)


def time_pgd(logits_fn, x, y, eps: float, steps: int, restarts: int, seed: int, batch_size: int) -> dict:
    """PGD-steps-restarts on all images: images/s, gradient image-steps/s, robust accuracy (tracing excluded)."""
    from tf_fastbat.attacks.pgd import PGD

    attacked = {}

    def count(restart: int, done: int, in_restart: int) -> None:
        attacked[restart] = done  # examples attacked so far in this restart

    pgd = PGD(logits_fn, batch_size)
    pgd.robust_mask(x[:2], y[:2], eps, 1, 1, seed=seed)  # warm-up: traces the attack
    start = time.perf_counter()
    robust = pgd.robust_mask(x, y, eps, steps, restarts, seed=seed, progress=count)
    seconds = time.perf_counter() - start
    image_steps = steps * sum(attacked.values())
    return {"images_per_second": round(len(x) / seconds, 3), "image_steps_per_second": round(image_steps / seconds, 1),
            "seconds": round(seconds, 2), "robust_accuracy": float(robust.mean())}


def autoattack_once(logits_fn, x, y, eps: float, seed: int, batch_size: int, run: Callable) -> dict:
    """One standard AutoAttack call: seconds in all and per attack, images entering each attack, robust accuracy."""
    start = time.perf_counter()
    result = run(logits_fn, x, y, eps, batch_size=batch_size, seed=seed)
    seconds = time.perf_counter() - start
    entering, still_robust = {}, round(result.clean_accuracy * len(x))
    for attack, accuracy in result.per_attack_robust_accuracy.items():
        entering[attack], still_robust = still_robust, round(accuracy * len(x))
    return {"seconds": seconds, "seconds_per_attack": dict(result.seconds_per_attack), "images_entering": entering,
            "robust_accuracy": result.robust_accuracy, "per_attack_robust_accuracy": result.per_attack_robust_accuracy,
            "clean_accuracy": result.clean_accuracy, "warnings": result.warnings}


def time_autoattack(logits_fn, x, y, eps: float, seed: int, batch_size: int, repeats: int = 1,
                    run: Callable = None) -> dict:
    """Standard AutoAttack on all images: the first call (tracing included) and the median of warm repeats."""
    if run is None:
        from tf_fastbat.attacks.autoattack import run_autoattack as run
    calls = [autoattack_once(logits_fn, x, y, eps, seed, batch_size, run) for _ in range(max(1, repeats))]
    first = calls[0]
    out = {"seconds": round(first["seconds"], 2), "seconds_per_image": round(first["seconds"] / len(x), 3),
           "images_per_second": round(len(x) / first["seconds"], 3),
           "seconds_per_attack": {k: round(v, 2) for k, v in first["seconds_per_attack"].items()},
           "images_entering": first["images_entering"],
           "images_per_second_per_attack": {k: round(first["images_entering"][k] / v, 3) if v else None
                                            for k, v in first["seconds_per_attack"].items()},
           "clean_accuracy": first["clean_accuracy"], "robust_accuracy": first["robust_accuracy"],
           "per_attack_robust_accuracy": first["per_attack_robust_accuracy"], "warnings": first["warnings"]}
    if len(calls) > 1:
        warm = calls[1:]
        out["warm_seconds_median"] = round(statistics.median(c["seconds"] for c in warm), 2)
        out["warm_seconds_per_attack_median"] = {k: round(statistics.median(c["seconds_per_attack"][k] for c in warm), 2)
                                                 for k in first["seconds_per_attack"]}
    return out


def model_inputs(name: str, args) -> tuple:
    """(logits_fn, images, labels, eps list in 1/255, description) of one --models entry."""
    import keras

    from tf_fastbat import models

    if name == "quickstart":
        if not os.path.exists(args.quickstart):
            raise FileNotFoundError(f"no quick-start model at {args.quickstart}: train one with `python -m "
                                    "tf_fastbat.train --flagfile=flags/quickstart.cfg` or pass --quickstart=PATH")
        x, y = load_test_images(args.n_images)
        return (keras_logits(models.load(args.quickstart)), x, y, args.eps,
                f"quick-start checkpoint {args.quickstart}, true labels")
    if not name.startswith(WORST_CASE_PREFIX):
        raise ValueError(f"unknown model {name!r}; use quickstart or {WORST_CASE_PREFIX}<width>")
    width = float(name[len(WORST_CASE_PREFIX):])
    keras.utils.set_random_seed(args.seed)
    logits_fn = keras_logits(models.build("preact_resnet18", width_multiplier=width))
    x, _ = load_test_images(args.worst_case_images)
    y = np.argmax(logits_fn(x).numpy(), axis=1).astype(np.int64)
    return logits_fn, x, y, [0.0], f"untrained PreActResNet-18 width {width:g}, own predictions as labels, eps 0"


def machine() -> dict:
    """Where the figures come from."""
    import tensorflow as tf

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "load_average_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="quickstart,preact_resnet18_w0.25,preact_resnet18_w1",
                        help="comma list of quickstart, preact_resnet18_w<width>")
    parser.add_argument("--quickstart", default=QUICKSTART, help="the quick-start .keras checkpoint")
    parser.add_argument("--n_images", type=int, default=100, help="test images for the quick-start model")
    parser.add_argument("--worst_case_images", type=int, default=16, help="images for the untrained models")
    parser.add_argument("--eps", type=float, nargs="+", default=[8.0], help="quick-start radii in 1/255 units")
    parser.add_argument("--attacks", default="autoattack", help="comma list of autoattack, pgd")
    parser.add_argument("--pgd_steps", type=int, default=50)
    parser.add_argument("--pgd_restarts", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="AutoAttack calls per model and eps (first is cold)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--implementation", default="tf_fastbat.attacks.autoattack",
                        help="module whose run_autoattack is timed (e.g. an older copy of the package, to compare)")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    default_cpu_kernels()  # before TensorFlow is imported
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - {"pgd", "autoattack"}
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; choose from pgd, autoattack")
    from tf_fastbat import report
    from tf_fastbat.attacks.autoattack.attack import AUTOATTACK_NAME
    from tf_fastbat.attacks.pgd import pgd_name

    run = importlib.import_module(args.implementation).run_autoattack
    result = {"machine": machine(), "implementation": args.implementation, "batch_size": args.batch_size,
              "seed": args.seed, "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        start = time.perf_counter()
        logits_fn, x, y, eps_list, description = model_inputs(name, args)
        entry: Dict[str, object] = {"description": description, "n_images": len(x),
                                    "load_seconds": round(time.perf_counter() - start, 1), "runs": {}}
        for attack in attacks:
            runs: Dict[str, dict] = {}
            for eps_255 in eps_list:
                eps = eps_255 / 255.0
                runs[report.eps_key(eps)] = (
                    time_autoattack(logits_fn, x, y, eps, args.seed, args.batch_size, args.repeats, run)
                    if attack == "autoattack" else
                    time_pgd(logits_fn, x, y, eps, args.pgd_steps, args.pgd_restarts, args.seed, args.batch_size))
            entry["runs"][AUTOATTACK_NAME if attack == "autoattack" else
                          pgd_name(args.pgd_steps, args.pgd_restarts)] = runs
        result["models"][name] = entry
    result["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
