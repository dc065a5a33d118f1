"""The recipe's retrain step with TensorFlow's oneDNN kernels off and on, side by side, each in a process of
its own (TensorFlow reads TF_ENABLE_ONEDNN_OPTS when it loads; capnas_tf sets it to 1 unless it is set).

    python benchmarks/onednn.py            # median of 30 steps after 5 warm-up steps, each setting
    python benchmarks/onednn.py --steps=10

A step: `RetrainConfig` defaults (DARTS_V2 encoder at C = 16, transformer decoder with counting attention),
32 random 32 × 32 images × 4 captions of 16 tokens, AdamW. On CPUs without AVX-512 TensorFlow leaves
oneDNN off by itself; on those with it, both rows run oneDNN's kernels unless the variable says 0.
"""
import argparse
import json
import os
import subprocess
import sys


def child(steps: int) -> dict:
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from capnas_tf import retrain
    from capnas_tf.config import RetrainConfig

    config = RetrainConfig()
    keras.utils.set_random_seed(0)
    captioner = retrain.build_captioner(config, vocab_size=40, max_caption_len=16, image_size=32)
    optimizer = retrain.build_optimizer(config, 1000)
    images = tf.random.uniform([32, 32, 32, 3])
    tokens = tf.random.uniform([32, 4, 16], 1, 40, tf.int32)
    step = retrain.make_train_step(captioner, optimizer)  # the retrain's own step

    start = time.perf_counter()
    step(images, tokens).numpy()
    trace = time.perf_counter() - start
    for _ in range(5):
        step(images, tokens).numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images, tokens).numpy()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * float(np.median(times)), "first_call_s": trace}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps)))
        return 0
    rows = {}
    for setting in ("0", "1"):
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__, "--child", f"--steps={args.steps}"], env=env,
                             capture_output=True, text=True, check=True).stdout
        rows[setting] = json.loads(out.strip().splitlines()[-1])
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"CPU: {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}; {os.cpu_count()} logical cores")
    print("| TF_ENABLE_ONEDNN_OPTS | retrain step ms (median) | × off | first call s |")
    print("| --- | --- | --- | --- |")
    for setting, row in rows.items():
        print(f"| {setting} | {row['median_ms']:.0f} | {row['median_ms'] / rows['0']['median_ms']:.2f} | "
              f"{row['first_call_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
