"""Where a search step's trace time goes: the Python trace by part of the step, the first call by Grappler pass.

    python benchmarks/trace_breakdown.py --modes=plain,exact                      # the default supernet
    python benchmarks/trace_breakdown.py --modes=plain,exact --cells=3 --nodes=3 \\
        --primitives=none,skip_connect,max_pool_3x3,sep_conv_3x3,dil_conv_3x3     # the quickstart's supernet

(from the repository root, in the project's venv; takes benchmarks/search_step.py's flags and modes.)

Each mode runs in a process of its own (`search_step.build_step`, the step the search loop traces):
  - the Python trace (`get_concrete_function`) under cProfile, attributed to the supernet's and decoders'
    forward passes (Keras `Layer.__call__`), the tapes' gradients (`GradientTape.gradient`) and the
    optimizers' updates (`Optimizer.apply`); cProfile slows Python by a third or so, so the parts are
    reported as shares of the profiled total beside the unprofiled trace time of search_step.py;
  - the graph's nodes (`search_step.graph_nodes`);
  - the first call with Grappler's per-pass log (`TF_CPP_VMODULE=meta_optimizer=1`), summed by pass over
    both of its iterations; what the first call spends outside Grappler (partitioning, kernel creation,
    one execution) is the rest.
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step  # noqa: E402

PASS_LINE = re.compile(r"meta_optimizer\.cc:\d+\] (?P<name>[\w\-]+)[^:]*: Graph size after: .*time = (?P<ms>[\d.]+)ms")
PARTS = {  # part of the step → (file suffix, function) whose cumulative profiled time it is
    "forward (Keras layers)": ("keras/src/layers/layer.py", "__call__"),
    "gradients (tapes)": ("tensorflow/python/eager/backprop.py", "gradient"),
    "optimizer updates": ("keras/src/optimizers/base_optimizer.py", "apply"),
}


def profiled_parts(profile) -> dict:
    """Cumulative seconds of each of PARTS in a cProfile run (cProfile counts a recursive call once)."""
    import pstats

    stats = pstats.Stats(profile).stats
    parts = {}
    for part, (suffix, function) in PARTS.items():
        parts[part] = sum(ct for (file, _, name), (_, _, _, ct, _) in stats.items()
                          if file.endswith(suffix) and name == function)
    return parts


def keras_self_share(profile) -> float:
    """The share of the profiled trace spent in Keras' own code (self time of keras/src functions): the
    layers' call overhead, as against building TensorFlow ops."""
    import pstats

    stats = pstats.Stats(profile).stats
    total = sum(tt for _, (_, _, tt, _, _) in stats.items())
    return sum(tt for (file, _, _), (_, _, tt, _, _) in stats.items() if "keras/src/" in file) / max(total, 1e-12)


def op_types(concrete, top: int = 4) -> dict:
    """The graph's most frequent op types and their counts (the trace's cost is about proportional to ops)."""
    counts = collections.Counter(op.type for op in concrete.graph.get_operations())
    return dict(counts.most_common(top))


def child(args) -> dict:
    import cProfile

    step, batches = search_step.build_step(args)
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    concrete = step.get_concrete_function(batches)
    profile.disable()
    python_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = step(batches)
    [t.numpy() for t in __import__("tensorflow").nest.flatten(out)]
    first_call_s = time.perf_counter() - t0
    return {"python_trace_profiled_s": python_s, "parts": profiled_parts(profile),
            "keras_self_share": keras_self_share(profile), "op_types": op_types(concrete),
            "graph_nodes": search_step.graph_nodes(concrete), "first_call_s": first_call_s}


def grappler_passes(stderr: str) -> dict:
    """Seconds per Grappler pass, summed over its iterations and the graphs it optimised."""
    passes = collections.Counter()
    for match in PASS_LINE.finditer(stderr):
        passes[match["name"]] += float(match["ms"]) / 1000
    return dict(passes)


def run(args, mode: str) -> dict:
    flags = [f"--channels={args.channels}", f"--cells={args.cells}", f"--nodes={args.nodes}",
             f"--primitives={args.primitives}", f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
             f"--max_caption_len={args.max_caption_len}", f"--vocab_size={args.vocab_size}", f"--mode={mode}",
             "--xla=off", "--child"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="meta_optimizer=1",
               PYTHONPATH=search_step.REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *flags], capture_output=True, text=True,
                          env=env, cwd=search_step.REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: the child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["grappler"] = grappler_passes(proc.stderr)
    return result


def table(results: dict) -> str:
    rows = ["| step | graph nodes | its most frequent ops | Python trace, profiled s | forward | gradients | "
            "optimizer | rest | of it in Keras' own code | first call s | Grappler | its largest passes |",
            "|" + "---|" * 12]
    for mode, r in results.items():
        total = r["python_trace_profiled_s"]
        shares = [f"{r['parts'][p] / total:.0%}" for p in PARTS]
        rest = 1 - sum(r["parts"].values()) / total
        grappler = sum(r["grappler"].values())
        top = sorted(r["grappler"].items(), key=lambda kv: -kv[1])[:4]
        frequent = ", ".join(f"{t} {n:,}" for t, n in r["op_types"].items())
        rows.append(f"| {search_step.MODE_TITLES[mode]} | {r['graph_nodes']:,} | {frequent} | {total:.0f} | "
                    f"{' | '.join(shares)} | {rest:.0%} | {r['keras_self_share']:.0%} | {r['first_call_s']:.0f} | "
                    f"{grappler:.0f} | "
                    + ", ".join(f"{name} {s:.0f}" for name, s in top) + " |")
    return "\n".join(rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    modes = next((a.split("=", 1)[1] for a in argv if a.startswith("--modes=")), "plain,exact")
    args = search_step.parse_args([a for a in argv if not a.startswith("--modes=")])
    if args.child:
        args.xla = args.xla == "on"  # as search_step's child reads it: a flag string, "off" here
        print(json.dumps(child(args)))
        return
    results = {}
    for mode in modes.split(","):
        if mode not in search_step.MODES:
            raise SystemExit(f"--modes: {mode!r} is not one of {search_step.MODES}.")
        t0 = time.time()
        results[mode] = run(args, mode)
        print(f"{mode}: {json.dumps(results[mode])} [{time.time() - t0:.0f} s]", flush=True)
    print(f"\nsupernet C={args.channels}, {args.cells} cells × {args.nodes} nodes, "
          f"ops: {args.primitives or 'the DARTS set (8)'}; batch {args.batch_size}\n")
    print(table(results))


if __name__ == "__main__":
    main()
