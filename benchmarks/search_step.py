"""Cost of one search step, side by side: a plain Stage I supernet step, a three-stage step with the
`exact` hypergradient and one with the `finite_difference` hypergradient, on the same batch.

    python benchmarks/search_step.py            # default search config
    python benchmarks/search_step.py --quick    # smaller supernet, fewer repeats

Each mode runs in its own subprocess so that its peak memory (the growth of the process's resident-set
high-water mark over the models' footprint, on CPU) is its own. Times are medians over repeated steps
after the trace and a warm-up step. Ratios are to the plain step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("plain", "exact", "finite_difference")


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(mode: str, args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from capnas_tf.config import SearchConfig, SupernetConfig
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search.strategies import ThreeStageStrategy

    rng = np.random.default_rng(0)
    B, S, L, V = args.batch_size, 32, 16, 64
    tokens = np.zeros((B, L), np.int32)
    tokens[:, 0] = 1
    tokens[:, 1:12] = rng.integers(3, V, size=(B, 11))
    tokens[:, 12] = 2
    batch = lambda: {"image": tf.constant(rng.uniform(size=(B, S, S, 3)), tf.float32),  # noqa: E731
                     "tokens": tf.constant(tokens)}
    batches = {"train": batch(), "val": batch(), "unlabeled": {"image": batch()["image"]}}
    hyper = "exact" if mode == "plain" else mode
    config = SearchConfig(hypergradient=hyper, supernet=SupernetConfig(
        channels=args.channels, num_cells=args.cells, num_nodes=args.nodes))
    models = build_search_models(config, vocab_size=V, max_caption_len=L, image_size=S)
    strategy = ThreeStageStrategy(models, config, max_caption_len=L)
    if mode == "plain":
        step = tf.function(lambda b: strategy.supernet_weight_step(b["train"]))
    else:
        step = tf.function(lambda b: strategy.step(b, update_architecture=True))
    baseline = current_rss_mb()
    t0 = time.perf_counter()
    step(batches)
    trace_s = time.perf_counter() - t0
    step(batches)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step(batches)
        times.append(time.perf_counter() - t0)
    return {"mode": mode, "step_s": statistics.median(times), "trace_s": trace_s,
            "peak_mb": max(rss_peak_mb() - baseline, 1e-3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 cells of 3 nodes, 3 repeats")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args()
    if args.quick:
        args.cells, args.nodes, args.repeats = 3, 3, 3
    if args.mode:
        print(json.dumps(measure(args.mode, args)))
        return
    forwarded = [f"--channels={args.channels}", f"--cells={args.cells}", f"--nodes={args.nodes}",
                 f"--batch_size={args.batch_size}", f"--repeats={args.repeats}"]
    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, f"--mode={mode}", *forwarded], check=True,
                             capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    plain = results["plain"]
    print(f"supernet C={args.channels}, {args.cells} cells × {args.nodes} nodes, batch {args.batch_size}, "
          f"median of {args.repeats} steps (CPU, peak = RSS high-water mark growth)")
    print(f"{'step':20s} {'time s':>8s} {'× plain':>8s} {'peak MB':>9s} {'× plain':>8s} {'trace s':>8s}")
    for mode in MODES:
        r = results[mode]
        print(f"{mode:20s} {r['step_s']:8.3f} {r['step_s'] / plain['step_s']:8.2f} {r['peak_mb']:9.0f} "
              f"{r['peak_mb'] / plain['peak_mb']:8.2f} {r['trace_s']:8.1f}")


if __name__ == "__main__":
    main()
