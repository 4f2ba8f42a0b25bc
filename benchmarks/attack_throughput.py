"""Throughput of AutoAttack (standard, L-inf) on CPU: images/second on a small CNN and a few CIFAR-10 test images.

The CNN is first trained briefly (plain cross-entropy) on the shared CIFAR-10 slice so that attacks face a real
decision surface; since AutoAttack's cost grows with the number of points that survive, it is timed at a large
and a small radius. Prints one JSON object.

    .venv/bin/python benchmarks/attack_throughput.py --n_images 32 --train_steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np

from tf_fastbat.attacks.autoattack import run_autoattack

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_images", type=int, default=32)
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--eps", type=float, nargs="+", default=[8.0, 2.0], help="radii in 1/255 units")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.path.exists(DATA):
        raise FileNotFoundError(f"CIFAR-10 slice missing: {DATA}")
    data = np.load(DATA)
    keras.utils.set_random_seed(args.seed)
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x_train = data["x_train"].astype(np.float32) / 255.0
    y_train = data["y_train"].reshape(-1)
    start = time.time()
    epochs = max(1, round(args.train_steps * 64 / len(x_train)))  # whole epochs, about train_steps batches of 64
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    train_seconds = time.time() - start
    x = data["x_test"][:args.n_images].astype(np.float32) / 255.0
    y = data["y_test"].reshape(-1)[:args.n_images]
    logits_fn = lambda images: model(images, training=False)
    report = {"model": "small_cnn (conv16-s2, conv32-s2, dense10)", "device": "cpu", "n_images": args.n_images,
              "train_steps": args.train_steps, "train_seconds": round(train_seconds, 1), "runs": {}}
    for eps in args.eps:
        start = time.time()
        result = run_autoattack(logits_fn, x, y, eps / 255.0, batch_size=args.batch_size, seed=args.seed)
        seconds = time.time() - start
        report["runs"][f"{eps:g}/255"] = {
            "images_per_second": round(args.n_images / seconds, 3), "seconds": round(seconds, 1),
            "clean_accuracy": result.clean_accuracy, "robust_accuracy": result.robust_accuracy,
            "per_attack_robust_accuracy": result.per_attack_robust_accuracy,
            "seconds_per_attack": {k: round(v, 2) for k, v in result.seconds_per_attack.items()},
            "warnings": result.warnings}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
