"""Is the input pipeline the bottleneck of the search? The same search steps, fed once by the real
tf.data pipeline (capnas_shapes, the three streams D_tr, U, D_val zipped and prefetched as
`jobs.search_streams` builds them, through `experimental_distribute_dataset` as `run_search` does) and
once from the same batches already in memory.

    python benchmarks/input_pipeline.py            # quickstart's search space, 2 rounds of 30 steps
    python benchmarks/input_pipeline.py --steps=10 --rounds=1 --output=''

Target: pipeline-fed time ≤ 1.1 × in-memory time. The step function is the search loop's own
(`loop.make_step_function`), traced and warmed up before anything is timed. Each round times N
pipeline-fed steps, then the same N batches again from memory, so that the load of the (shared)
machine drifts as little as possible between the two; the ratio is Σ pipeline / Σ memory over rounds.
The pipeline alone (drawing N batches, no step) is timed too.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step as bench  # noqa: E402  (write_block, machine_line)

QUICKSTART_PRIMITIVES = "none,skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="search steps per round (quickstart: 30 per epoch)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (pipeline-fed, in-memory) epochs")
    parser.add_argument("--batch_size", type=int, default=16, help="batch of each stream")
    parser.add_argument("--image_size", type=int, default=32, help="S of capnas_shapes images")
    parser.add_argument("--hypergradient", default="exact", choices=("exact", "finite_difference"),
                        help="hypergradient of the three-stage step")
    parser.add_argument("--channels", type=int, default=8, help="supernet C (quickstart: 8)")
    parser.add_argument("--cells", type=int, default=3, help="supernet cells (quickstart: 3)")
    parser.add_argument("--nodes", type=int, default=3, help="supernet nodes per cell (quickstart: 3)")
    parser.add_argument("--primitives", default=QUICKSTART_PRIMITIVES, help="candidate ops (quickstart's five)")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir of capnas_shapes (None: TFDS' default)")
    parser.add_argument("--output", default=None,
                        help="markdown file for the result (default docs/performance.md; '' = print only)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be >= 1; received {args.steps}, {args.rounds}.")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from capnas_tf.config import SearchConfig, SupernetConfig
    from capnas_tf.config import DataConfig
    from capnas_tf.data.pipeline import load_caption_data
    from capnas_tf.jobs import search_streams
    from capnas_tf.search.loop import make_step_function
    from capnas_tf.distribute import configure_runtime
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search.strategies import ThreeStageStrategy

    machine = bench.machine_line()
    configure_runtime(0, deterministic=False)
    data = load_caption_data(DataConfig(image_size=args.image_size, batch_size=args.batch_size,
                                        data_dir=args.data_dir), tempfile.mkdtemp(prefix="input_pipeline_"))
    config = SearchConfig(hypergradient=args.hypergradient, supernet=SupernetConfig(
        channels=args.channels, num_cells=args.cells, num_nodes=args.nodes,
        primitives=tuple(args.primitives.split(","))))
    models = build_search_models(config, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                 image_size=args.image_size)
    strategy = ThreeStageStrategy(models, config, max_caption_len=data.max_caption_len)
    dist = tf.distribute.get_strategy()
    step = make_step_function(strategy, dist, update_architecture=True, jit_compile=False)
    batches = iter(dist.experimental_distribute_dataset(search_streams(data, args.batch_size)))

    def run(batch):
        float(step(batch)["stage3/val_loss"])  # waits for the step

    t0 = time.perf_counter()
    run(next(batches))
    trace_s = time.perf_counter() - t0
    for _ in range(2):
        run(next(batches))

    pipeline_s, memory_s, draw_s, ratios = 0.0, 0.0, 0.0, []
    for r in range(args.rounds):
        seen = []
        t0 = time.perf_counter()
        for _ in range(args.steps):
            seen.append(next(batches))
            run(seen[-1])
        fed = time.perf_counter() - t0
        t0 = time.perf_counter()
        for batch in seen:
            run(batch)
        mem = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tf.nest.map_structure(lambda t: t.numpy(), next(batches))
        draw = time.perf_counter() - t0
        pipeline_s, memory_s, draw_s = pipeline_s + fed, memory_s + mem, draw_s + draw
        ratios.append(fed / mem)
        print(f"round {r + 1}: pipeline-fed {fed:.2f} s, in memory {mem:.2f} s, ratio {fed / mem:.3f}; "
              f"pipeline alone {draw:.2f} s for {args.steps} batches", flush=True)
    ratio = pipeline_s / memory_s
    n = args.rounds * args.steps
    verdict = "met" if ratio <= 1.1 else "missed"
    summary = (f"| fed by | steps | time s | s / step |\n|---|---|---|---|\n"
               f"| tf.data pipeline (capnas_shapes, prefetch) | {n} | {pipeline_s:.2f} | {pipeline_s / n:.3f} |\n"
               f"| the same batches in memory | {n} | {memory_s:.2f} | {memory_s / n:.3f} |\n"
               f"| the pipeline alone (no step) | {n} | {draw_s:.2f} | {draw_s / n:.4f} |\n\n"
               f"Ratio pipeline-fed / in memory: **{ratio:.3f}** (per round: "
               f"{', '.join(f'{x:.3f}' for x in ratios)}); target ≤ 1.1: {verdict}.")
    print("\n" + summary)
    command = "python benchmarks/input_pipeline.py " + " ".join(argv)
    body = (f"Command: `{command.strip()}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Three-stage search step ({args.hypergradient}), supernet C={args.channels}, {args.cells} cells × "
            f"{args.nodes} nodes over {args.primitives}; batch {args.batch_size} per stream, "
            f"{args.image_size}×{args.image_size} capnas_shapes; trace {trace_s:.0f} s (not timed).\n"
            f"{machine}.\n\n{summary}\n")
    output = args.output if args.output is not None else bench.DEFAULT_DOC
    if output:
        bench.write_block(output, "input_pipeline", body)
        print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
