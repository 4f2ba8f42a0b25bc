"""Milliseconds of one 3x3 convolution's forward, input gradient and filter gradient (batch 128, NHWC, CPU).

Run it twice to compare TensorFlow's CPU kernels (the variable must be set before TensorFlow is imported, so it is
not imported through tf_fastbat here):

    TF_ENABLE_ONEDNN_OPTS=0 .venv/bin/python -m benchmarks.conv_kernels   # Eigen kernels
    TF_ENABLE_ONEDNN_OPTS=1 .venv/bin/python -m benchmarks.conv_kernels   # oneDNN kernels (the package default)
"""

from __future__ import annotations

import os
import statistics
import time

SHAPES = ((32, 16), (16, 32), (32, 64))  # (height = width, channels in = out)


def median_ms(fn, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    import tensorflow as tf

    print(f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")
    for size, channels in SHAPES:
        x = tf.random.normal((128, size, size, channels))
        w = tf.random.normal((3, 3, channels, channels))
        dy = tf.random.normal((128, size, size, channels))
        ops = {
            "forward": tf.function(lambda: tf.nn.conv2d(x, w, 1, "SAME")),
            "input_gradient": tf.function(lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")),
            "filter_gradient": tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")),
        }
        timings = ", ".join(f"{name} {median_ms(fn):.1f} ms" for name, fn in ops.items())
        print(f"{size}x{size}x{channels}: {timings}")


if __name__ == "__main__":
    main()
