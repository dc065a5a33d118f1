"""How close is the `finite_difference` hypergradient to `exact` on the real supernet (BatchNorm, ReLU,
max-pooling), and at which ε? Cosine and relative error of the finite-difference estimate against the
nested-tape one, per ε, for three-stage (`--hypergradient_terms` full and paper) and DARTS' second order,
on a few capnas_shapes batches after a warm-up of weight steps, in float32 as the search runs.

    python benchmarks/fd_accuracy.py                    # quickstart's supernet (C=8, 3 cells × 3 nodes, 5 ops)
    python benchmarks/fd_accuracy.py --config=default   # SupernetConfig's defaults (C=8, 5 cells × 4 nodes, 8 ops)

ε is `SearchConfig.fd_epsilon` (--fd_epsilon): each Hessian-vector product H·v is
[g(x + ε/‖v‖ · v) − g(x − ε/‖v‖ · v)] / (2ε/‖v‖), a step of norm ε in the perturbed weights.

Besides the end-to-end estimates, each Hessian-vector product is compared alone at the tangent the exact
chain rule gives it (the forward-over-reverse product, exact, on the same inputs): Stage II's ∇²_{(E',F',A),W}
L_u · v, Stage I's ∇²_{A,(E,F)} L_tr · d, and DARTS' ∇²_{A,w} L_train · v. As in the search, the exact
estimators' passes take BatchNorm's `_moments` path and the finite differences its fused kernel.

A figure near 1 (cosine) and 0 (relative error ‖fd − exact‖ / ‖exact‖) means agreement. Small ε is limited by
float32 rounding of the gradients' difference, large ε by the kinks of ReLU and max-pooling (and BatchNorm's
curvature) between x − ε and x + ε.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step as bench  # noqa: E402  (write_block, machine_line)

QUICKSTART_PRIMITIVES = "none,skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3"
CONFIGS = {  # name → (C, cells, nodes, primitives)
    "quick": (8, 3, 3, QUICKSTART_PRIMITIVES),  # configs/quickstart.cfg's supernet
    "default": (8, 5, 4, ""),  # SupernetConfig's defaults, DARTS' eight candidates
}
EPSILONS = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1"
# The estimates compared: the end-to-end hypergradients, then each Hessian-vector product alone.
ESTIMATES = ("three_stage_full", "three_stage_paper", "darts_2nd")
PRODUCTS = ("hvp_stage2", "hvp_stage1", "hvp_darts")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quick", choices=sorted(CONFIGS), help="supernet size")
    parser.add_argument("--channels", type=int, default=0, help="C of the supernet (0: --config's)")
    parser.add_argument("--cells", type=int, default=0, help="cells of the supernet (0: --config's)")
    parser.add_argument("--nodes", type=int, default=0, help="intermediate nodes per cell (0: --config's)")
    parser.add_argument("--primitives", default=None,
                        help="comma-separated candidate ops ('': the DARTS set; unset: --config's)")
    parser.add_argument("--epsilons", default=EPSILONS,
                        help="comma-separated ε (SearchConfig.fd_epsilon); 'default': SearchConfig's alone")
    parser.add_argument("--batches", type=int, default=3, help="batches (one each of D_tr, U, D_val) measured")
    parser.add_argument("--warmup_steps", type=int, default=30,
                        help="three-stage weight steps (A frozen) before measuring: the search's warm-up, so that the "
                             "weights are not at their initialisation (quickstart: one epoch of 30 steps)")
    parser.add_argument("--batch_size", type=int, default=16, help="batch of each stream")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and of the batches' order")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="the models' compute dtype and A's: float32 as the search runs; float64 (no fused "
                             "BatchNorm) separates float32 rounding from the kinks of ReLU and max-pooling")
    parser.add_argument("--json", default="/tmp/fd_accuracy.json", help="every measured figure, per batch")
    parser.add_argument("--render_json", default="",
                        help="re-render the block of an earlier run's --json record; no measuring")
    parser.add_argument("--output", default=None,
                        help="markdown file for the table (default docs/performance.md; '' = print only)")
    args = parser.parse_args(argv)
    if args.epsilons == "default":
        from capnas_tf.config import SearchConfig

        args.epsilons = f"{SearchConfig().fd_epsilon:g}"
    args.epsilon_values = [float(e) for e in args.epsilons.split(",")]
    if args.batches < 1 or args.warmup_steps < 0 or min(args.epsilon_values) <= 0:
        parser.error("--batches must be >= 1, --warmup_steps >= 0 and every ε > 0.")
    return args


def supernet_of(args) -> tuple:
    """(C, cells, nodes, primitives): --config's, each overridden by its own flag where given."""
    channels, cells, nodes, primitives = CONFIGS[args.config]
    return (args.channels or channels, args.cells or cells, args.nodes or nodes,
            primitives if args.primitives is None else args.primitives)


def flat(values):
    import tensorflow as tf

    return tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], axis=0).numpy()


def agreement(approx, exact) -> dict:
    """Cosine and relative error ‖approx − exact‖ / ‖exact‖ of two flattened lists of tensors."""
    import numpy as np

    a, e = flat(approx), flat(exact)
    norm = float(np.linalg.norm(e))
    return {"cosine": float(a @ e / max(np.linalg.norm(a) * norm, 1e-30)),
            "relative_error": float(np.linalg.norm(a - e) / max(norm, 1e-30)), "exact_norm": norm}


def compared_hvp(epsilons, models, pairs: dict):
    """A Hessian-vector product that computes the exact product (forward over reverse) and the
    finite-difference one at each ε of the same inputs, records them in `pairs[name]` = (exact, [fd at
    each ε]) and returns the exact one, so that every later product of the chain rule gets its exact
    tangent and each product's error is its own."""
    from capnas_tf.search import hypergradient as hg
    from capnas_tf.search_space.ops import second_order_batch_norm

    def hvp(gradient_at, primals, tangents, inputs, like, name):
        with second_order_batch_norm(models, True):
            value = hg.forward_over_reverse_hvp()(gradient_at, primals, tangents, inputs, like, name)
        pairs[name] = (value, [hg.finite_difference_hvp(eps)(gradient_at, primals, tangents, inputs, like, name)
                               for eps in epsilons])
        return value

    return hvp


def make_estimators(strategy, darts_strategy, dtype):
    """The estimates, run op by op: exact (batches) → grads, finite-difference (batches, ε) → grads, and
    the products compared one by one (batches, [ε, …]). Op by op because tracing them costs more than running
    them here: the three nested-tape estimators in one graph took over 10 minutes and 11 GB to trace."""
    import tensorflow as tf

    from capnas_tf.search import hypergradient as hg
    from capnas_tf.search.captioning import make_three_stage_problem
    from capnas_tf.search.gradients import gradients
    from capnas_tf.search.stateless import unrolled, values_of
    from capnas_tf.search_space.ops import second_order_batch_norm

    m, config, L = strategy.models, strategy.config, strategy.max_caption_len
    eta = hg.InnerLearningRates(config.eta_e, config.eta_f, config.eta_w)

    def A_values():  # A is float32 whatever the policy: in float64 runs, cast so that ∇_A is float64 too
        return [tf.cast(a, dtype) for a in strategy.A_values()]

    def three_stage(batches, estimator, **kwargs):
        problem = make_three_stage_problem(m, batches, stage2=config.stage2, max_caption_len=L)
        return estimator(problem, A_values(), values_of(m.E), values_of(m.F), values_of(m.W), eta,
                         **kwargs).grad_A

    def darts(batches, method, **kwargs):
        losses = darts_strategy._loss_on(batches["train"]), darts_strategy._loss_on(batches["val"])
        w = values_of(m.E) + values_of(m.F)
        return hg.darts_hypergradient(*losses, A_values(), w, config.eta_e, order=2, method=method,
                                      **kwargs)[0]

    def exact(batches):
        with second_order_batch_norm(m.all(), True):
            return {"three_stage_full": three_stage(batches, hg.exact_hypergradient, terms="full"),
                    "three_stage_paper": three_stage(batches, hg.exact_hypergradient, terms="paper"),
                    "darts_2nd": darts(batches, "exact")}

    def finite_difference(batches, epsilon):
        return {"three_stage_full": three_stage(batches, hg.finite_difference_hypergradient, epsilon=epsilon,
                                                terms="full"),
                "three_stage_paper": three_stage(batches, hg.finite_difference_hypergradient, epsilon=epsilon,
                                                 terms="paper"),
                "darts_2nd": darts(batches, "finite_difference", epsilon=epsilon)}

    def products(batches, epsilons):
        """{product: (exact, [finite difference at each ε])}, each product at its exact inputs."""
        pairs = {}
        hvp = compared_hvp(epsilons, m.all(), pairs)
        problem = make_three_stage_problem(m, batches, stage2=config.stage2, max_caption_len=L)
        hg.hvp_hypergradient(problem, A_values(), values_of(m.E), values_of(m.F), values_of(m.W), eta, hvp)
        # DARTS' product through the same comparison: ∇²_{A,w} L_train · v at v = ∇_{w'} L_val(w', A).
        train_loss, val_loss = darts_strategy._loss_on(batches["train"]), darts_strategy._loss_on(batches["val"])
        w, A = values_of(m.E) + values_of(m.F), A_values()
        _, (gw,) = gradients(lambda: train_loss(w, A), [w])
        w1 = unrolled(w, gw, config.eta_e)
        _, (v,) = gradients(lambda: val_loss(w1, A), [w1])
        hvp(lambda w, A: gradients(lambda: train_loss(w, A), [A])[1][0], w, v, [A], A, "darts")
        return {"hvp_stage2": pairs["stage2"], "hvp_stage1": pairs["stage1"], "hvp_darts": pairs["darts"]}

    return exact, finite_difference, products


TITLES = {"three_stage_full": "three-stage, full", "three_stage_paper": "three-stage, paper's terms",
          "darts_2nd": "DARTS 2nd order", "hvp_stage2": "Stage II ∇²_{(E',F',A),W} L_u · v",
          "hvp_stage1": "Stage I ∇²_{A,(E,F)} L_tr · d", "hvp_darts": "DARTS ∇²_{A,w} L_train · v"}


def summary_table(results: dict, names, default_epsilon: float) -> str:
    """Markdown: per ε, the mean (min–max over batches) cosine and the mean relative error of each of `names`."""
    import numpy as np

    lines = ["| ε | " + " | ".join(TITLES[n] for n in names) + " |", "|" + "---|" * (1 + len(names))]
    for eps in results:
        row = [eps + (" (default)" if float(eps) == default_epsilon else "")]
        for name in names:
            cos = np.array([b["cosine"] for b in results[eps][name]])
            err = np.mean([b["relative_error"] for b in results[eps][name]])
            spread = f" ({cos.min():.2f}–{cos.max():.2f})" if len(cos) > 1 else ""
            row.append(f"{cos.mean():.2f}{spread} · {err:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render(record: dict, default_epsilon: float) -> str:
    """The markdown block of a run's record: its command, setting and the two tables."""
    channels, cells, nodes, primitives = record["supernet"]
    results = record["results"]
    return (f"Command: `{record['command']}` — {record['measured']}, {record['elapsed_s'] / 60:.0f} min.\n\n"
            f"Supernet C={channels}, {cells} cells × {nodes} nodes over "
            f"{'the DARTS candidates' if primitives == 'DARTS' else primitives}, {record['dtype']}; "
            f"{record['batches']} capnas_shapes batches of {record['batch_size']} per stream after "
            f"{record['warmup_steps']} weight steps; A at its initialisation. Each cell: cosine with `exact`, mean "
            f"(min–max) over the batches · mean relative error ‖fd − exact‖ / ‖exact‖.\n"
            f"{record.get('machine', '')}.\n\n"
            f"The hypergradients:\n\n{summary_table(results, ESTIMATES, default_epsilon)}\n\n"
            f"Each Hessian-vector product alone, at the inputs of the exact chain rule:\n\n"
            f"{summary_table(results, PRODUCTS, default_epsilon)}\n")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render_json:
        with open(args.render_json) as f:
            return publish(json.load(f), args.output)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from capnas_tf.config import DataConfig, SearchConfig, SupernetConfig
    from capnas_tf.data.pipeline import load_caption_data
    from capnas_tf.distribute import configure_runtime
    from capnas_tf.jobs import search_streams
    from capnas_tf.search.models import _build_search_models, build_search_models
    from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy

    machine = bench.machine_line()
    started = time.perf_counter()
    configure_runtime(args.seed, deterministic=False)
    channels, cells, nodes, primitives = supernet_of(args)
    data = load_caption_data(DataConfig(batch_size=args.batch_size, seed=args.seed),
                             tempfile.mkdtemp(prefix="fd_accuracy_"))
    supernet = SupernetConfig(channels=channels, num_cells=cells, num_nodes=nodes,
                              **({"primitives": tuple(primitives.split(","))} if primitives else {}))
    config = SearchConfig(supernet=supernet)  # the defaults: η's, stage2, decoders
    sizes = dict(vocab_size=len(data.vocab), max_caption_len=data.max_caption_len, image_size=data.image_size,
                 seed=args.seed)
    if args.dtype == "float64":  # SearchConfig's policies are float32 or mixed: the models built under float64
        keras.config.set_floatx("float64")
        keras.mixed_precision.set_global_policy("float64")
        models = _build_search_models(config, with_student=True, **sizes)
    else:
        models = build_search_models(config, **sizes)
    strategy = ThreeStageStrategy(models, config, max_caption_len=data.max_caption_len)
    darts_strategy = DartsStrategy(models, SearchConfig(supernet=supernet, strategy="darts"),
                                   max_caption_len=data.max_caption_len)
    dtype = tf.as_dtype(args.dtype)
    streams = iter(search_streams(data, args.batch_size).map(
        lambda b: tf.nest.map_structure(lambda t: tf.cast(t, dtype) if t.dtype.is_floating else t, b)))
    if args.warmup_steps:  # op by op too: tracing the weight step costs more than 30 steps
        for _ in range(args.warmup_steps):
            metrics = strategy.step(next(streams), update_architecture=False)
        print(f"warm-up: {args.warmup_steps} weight steps, Stage I loss {float(metrics['stage1/train_loss']):.3f}",
              flush=True)
    exact, finite_difference, products = make_estimators(strategy, darts_strategy, dtype)
    results = {f"{eps:g}": {name: [] for name in ESTIMATES + PRODUCTS} for eps in args.epsilon_values}
    for b in range(args.batches):
        t0 = time.perf_counter()
        batches = next(streams)
        reference = exact(batches)
        for eps in args.epsilon_values:
            estimates = finite_difference(batches, eps)
            for name in ESTIMATES:
                results[f"{eps:g}"][name].append(agreement(estimates[name], reference[name]))
        for name, (value, approx) in products(batches, args.epsilon_values).items():
            for eps, a in zip(args.epsilon_values, approx):
                results[f"{eps:g}"][name].append(agreement(a, value))
        for eps in args.epsilon_values:
            line = ", ".join(f"{n} {results[f'{eps:g}'][n][-1]['cosine']:.3f}" for n in ESTIMATES + PRODUCTS)
            print(f"batch {b + 1}, ε = {eps:g}: cosine {line}", flush=True)
        print(f"batch {b + 1}: {time.perf_counter() - t0:.0f} s", flush=True)
    command = ("python benchmarks/fd_accuracy.py " + " ".join(argv)).strip()
    config_name = args.config if (channels, cells, nodes, primitives) == CONFIGS[args.config] else "custom"
    record = {"command": command, "config": config_name, "dtype": args.dtype,
              "supernet": [channels, cells, nodes, primitives or "DARTS"],
              "batches": args.batches, "warmup_steps": args.warmup_steps, "batch_size": args.batch_size,
              "seed": args.seed, "elapsed_s": time.perf_counter() - started, "machine": machine,
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}
    if args.json:
        from capnas_tf.io_utils import atomic_write_json

        atomic_write_json(args.json, record)
        print(f"\nJSON: {args.json}")
    publish(record, args.output)


def publish(record: dict, output: str | None) -> None:
    """Prints the record's block and writes it into `output` (default docs/performance.md; '' = print only)."""
    from capnas_tf.config import SearchConfig

    body = render(record, SearchConfig().fd_epsilon)
    print("\n" + body)
    output = output if output is not None else bench.DEFAULT_DOC
    if output:
        suffix = "" if record["dtype"] == "float32" else f"_{record['dtype']}"
        bench.write_block(output, f"fd_accuracy_{record['config']}{suffix}", body)
        print(f"written to {output}")


if __name__ == "__main__":
    main()
