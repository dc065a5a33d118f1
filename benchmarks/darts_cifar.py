"""DARTS' CIFAR-10 search setting with a classification head, timed as the reference PyTorch DARTS.

    python benchmarks/search_step.py --darts_cifar          # or: python benchmarks/darts_cifar.py
    python benchmarks/darts_cifar.py --xla=off,on --repeats=3

Supernet E of 8 cells, 16 initial channels, 4 nodes, the 8 DARTS candidates; a global-average-pool +
Dense(10) head; batch 64 of 32×32×3 random images and 10 classes. Weights: SGD lr 0.025, momentum
0.9, weight decay 3e-4, gradient clipping 5 (global norm). Architecture A: Adam 3e-4, betas
(0.5, 0.999), weight decay 1e-3. Steps timed (each in its own subprocess, as in search_step.py):

- plain: one weight step (forward, backward, update of the weights) at the current A;
- darts_1st: A by ∇_A L_val(w, A), then the weight step;
- darts_2nd: A by the second-order DARTS hypergradient through w' = w − η∇_w L_train, by nested
  tapes (`hypergradient.darts_hypergradient(method="exact")`, the search's default), then the weight step;
- darts_2nd_fd: the same with DARTS' own central difference for the Hessian-vector product
  (`method="finite_difference"`: what the reference PyTorch code runs);
- darts_2nd_reuse, darts_2nd_fd_reuse: the two second orders with `--reuse_unrolled_gradients`: the
  weight step applies the ∇_w L_train(w, A) the virtual step w' already computed instead of
  recomputing it at the updated A (one forward and backward fewer).

The reference, measured on a machine of this kind (2 cores, 2 threads): 7.2 s plain, 16.8 s first
order, 36.9 s second order (5.1× plain), 13.9 GiB peak in second order. Targets: second order at
most 4× our plain step, and at most half the reference's time (~18 s).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step as bench  # noqa: E402  (shared measurement helpers)

MODES = ("plain", "darts_1st", "darts_2nd", "darts_2nd_reuse", "darts_2nd_fd", "darts_2nd_fd_reuse", "plain_bf16",
         "darts_2nd_reuse_bf16")
SECOND_ORDER = ("darts_2nd", "darts_2nd_reuse", "darts_2nd_fd", "darts_2nd_fd_reuse", "darts_2nd_reuse_bf16")
BF16 = "_bf16"  # suffix: the supernet and head compute in bfloat16 (mixed_bfloat16; weights float32)
TITLES = {"plain": "plain weight step", "darts_1st": "DARTS 1st order", "darts_2nd": "DARTS 2nd order (nested tapes)",
          "darts_2nd_reuse": "DARTS 2nd order (nested tapes), reuse",
          "darts_2nd_fd": "DARTS 2nd order (finite diff., as the reference)",
          "darts_2nd_fd_reuse": "DARTS 2nd order (finite diff.), reuse",
          "plain_bf16": "plain weight step, bfloat16", "darts_2nd_reuse_bf16": "DARTS 2nd order (nested tapes), reuse, bfloat16"}
REFERENCE_S = {"plain": 7.2, "darts_1st": 16.8, "darts_2nd_fd": 36.9}
REFERENCE_PEAK_GIB = {"darts_2nd_fd": 13.9}


def measure(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from capnas_tf.search import hypergradient as hg
    from capnas_tf.search.precision import dtype_policy
    from capnas_tf.search.stateless import bind, values_of
    from capnas_tf.search.strategies import CoupledWeightDecayAdam, apply_global_gradients
    from capnas_tf.search_space.ops import second_order_batch_norm
    from capnas_tf.search_space.supernet import SupernetEncoder

    keras.utils.set_random_seed(0)
    B, S, classes = args.batch_size, 32, 10
    mode = args.mode.removesuffix(BF16)
    with dtype_policy("mixed_bfloat16" if args.mode.endswith(BF16) else "float32"):
        encoder = SupernetEncoder(channels=args.channels, num_cells=args.cells, num_nodes=4, name="supernet")
        encoder.build((None, S, S, 3))
        head = keras.layers.Dense(classes, name="head")
        head.build((None, encoder.output_channels))
    weights = encoder.trainable_variables + head.trainable_variables  # w
    A = encoder.arch_variables
    weight_optimizer = keras.optimizers.SGD(0.025, momentum=0.9, weight_decay=3e-4)
    arch_optimizer = CoupledWeightDecayAdam(3e-4, l2=1e-3, beta_1=0.5, beta_2=0.999)  # DARTS': L2 on ∇A
    weight_optimizer.build(weights)
    arch_optimizer.build(A)

    rng = np.random.default_rng(0)
    batch = lambda: {"image": tf.constant(rng.uniform(size=(B, S, S, 3)), tf.float32),  # noqa: E731
                     "label": tf.constant(rng.integers(0, classes, size=B), tf.int32)}
    train, val = batch(), batch()

    def nll(batch_, A_values):
        _, pooled = encoder(batch_["image"], training=True,
                            op_weights=tuple(tf.nn.softmax(a, axis=-1) for a in A_values))  # pooled: (B, C)
        logp = tf.nn.log_softmax(tf.cast(head(pooled), tf.float32))  # not the fused op: second derivatives
        return -tf.reduce_mean(tf.gather(logp, batch_["label"], axis=-1, batch_dims=1))

    def loss_on(batch_):
        def loss(w, A_values):
            with bind((weights, w)):
                return nll(batch_, A_values)
        return loss

    def weight_step():
        with tf.name_scope("weight_step"):  # name scopes: how benchmarks/profile_step.py attributes time
            with tf.GradientTape() as tape:
                loss = nll(train, values_of(A))
            grads = tape.gradient(loss, weights)
            grads = [tf.convert_to_tensor(g) for g in grads]
            apply_global_gradients(weight_optimizer, grads, weights, clip_norm=5.0)
            return loss

    def darts_step(order, method, reuse=False):
        with second_order_batch_norm([encoder, head], order == 2 and method == "exact"):  # as DartsStrategy
            result = hg.darts_hypergradient_with_state(loss_on(train), loss_on(val), values_of(A),
                                                       values_of(weights), 0.025, order=order, method=method,
                                                       epsilon=0.01)
        with tf.name_scope("architecture_update"):
            apply_global_gradients(arch_optimizer, result.grad_A, A)
        if reuse:  # the virtual step's ∇_w L_train(w, A_t), as DartsStrategy does with the option on
            with tf.name_scope("weight_update"):
                apply_global_gradients(weight_optimizer, result.train_grads, weights, clip_norm=5.0)
            return result.val_loss, result.train_loss
        return result.val_loss, weight_step()

    steps = {"plain": weight_step, "darts_1st": lambda: darts_step(1, "exact"),
             "darts_2nd": lambda: darts_step(2, "exact"),
             "darts_2nd_reuse": lambda: darts_step(2, "exact", reuse=True),
             "darts_2nd_fd": lambda: darts_step(2, "finite_difference"),
             "darts_2nd_fd_reuse": lambda: darts_step(2, "finite_difference", reuse=True)}
    step = tf.function(steps[mode], jit_compile=args.xla, autograph=False)
    result = bench.time_steps(step, (), repeats=args.repeats, profile_dir=args.profile_dir,
                              profile_steps=args.profile_steps)
    result["traces"] = step.experimental_get_tracing_count()
    result["params"] = int(sum(np.prod(w.shape) for w in weights))
    return result


def gib(mb) -> str:
    return bench.fmt(None if mb is None else mb / 1024, ".2f")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--darts_cifar", action="store_true", help="accepted for search_step.py's delegation")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--xla", default="off", help="'off', 'on' or 'off,on'")
    parser.add_argument("--batch_size", type=int, default=64, help="DARTS: 64")
    parser.add_argument("--channels", type=int, default=16, help="DARTS: 16 initial channels")
    parser.add_argument("--cells", type=int, default=8, help="DARTS: 8 cells")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode (median)")
    parser.add_argument("--mode_timeout", type=float, default=2400.0,
                        help="seconds before one mode is stopped and recorded as a timeout")
    parser.add_argument("--max_rss_gb", type=float, default=14.0,
                        help="a mode using more resident memory is stopped (the machine is shared)")
    parser.add_argument("--output", default=None,
                        help="markdown file for the table (default docs/performance.md; '' = print only)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--profile_dir", default="", help=argparse.SUPPRESS)  # internal: profile_step.py
    parser.add_argument("--profile_steps", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        args.xla = args.xla == "on"
        print(json.dumps(measure(args)))
        return
    modes = [m for m in args.modes.split(",") if m]
    xla_options = [{"off": False, "on": True}.get(x) for x in args.xla.split(",")]
    if any(m not in MODES for m in modes) or None in xla_options:
        raise SystemExit(f"--modes must be a subset of {MODES} and --xla of off,on; received "
                         f"--modes={args.modes!r} --xla={args.xla!r}.")
    if "plain" not in modes:
        modes.insert(0, "plain")
    command = "python benchmarks/search_step.py --darts_cifar " + " ".join(a for a in argv if a != "--darts_cifar")
    header = (f"DARTS CIFAR search setting: supernet C={args.channels}, {args.cells} cells × 4 nodes, 8 candidates, "
              f"batch {args.batch_size}, 32×32×3 random inputs, 10 classes; median of {args.repeats} steps after "
              f"trace + warm-up")
    machine = bench.machine_line()
    print(header + "\n" + machine, flush=True)
    started, results = time.time(), {}
    for xla in xla_options:
        for mode in [m for m in MODES if m in modes]:
            flags = [f"--mode={mode}", f"--xla={'on' if xla else 'off'}", f"--batch_size={args.batch_size}",
                     f"--channels={args.channels}", f"--cells={args.cells}", f"--repeats={args.repeats}"]
            t0 = time.time()
            r = bench.run_child(os.path.abspath(__file__), flags, timeout=args.mode_timeout,
                                max_rss_gb=args.max_rss_gb)
            results[(mode, xla)] = r
            shown = r.get("error") or (f"{r['step_s']:.2f} s/step, peak {r['peak_mb'] / 1024:.2f} GiB, "
                                      f"tensors {gib(r.get('tensor_peak_mb'))} GiB, trace {r['trace_s']:.0f} s")
            print(f"  XLA {'on ' if xla else 'off'} {mode:18s} {shown}  [{time.time() - t0:.0f} s]", flush=True)

    rows = ["| step | XLA | time s | × our plain | reference s | × reference | peak GiB | tensors GiB | "
            "× our plain | reference GiB | trace s (Python + first call) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for xla in xla_options:
        plain = results.get(("plain", xla), {})
        for mode in [m for m in MODES if m in modes]:
            r = results[(mode, xla)]
            if "error" in r:
                rows.append(f"| {TITLES[mode]} | {'on' if xla else 'off'} | failed: {r['error']} | | | | | | | | |")
                continue
            ref = REFERENCE_S.get(mode)
            rows.append(f"| {TITLES[mode]} | {'on' if xla else 'off'} | {r['step_s']:.2f} | "
                        f"{bench._ratio(r['step_s'], plain.get('step_s'))} | {bench.fmt(ref, '.1f')} | "
                        f"{bench._ratio(r['step_s'], ref)} | {r['peak_mb'] / 1024:.2f} | "
                        f"{gib(r.get('tensor_peak_mb'))} | "
                        f"{bench._ratio(r.get('tensor_peak_mb'), plain.get('tensor_peak_mb'))} | "
                        f"{bench.fmt(REFERENCE_PEAK_GIB.get(mode), '.1f')} | "
                        f"{r['python_trace_s']:.0f} + {r['first_call_s']:.0f} |")
    verdicts = []
    for xla in xla_options:
        plain = results.get(("plain", xla), {})
        for mode in [m for m in SECOND_ORDER if m in modes]:
            second = results.get((mode, xla), {})
            if "step_s" not in plain or "step_s" not in second:
                continue
            ratio, secs = second["step_s"] / plain["step_s"], second["step_s"]
            verdicts.append(f"- XLA {'on' if xla else 'off'}, {TITLES[mode]} = {ratio:.2f}× our plain step "
                            f"(target ≤ 4×: {'met' if ratio <= 4 else 'missed'}); {secs:.1f} s "
                            f"(target ≤ 18 s, half the reference's 36.9 s: {'met' if secs <= 18 else 'missed'})")
    table = "\n".join(rows)
    print("\n" + table + "\n\n" + "\n".join(verdicts))
    body = (f"Command: `{command.strip()}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{time.time() - started:.0f} s in all.\n\n{header}.\n{machine}.\n"
            f"Reference: PyTorch DARTS on a 2-core, 2-thread machine of this kind (its published step times); "
            f"its second order is the finite-difference one. Peak = the process's resident-set high-water mark "
            f"during the timed steps above the built models (graphs included); tensors = the TensorFlow "
            f"allocator's peak bytes in use (weights, optimizer slots, activations), as a GPU would report.\n\n{table}\n\n" + "\n".join(verdicts) + "\n")
    output = args.output if args.output is not None else bench.DEFAULT_DOC
    if output:
        bench.write_block(output, "darts_cifar", body)
        print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
