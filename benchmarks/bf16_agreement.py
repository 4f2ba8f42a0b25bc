"""How close one mixed_bfloat16 training step's gradients are to float32's (issue 20's precision check).

The same PreActResNet-18 weights (width --width_multiplier), the same real CIFAR-10 training batch (the first
--batch_size images of --data) and the same attack noise; each method's step once under the float32 policy and once
under mixed_bfloat16 (variables float32, compute bfloat16, logits float32). Reported per method:

  relative_l2        ||g_bf16 - g_f32|| / ||g_f32|| over all trainable variables
  cosine             cos(g_bf16, g_f32)
  layer_rel_median   median over variables of the per-variable relative L2 error
  x_adv_sign_agree   fraction of pixels whose perturbation x_adv - x has the same sign in both

    .venv/bin/python -m benchmarks.bf16_agreement --methods=fast_at,fast_bat --width_multiplier=0.25
    .venv/bin/python -m benchmarks.bf16_agreement --checkpoint=benchmarks/results/quickstart_model.keras
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional

from tf_fastbat.runtime import default_cpu_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_step(method_name: str, policy: str, weights, width: float, x, y, noise, eps: float):
    """(flat gradient, x_adv) of `method_name`'s step on (x, y) from `weights`, under the dtype `policy`."""
    import keras
    import numpy as np

    from tf_fastbat import methods, models

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = models.build("preact_resnet18", width_multiplier=width)
        model.set_weights(weights)
        grads, x_adv = methods.build(method_name, eps=eps).gradients(model, x, y, noise)
        flat = [np.asarray(g, np.float64).ravel() for g in grads]
        return flat, np.asarray(x_adv)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def agreement(methods_: List[str], width: float, batch_size: int, data: str, eps: float, seed: int,
              checkpoint: Optional[str] = None) -> Dict:
    """Per method, the agreement of the two policies' steps (module docstring) from the initialization drawn with
    `seed`, or from a trained `checkpoint` (.keras, a PreActResNet-18 of this project at `width`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tf_fastbat import models

    with np.load(data) as archive:
        x = tf.constant(archive["x_train"][:batch_size].astype(np.float32) / 255.0)
        y = tf.constant(archive["y_train"][:batch_size].astype(np.int32))
    keras.utils.set_random_seed(seed)
    weights = (models.load(checkpoint) if checkpoint else models.build("preact_resnet18", width_multiplier=width)
               ).get_weights()
    noise = tf.constant(np.random.default_rng(seed).uniform(-eps, eps, x.shape).astype(np.float32))
    out = {}
    for name in methods_:
        g32, x32 = one_step(name, "float32", weights, width, x, y, noise, eps)
        g16, x16 = one_step(name, "mixed_bfloat16", weights, width, x, y, noise, eps)
        a, b = np.concatenate(g32), np.concatenate(g16)
        layer = [np.linalg.norm(p - q) / max(np.linalg.norm(p), 1e-30) for p, q in zip(g32, g16)]
        d32, d16 = np.sign(x32 - x.numpy()), np.sign(x16 - x.numpy())
        out[name] = {"relative_l2": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
                     "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
                     "layer_rel_median": float(np.median(layer)), "layer_rel_max": float(np.max(layer)),
                     "x_adv_sign_agree": float(np.mean(d32 == d16))}
        print(f"[bf16] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in out[name].items()), flush=True)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="fast_at,fast_bat,fast_at_ga,n_fgsm")
    parser.add_argument("--width_multiplier", type=float, default=0.25)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=8.0, help="Training eps in 1/255 units.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="Start from this trained .keras model instead of an "
                        "initialization (its PreActResNet-18 width must be --width_multiplier).")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10_subset.npz"))
    args = parser.parse_args(argv)
    default_cpu_kernels()
    result = agreement(args.methods.split(","), args.width_multiplier, args.batch_size, args.data, args.eps / 255.0,
                       args.seed, args.checkpoint)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
