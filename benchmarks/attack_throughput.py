"""Throughput of the evaluation attacks on CPU: PGD-50-10 and AutoAttack (standard, L-inf), images/second.

A small CNN is first trained briefly (plain cross-entropy) on the shared CIFAR-10 slice so that attacks face a real
decision surface. Both attacks stop working on an example once it is broken, so their cost depends on how many
survive: each is timed at a large and a small radius, and PGD also reports gradient steps (image-steps) per second,
which does not depend on that. Tracing is excluded by a warm-up call on two images. Prints one JSON object.

    .venv/bin/python benchmarks/attack_throughput.py --n_images 32 --train_steps 300 --attacks pgd,autoattack
"""

from __future__ import annotations

import argparse
import json
import os
import time

import tf_fastbat  # noqa: F401  (first: its oneDNN default must precede TensorFlow's import)

import keras
import numpy as np

from tf_fastbat import report
from tf_fastbat.attacks.autoattack import run_autoattack
from tf_fastbat.attacks.pgd import PGD

DATA = "/work/shared/data/cifar10_subset.npz"


def small_cnn() -> keras.Model:
    """Two strided convolutions and a dense head: [0, 1] images -> logits."""
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def time_pgd(logits_fn, x, y, eps: float, steps: int, restarts: int, seed: int, batch_size: int) -> dict:
    """PGD-steps-restarts on all images: images/s, gradient image-steps/s, robust accuracy."""
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


def time_autoattack(logits_fn, x, y, eps: float, seed: int, batch_size: int) -> dict:
    """AutoAttack standard on all images: images/s, robust accuracy, seconds per component attack, warnings."""
    run_autoattack(logits_fn, x[:2], y[:2], eps, batch_size=batch_size, seed=seed)  # warm-up: traces the attacks
    start = time.perf_counter()
    result = run_autoattack(logits_fn, x, y, eps, batch_size=batch_size, seed=seed)
    seconds = time.perf_counter() - start
    return {"images_per_second": round(len(x) / seconds, 3), "seconds": round(seconds, 2),
            "robust_accuracy": result.robust_accuracy, "per_attack_robust_accuracy": result.per_attack_robust_accuracy,
            "seconds_per_attack": {k: round(v, 2) for k, v in result.seconds_per_attack.items()},
            "warnings": result.warnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_images", type=int, default=32)
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[8.0, 2.0], help="radii in 1/255 units")
    parser.add_argument("--attacks", default="pgd,autoattack", help="comma list of pgd, autoattack")
    parser.add_argument("--pgd_steps", type=int, default=50)
    parser.add_argument("--pgd_restarts", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(attacks) - {"pgd", "autoattack"}
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; choose from pgd, autoattack")
    if not os.path.exists(DATA):
        raise FileNotFoundError(f"CIFAR-10 slice missing: {DATA}")
    data = np.load(DATA)
    keras.utils.set_random_seed(args.seed)
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train = data["x_train"].astype(np.float32) / 255.0
    y_train = data["y_train"].reshape(-1)
    start = time.perf_counter()
    epochs = max(1, round(args.train_steps * 64 / len(x_train)))  # whole epochs, about train_steps batches of 64
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    train_seconds = time.perf_counter() - start
    x = data["x_test"][:args.n_images].astype(np.float32) / 255.0
    y = data["y_test"].reshape(-1)[:args.n_images].astype(np.int64)
    logits_fn = lambda images: model(images, training=False)  # noqa: E731
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    result = {"model": "small_cnn (conv16-s2, conv32-s2, dense10)", "device": "cpu", "n_images": args.n_images,
              "train_steps": args.train_steps, "train_seconds": round(train_seconds, 1), "clean_accuracy": clean,
              "batch_size": args.batch_size, "runs": {}}
    for attack in attacks:
        name = report.pgd_name(args.pgd_steps, args.pgd_restarts) if attack == "pgd" else report.AUTOATTACK_NAME
        result["runs"][name] = {}
        for eps_255 in args.eps:
            eps = eps_255 / 255.0
            result["runs"][name][report.eps_key(eps_255)] = (
                time_pgd(logits_fn, x, y, eps, args.pgd_steps, args.pgd_restarts, args.seed, args.batch_size)
                if attack == "pgd" else time_autoattack(logits_fn, x, y, eps, args.seed, args.batch_size))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
