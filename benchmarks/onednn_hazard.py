"""Which shapes of the model zoo TF 2.21's oneDNN CPU kernels compute on a corrupted heap (BUILD_NOTES.md, "CPU
kernels").

Every strided 1x1 convolution of every architecture at every width (static: the layers of the built models), at the
batch sizes the project meets (the training batch, odd test batches, and the last partial batch of each data set
used here), runs forward and backward in its own process with TF_ENABLE_ONEDNN_OPTS=1; a shape fails when that
process dies, and otherwise its output and gradients are compared with the Eigen kernels' on the same inputs. The
other convolutions (3x3, and 1x1 at stride 1) never failed in the issue's sweep of channels 8-64 and batches
1/15/16/128 and are checked here at width 0.125 only.

    .venv/bin/python -m benchmarks.onednn_hazard --json   # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

WIDTHS = (0.125, 0.25, 0.5, 1.0)
# Training batch 128 and its neighbours; 1, 15 (the reproducer); the last partial batches: 45,000 % 128 = 72
# (full CIFAR-10), 4,577 % 128 = 97 (the shared subset's training split), 1,000 % 128 = 104 (early stopping), 5,000
# % 128 = 8 (held out), 500 % 128 = 116 (the AutoAttack subset).
BATCHES = (1, 8, 15, 16, 72, 97, 104, 116, 127, 128)
Shape = Tuple[int, int, int, int, int]  # (kernel, stride, height = width, channels in, channels out)

PROBE = """
import sys, numpy as np, tensorflow as tf
kernel, stride, size, cin, cout = {shape}
out = {{}}
for batch in {batches}:
    x = tf.random.stateless_uniform((batch, size, size, cin), (1, batch))
    w = tf.random.stateless_normal((kernel, kernel, cin, cout), (2, cin)) * 0.1
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w])
        y = tf.nn.conv2d(x, w, stride, "SAME")
        loss = tf.reduce_sum(y * y)
    out[f"y{{batch}}"], out[f"dx{{batch}}"], out[f"dw{{batch}}"] = y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, w])]
np.savez({path!r}, **out)
"""


def zoo_shapes() -> Dict[Shape, List[str]]:
    """Every convolution shape of the zoo -> the 'architecture@width' models that have it (strided 1x1 at every
    width; every convolution at width 0.125)."""
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import keras

    from tf_fastbat import models

    shapes: Dict[Shape, List[str]] = {}
    for name in models.NAMES:
        for width in WIDTHS:
            model = models.build(name, width_multiplier=width)
            for layer in model.layers:
                if not isinstance(layer, keras.layers.Conv2D):
                    continue
                kernel, stride = layer.kernel_size[0], layer.strides[0]
                if width != WIDTHS[0] and not (kernel == 1 and stride > 1):
                    continue
                size = layer.input.shape[1]
                shape = (kernel, stride, size, layer.kernel.shape[-2], layer.kernel.shape[-1])
                shapes.setdefault(shape, [])
                if f"{name}@{width}" not in shapes[shape]:
                    shapes[shape].append(f"{name}@{width}")
            keras.backend.clear_session()
    return shapes


def probe(shape: Shape, batches, onednn: bool, path: str) -> int:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = PROBE.format(shape=shape, batches=tuple(batches), path=path)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=900).returncode


def check(shape: Shape, folder: str) -> Dict[str, object]:
    """{'failed_batches': [...], 'max_relative_difference': float} for one shape."""
    eigen = os.path.join(folder, "eigen.npz")
    if probe(shape, BATCHES, False, eigen):
        raise RuntimeError(f"the Eigen kernels failed on {shape}")
    failed, worst = [], 0.0
    onednn = os.path.join(folder, "onednn.npz")
    if probe(shape, BATCHES, True, onednn):  # a death: find which batches
        for batch in BATCHES:
            if probe(shape, (batch,), True, os.path.join(folder, "one.npz")):
                failed.append(batch)
        survivors = [b for b in BATCHES if b not in failed]
        if not survivors or probe(shape, survivors, True, onednn):
            return {"failed_batches": failed, "max_relative_difference": None}
    import numpy as np

    with np.load(eigen) as a, np.load(onednn) as b:
        for key in b.files:
            worst = max(worst, float(np.abs(a[key] - b[key]).max() / max(np.abs(a[key]).max(), 1e-30)))
    return {"failed_batches": failed, "max_relative_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="Write benchmarks/results/onednn_hazard.json.")
    args = parser.parse_args()
    import tempfile

    shapes = zoo_shapes()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape, owners in sorted(shapes.items()):
            result = check(shape, folder)
            rows.append({"kernel": shape[0], "stride": shape[1], "size": shape[2], "channels_in": shape[3],
                         "channels_out": shape[4], "models": owners, **result})
            print(json.dumps(rows[-1]), flush=True)
    failing = [r for r in rows if r["failed_batches"]]
    print(f"{len(rows)} shapes x batches {BATCHES}: {len(failing)} fail")
    for row in failing:
        print(f"  {row['kernel']}x{row['kernel']} stride {row['stride']}, {row['size']}x{row['size']}x"
              f"{row['channels_in']}->{row['channels_out']}: batches {row['failed_batches']} ({', '.join(row['models'])})")
    if args.json:
        path = os.path.join(os.path.dirname(__file__), "results", "onednn_hazard.json")
        with open(path, "w") as out:
            json.dump({"batches": BATCHES, "shapes": rows}, out, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
