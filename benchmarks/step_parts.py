"""Where the time of a three-stage search step goes: each part of the step timed on its own (each its
own traced function, median of repeated calls after a warm-up), on the batches of search_step.py.

    python benchmarks/step_parts.py --quick     # the --quick supernet of search_step.py
    python benchmarks/step_parts.py             # the default search config (traces take minutes)

Parts, in the order a step runs them (η, E, F, W, A as in `hypergradient.py`):
  stage1_forward        L_tr(E, F, A) — the supernet captioner on D_tr
  stage1_grad           L_tr and ∇_{E,F} L_tr (the plain step without the optimizer update)
  plain_step            the plain Stage I step (forward, backward, AdamW update)
  teacher_decode        the teacher's greedy captions of U (a while loop over L − 1 positions)
  stage2_grad           L_u(W, U, E', F') and ∇_W L_u (teacher forward + student forward/backward)
  stage3_grad           L_val(W') and ∇_{W'} L_val (student only)
  unroll                E', F', W' and L_val without an outer tape (every forward of the exact step)
  exact_hypergradient   ∇_A f by nested tapes (the unroll above, recorded, then reverse mode through it)
  fd_hypergradient      ∇_A f by central differences (first-order tapes only)
  student_step          W's weight step (teacher decode + teacher forward + student step)
  three_stage_step      the whole search step (exact): architecture step, then both weight steps
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step as bench  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="search_step.py's --quick supernet")
    parser.add_argument("--channels", type=int, default=8, help="supernet C")
    parser.add_argument("--cells", type=int, default=5, help="supernet cells")
    parser.add_argument("--nodes", type=int, default=4, help="nodes per cell")
    parser.add_argument("--primitives", default="", help="candidate ops (empty: the DARTS set)")
    parser.add_argument("--batch_size", type=int, default=16, help="batch of each stream")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per part (median)")
    parser.add_argument("--output", default=None,
                        help="markdown file for the table (default docs/performance.md; '' = print only)")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.cells, args.nodes = 4, 2, 2
        args.primitives = args.primitives or "none,skip_connect,avg_pool_3x3,sep_conv_3x3"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from capnas_tf.config import SearchConfig, SupernetConfig
    from capnas_tf.search import hypergradient as hg
    from capnas_tf.search.captioning import make_three_stage_problem
    from capnas_tf.search.gradients import gradients
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search.stateless import values_of
    from capnas_tf.search.strategies import ThreeStageStrategy

    L, V, S = 16, 64, 32
    batches = bench.synthetic_batches(args.batch_size, S, L, V)
    supernet = SupernetConfig(channels=args.channels, num_cells=args.cells, num_nodes=args.nodes,
                              **({"primitives": tuple(args.primitives.split(","))} if args.primitives else {}))
    config = SearchConfig(supernet=supernet)
    models = build_search_models(config, vocab_size=V, max_caption_len=L, image_size=S)
    strategy = ThreeStageStrategy(models, config, max_caption_len=L)
    m = models
    eta = strategy.eta

    def problem():
        return make_three_stage_problem(m, batches, max_caption_len=L)

    def current():
        return strategy.A_values(), values_of(m.E), values_of(m.F), values_of(m.W)

    def stage1_forward():
        A, E, F, _ = current()
        return problem().train_loss(E, F, A)

    def stage1_grad():
        A, E, F, _ = current()
        return gradients(lambda: problem().train_loss(E, F, A), [E, F])

    def teacher_decode():
        A, E, F, _ = current()
        return problem().pseudo_captions(E, F, A)

    tokens = tf.function(teacher_decode)()

    def stage2_grad():
        A, E, F, W = current()
        return gradients(lambda: problem().pseudo_caption_loss(W, E, F, A, tokens), [W])

    def stage3_grad():
        _, _, _, W = current()
        return gradients(lambda: problem().val_loss(W), [W])

    def unroll():
        A, E, F, W = current()
        return hg.unroll(problem(), A, E, F, W, eta).val_loss

    def exact():
        return hg.exact_hypergradient(problem(), *current(), eta).grad_A

    def fd():
        return hg.finite_difference_hypergradient(problem(), *current(), eta, epsilon=config.fd_epsilon).grad_A

    parts = {
        "stage1_forward": stage1_forward, "stage1_grad": stage1_grad,
        "plain_step": lambda: strategy.supernet_weight_step(batches["train"]),
        "teacher_decode": teacher_decode, "stage2_grad": stage2_grad, "stage3_grad": stage3_grad,
        "unroll": unroll, "exact_hypergradient": exact, "fd_hypergradient": fd,
        "student_step": lambda: strategy.student_weight_step(batches["unlabeled"]["image"]),
        "three_stage_step": lambda: strategy.step(batches, update_architecture=True),
    }
    rows, plain_s = [], None
    for name, fn in parts.items():
        f = tf.function(fn)
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), f())
        trace_s = time.perf_counter() - t0
        tf.nest.map_structure(lambda t: t.numpy(), f())
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), f())
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        plain_s = med if name == "plain_step" else plain_s
        rows.append((name, med, trace_s))
        print(f"{name:20s} {med:8.4f} s  (trace + first call {trace_s:.0f} s)", flush=True)
    table = ["| part | time s | × plain step | trace + first call s |", "|---|---|---|---|"]
    table += [f"| {n} | {t:.4f} | {t / plain_s:.2f} | {tr:.0f} |" for n, t, tr in rows]
    table = "\n".join(table)
    print("\n" + table)
    command = "python benchmarks/step_parts.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = (f"Command: `{command.strip()}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Supernet C={args.channels}, {args.cells} cells × {args.nodes} nodes over "
            f"{args.primitives or 'the DARTS set'}; batch {args.batch_size}, L={L}, V={V}; XLA off; median of "
            f"{args.repeats} calls.\n{bench.machine_line()}.\n\n{table}\n")
    output = args.output if args.output is not None else bench.DEFAULT_DOC
    if output:
        bench.write_block(output, "step_parts_quick" if args.quick else "step_parts", body)


if __name__ == "__main__":
    main()
