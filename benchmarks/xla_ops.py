"""Why XLA slows the search step down on a CPU: forward + backward of single candidate-op kernels of the
DARTS search space, with and without `tf.function(jit_compile=True)`, median of 20 calls.

    python benchmarks/xla_ops.py

Shapes: a [16, 32, 32, 8] activation (batch 16, 32×32, C = 8: the default supernet's first cells).
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402


def main():
    x = tf.random.uniform([16, 32, 32, 8])
    dw, pw, k3 = tf.random.uniform([3, 3, 8, 1]), tf.random.uniform([1, 1, 8, 8]), tf.random.uniform([3, 3, 8, 8])
    ops = {
        "depthwise 3×3 (sep_conv)": lambda x: tf.nn.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME"),
        "depthwise 3×3, dilation 2 (dil_conv)": lambda x: tf.nn.depthwise_conv2d(x, dw, [1, 1, 1, 1], "SAME",
                                                                                dilations=[2, 2]),
        "conv 1×1 (pointwise)": lambda x: tf.nn.conv2d(x, pw, 1, "SAME"),
        "conv 3×3": lambda x: tf.nn.conv2d(x, k3, 1, "SAME"),
        "avg_pool 3×3": lambda x: tf.nn.avg_pool2d(x, 3, 1, "SAME"),
        "max_pool 3×3": lambda x: tf.nn.max_pool2d(x, 3, 1, "SAME"),
    }
    print("| kernel (forward + backward) | XLA off ms | XLA on ms | on / off |\n|---|---|---|---|")
    for name, op in ops.items():
        medians = []
        for jit in (False, True):
            @tf.function(jit_compile=jit)
            def f(x, op=op):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = tf.reduce_sum(tf.nn.relu(op(x)) ** 2)
                return tape.gradient(y, x)

            f(x).numpy(), f(x).numpy()  # trace / compile, warm up
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                f(x).numpy()
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times))
        print(f"| {name} | {medians[0] * 1e3:.2f} | {medians[1] * 1e3:.2f} | {medians[1] / medians[0]:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
