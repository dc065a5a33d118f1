"""Cached vs uncached greedy decoding of fixed-length captions, for both decoders.

    python benchmarks/decoding.py                 # batch 32, 32 tokens, V = 1000, 7 repeats
    python benchmarks/decoding.py --xla --batch 64

(from the repository root; prefix `PYTHONPATH=.` if capnas_tf is not pip-installed.)

Each decoder is randomly initialised; <end> is set to an id that argmax never returns, so every
caption runs the full `--max-len` steps. `use_cache=True` runs one position per step through the
decoder's cache (LSTM state, Transformer key/value caches); `use_cache=False` re-runs the whole
[B, max_len] prefix every step, so its cost grows as T². Both loops are traced once with
`tf.function` (optionally XLA), warmed up, then timed; the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from capnas_tf.decoders import get_decoder  # noqa: E402
from capnas_tf.decoders.decoding import greedy_decode  # noqa: E402

NEVER = -1  # an <end> id argmax cannot produce: every caption is max_len tokens long


def median_seconds(fn, args, repeats: int) -> float:
    """Median wall time of `fn(*args)` over `repeats` calls, after one warm-up call."""
    fn(*args)[0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)[0].numpy()  # .numpy() waits for the result
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_decoder(name: str, flags) -> dict:
    """Median seconds of cached and uncached greedy decoding for the decoder `name`."""
    keras.utils.set_random_seed(0)
    decoder = get_decoder(name, vocab_size=flags.vocab, max_len=flags.max_len)
    grid = tf.random.normal([flags.batch, flags.grid, flags.grid, flags.channels])
    features = (grid, tf.reduce_mean(grid, axis=[1, 2]))
    decoder(features, tf.ones([flags.batch, flags.max_len], tf.int32))

    def make(use_cache):
        @tf.function(jit_compile=flags.xla)
        def decode(grid, pooled):
            return greedy_decode(
                decoder, (grid, pooled), max_len=flags.max_len, end_id=NEVER, use_cache=use_cache
            )

        return decode

    cached, uncached = make(True), make(False)
    ids_cached, _ = cached(*features)
    ids_uncached, _ = uncached(*features)
    same = bool(tf.reduce_all(ids_cached == ids_uncached))
    return {
        "cached": median_seconds(cached, features, flags.repeats),
        "uncached": median_seconds(uncached, features, flags.repeats),
        "same_tokens": same,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=7, help="side of the encoder grid")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--xla", action="store_true", help="compile the loops with XLA")
    flags = parser.parse_args()
    print(
        f"greedy decoding, batch {flags.batch}, {flags.max_len} tokens, V={flags.vocab}, "
        f"grid {flags.grid}x{flags.grid}x{flags.channels}, xla={flags.xla}, "
        f"median of {flags.repeats}, TF {tf.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"{'decoder':12s} {'cached ms':>10s} {'uncached ms':>12s} {'speedup':>8s}  same tokens")
    for name in ("lstm", "transformer"):
        r = benchmark_decoder(name, flags)
        print(
            f"{name:12s} {1e3 * r['cached']:10.1f} {1e3 * r['uncached']:12.1f} "
            f"{r['uncached'] / r['cached']:7.1f}x  {r['same_tokens']}"
        )


if __name__ == "__main__":
    main()
