"""Cost of one search step, side by side: a plain Stage I supernet step (forward, backward, update of E
and F), a DARTS first-order and second-order step, and a three-stage step with the `exact` (nested
tapes), the `forward_over_reverse` (JVPs of gradients) and the `finite_difference` hypergradient (DARTS'
second order with forward-over-reverse too: `darts_2nd_fwd`); each with and without XLA, at the default
search config and at one twice as wide (2C) and twice as deep (2× cells), on the same batches. The
`*_reuse` modes are the same steps with `--reuse_unrolled_gradients` (the weight steps take the gradients
the unrolled step already computed), the `*_pc` modes with PC-DARTS partial channels
(`--partial_channels`), the `*_bf16` modes with the models computing in bfloat16
(`--dtype_policy=mixed_bfloat16`). The sampling strategies' steps
(`gdas`, `random_ws`, `reinforce`: A or the controller, then E and F, each on a sampled path) compute one
operation per edge; their `*_all_ops` modes compute all K (`--one_op_per_edge=false`), side by side.
Where `finite_difference` is measured, its accuracy is checked beside its cost: the cosine of its
hypergradient with `exact` at SearchConfig's ε on capnas_shapes batches (`benchmarks/fd_accuracy.py`,
at the default config; `--fd_check_batches`, `--fd_check_configs`).

    python benchmarks/search_step.py              # full run → docs/performance.md
    python benchmarks/search_step.py --quick      # tiny supernet, the five steps (< 10 min on 2 cores)
    python benchmarks/search_step.py --darts_cifar  # DARTS' CIFAR-10 search setting (see darts_cifar.py)

Each (mode, XLA, config) runs in its own subprocess, so that its peak memory is its own: on CPU, the
resident-set high-water mark during the timed steps (reset through /proc/self/clear_refs after the
warm-up) minus the resident set of the built models before anything was traced. Times are medians over
`--repeats` steps after the trace and one warm-up step. Every figure is printed as a ratio to the plain
step of the same config and XLA setting, and the growth from the default to the large config as
large / default. A combination that fails (e.g. XLA cannot compile it) or runs past `--mode_timeout`
is recorded with its error in the table, and the run goes on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

from capnas_tf.io_utils import atomic_write_json, atomic_write_text  # stdlib only: the driver stays TF-free

REUSE = "_reuse"  # suffix: the weight steps reuse the unrolled step's gradients (--reuse_unrolled_gradients)
PC = "_pc"  # suffix: PC-DARTS partial channels, K = --partial_channels (--partial_channels)
BF16 = "_bf16"  # suffix: the models compute in bfloat16 (--dtype_policy=mixed_bfloat16)
ALL_OPS = "_all_ops"  # suffix: a sampling strategy's step computing every op of each edge
KERAS_ADAM = "_keras_adam"  # suffix: Keras' own Adam / AdamW in place of capnas_tf.optimizers' fused ones
LEVERS = (REUSE, PC, BF16, KERAS_ADAM)
SAMPLED_MODES = ("gdas", "gdas_all_ops", "random_ws", "random_ws_all_ops", "reinforce", "reinforce_all_ops")
CORE_MODES = ("plain", "darts_1st", "darts_2nd", "exact", "finite_difference")  # the steps the targets name
MODES = ("plain", "plain_pc", "plain_bf16", "darts_1st", "darts_2nd", "darts_2nd_reuse", "darts_2nd_fwd", "exact",
         "exact_reuse", "exact_pc", "exact_bf16", "forward_over_reverse", "finite_difference",
         "finite_difference_reuse", "finite_difference_pc", "plain_keras_adam", "exact_keras_adam",
         *SAMPLED_MODES)
# The hypergradient of each mode that does not take `exact`'s nested tapes (its name without a lever's suffix).
MODE_HYPERGRADIENTS = {"finite_difference": "finite_difference", "forward_over_reverse": "forward_over_reverse",
                       "darts_2nd_fwd": "forward_over_reverse"}
MODE_TITLES = {"plain": "plain Stage I step", "plain_pc": "plain Stage I step, partial channels",
               "darts_1st": "DARTS 1st order", "darts_2nd": "DARTS 2nd order",
               "darts_2nd_reuse": "DARTS 2nd order, reuse", "darts_2nd_fwd": "DARTS 2nd order, forward-over-reverse",
               "exact": "three-stage exact", "forward_over_reverse": "three-stage forward-over-reverse",
               "exact_reuse": "three-stage exact, reuse", "exact_pc": "three-stage exact, partial channels",
               "finite_difference": "three-stage finite diff.",
               "finite_difference_reuse": "three-stage finite diff., reuse",
               "finite_difference_pc": "three-stage finite diff., partial channels",
               "plain_bf16": "plain Stage I step, bfloat16", "exact_bf16": "three-stage exact, bfloat16",
               "plain_keras_adam": "plain Stage I step, Keras' AdamW",
               "exact_keras_adam": "three-stage exact, Keras' AdamW for E, F, W",
               **{m: m.removesuffix(ALL_OPS) + (", all ops" if m.endswith(ALL_OPS) else ", one op per edge")
                  for m in SAMPLED_MODES}}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DOC = os.path.join(REPO, "docs", "performance.md")


# --- measurement inside one subprocess --------------------------------------------------------------

def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """VmHWM: the resident-set high-water mark since the process started or since `reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory is measured on Linux only)")


def reset_peak_rss() -> bool:
    """Hands freed heap memory back to the OS (what tracing and XLA compilation used would otherwise
    stay resident), then resets VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def tensor_memory_mb(device: str) -> dict | None:
    """The TensorFlow allocator's bytes in use now and at their peak since the last reset, in MB: the
    step's tensors (activations, gradients, variables), without graphs or host overhead. On the CPU
    this needs the BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`, set by `run_child`); None where
    the allocator keeps no statistics."""
    import tensorflow as tf

    try:
        info = tf.config.experimental.get_memory_info(device)
    except (ValueError, tf.errors.InvalidArgumentError):
        return None
    return {k: v / 2**20 for k, v in info.items()}


def time_steps(step, args_, *, repeats: int, profile_dir: str = "", profile_steps: int = 1) -> dict:
    """Trace, first call, one warm-up call, then `repeats` timed calls; times and memory. With
    `profile_dir`, `profile_steps` more calls run under the TensorFlow profiler afterwards (its XPlane
    goes to `profile_dir`; benchmarks/profile_step.py reads it), so profiling never touches the figures.

    `step(*args_)` returns tensors; `.numpy()` on one of them waits for the step to finish. The trace
    (Python building the graph) is timed apart from the first call (graph optimisation, executor
    set-up and one execution); `trace_s` is their sum. Memory, in MB:
      peak_mb: resident-set high-water mark during the timed steps minus the models' resident set
        before anything was traced (what the process needs, graphs included);
      graph_mb: resident set added by tracing alone (the Python and C++ graph of the step);
      graph_nodes: nodes of the traced graph (`graph_nodes`), counted after everything else;
      tensor_peak_mb: the allocator's peak bytes in use during the timed steps (weights, optimizer
        slots, activations; what `get_memory_info` reports on a GPU); tensor_step_mb: that peak
        minus the bytes in use right before the step (its own activations and gradients).
    """
    import tensorflow as tf

    def run():
        out = step(*args_)
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)

    device = memory_device()
    models_mb = current_rss_mb()
    t0 = time.perf_counter()
    concrete = step.get_concrete_function(*args_)
    python_trace_s = time.perf_counter() - t0
    graph_mb = current_rss_mb() - models_mb
    t0 = time.perf_counter()
    run()
    first_call_s = time.perf_counter() - t0
    trace_peak_mb = peak_rss_mb() - models_mb
    run()
    reset_ok = reset_peak_rss()
    steady_mb = current_rss_mb() - models_mb
    before = tensor_memory_mb(device)
    if before is not None:
        tf.config.experimental.reset_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    after = tensor_memory_mb(device)
    if profile_dir:
        tf.profiler.experimental.start(profile_dir)
        for _ in range(profile_steps):
            run()
        tf.profiler.experimental.stop()
    result = {"step_s": statistics.median(times), "min_s": min(times), "trace_s": python_trace_s + first_call_s,
              "python_trace_s": python_trace_s, "first_call_s": first_call_s,
              "peak_mb": max(peak_rss_mb() - models_mb, 1e-3), "trace_peak_mb": trace_peak_mb,
              "graph_mb": graph_mb, "peak_reset": reset_ok, "models_mb": models_mb, "steady_mb": steady_mb}
    if before is not None and after is not None:
        result.update(tensor_peak_mb=after["peak"], tensor_step_mb=after["peak"] - before["current"])
    result["graph_nodes"] = graph_nodes(concrete)  # last: its GraphDef would count in the figures above
    return result


def graph_nodes(concrete) -> int:
    """Nodes of a traced step's graph, those of the functions it calls (branches, loops) included."""
    graph_def = concrete.graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def synthetic_batches(batch_size: int, image_size: int, max_caption_len: int, vocab_size: int, seed: int = 0):
    """One batch each of D_tr, U, D_val, identical in every subprocess (fixed seed). Captions have
    different real lengths (padded to L), as the real pipeline's."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    B, S, L, V = batch_size, image_size, max_caption_len, vocab_size

    def tokens():
        t = np.zeros((B, L), np.int32)
        for row, n in zip(t, rng.integers(4, L - 1, size=B)):  # n words, then <end>, then <pad>
            row[0], row[1 : n + 1], row[n + 1] = 1, rng.integers(4, V, size=n), 2
        return tf.constant(t)

    image = lambda: tf.constant(rng.uniform(size=(B, S, S, 3)), tf.float32)  # noqa: E731
    return {"train": {"image": image(), "tokens": tokens()}, "unlabeled": {"image": image()},
            "val": {"image": image(), "tokens": tokens()}}


def build_step(args):
    """(the step function of `args.mode`, not yet traced, and its batches): what `measure` times and
    benchmarks/trace_breakdown.py takes apart."""
    import tensorflow as tf

    from capnas_tf.config import SearchConfig, SupernetConfig
    from capnas_tf.search.loop import make_step_function
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy, get_strategy

    mode, all_ops = args.mode.removesuffix(ALL_OPS), args.mode.endswith(ALL_OPS)
    sampled = mode in SAMPLED_MODES
    mode, bf16 = mode.removesuffix(BF16), mode.endswith(BF16)
    mode, partial = mode.removesuffix(PC), mode.endswith(PC)
    mode, reuse = mode.removesuffix(REUSE), mode.endswith(REUSE)
    mode, keras_adam = mode.removesuffix(KERAS_ADAM), mode.endswith(KERAS_ADAM)
    if keras_adam:  # this child process only: E, F and W get Keras' AdamW, the lever's baseline
        import keras

        from capnas_tf.search import strategies as strategies_module
        strategies_module.FusedAdamW = keras.optimizers.AdamW
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    batches = synthetic_batches(args.batch_size, args.image_size, args.max_caption_len, args.vocab_size)
    supernet = SupernetConfig(channels=args.channels, num_cells=args.cells, num_nodes=args.nodes,
                              partial_channels=args.partial_channels if partial else 1,
                              **({"primitives": tuple(args.primitives.split(","))} if args.primitives else {}))
    hyper = MODE_HYPERGRADIENTS.get(mode, "exact")
    name = mode if sampled else "darts" if mode.startswith("darts") else "three_stage"
    config = SearchConfig(hypergradient=hyper, darts_order=1 if mode == "darts_1st" else 2, supernet=supernet,
                          strategy=name, xla=args.xla, one_op_per_edge=not all_ops,
                          reuse_unrolled_gradients=reuse, dtype_policy="mixed_bfloat16" if bf16 else "float32")
    models = build_search_models(config, vocab_size=args.vocab_size, max_caption_len=args.max_caption_len,
                                 image_size=args.image_size)
    cls = get_strategy(name) if sampled else DartsStrategy if mode.startswith("darts") else ThreeStageStrategy
    strategy = cls(models, config, max_caption_len=args.max_caption_len)
    if sampled:  # a long run, so that every timed step is an ordinary one (random_ws ranks in its last steps)
        strategy.begin_search(total_steps=10_000, warmup_steps=0)
    if mode == "plain":
        step = tf.function(lambda b: strategy.supernet_weight_step(b["train"]), jit_compile=args.xla,
                           autograph=False)  # as the loop's step function
    else:  # the search loop's own step function: A, then the weights
        step = make_step_function(strategy, tf.distribute.get_strategy(), update_architecture=True,
                                  jit_compile=args.xla)
    return step, batches


def measure(args) -> dict:
    step, batches = build_step(args)
    result = time_steps(step, (batches,), repeats=args.repeats, profile_dir=args.profile_dir,
                        profile_steps=args.profile_steps)
    result["traces"] = step.experimental_get_tracing_count()
    return result


# --- the driver ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # "default" | "large"
    channels: int
    cells: int
    nodes: int

    def flags(self) -> list[str]:
        return [f"--channels={self.channels}", f"--cells={self.cells}", f"--nodes={self.nodes}"]

    def describe(self) -> str:
        return f"C={self.channels}, {self.cells} cells × {self.nodes} nodes"


def _rss_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_child(script: str, flags: list[str], *, timeout: float, max_rss_gb: float,
              env: dict | None = None) -> dict:
    """Runs `script --child <flags>` (`env`: variables added to its environment); its last stdout line is
    JSON. Failures come back as {"error": …}.

    The child is killed past `timeout` seconds or `max_rss_gb` of resident memory (the machine is shared)."""
    cmd = [sys.executable, script, "--child", *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CPU_ALLOCATOR_USE_BFC="true",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    killed = []

    def watch():
        t0 = time.time()
        while proc.poll() is None:
            if time.time() - t0 > timeout:
                killed.append(f"timeout: still running after {timeout:.0f} s")
            elif _rss_of(proc.pid) > max_rss_gb * 1024:
                killed.append(f"killed: resident memory above --max_rss_gb={max_rss_gb:g}")
            if killed:
                proc.kill()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    if killed:
        return {"error": killed[0]}
    if proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
        return {"error": (errors or lines or [f"exit code {proc.returncode}"])[-1][:300]}
    return json.loads(out.strip().splitlines()[-1])


FD_CHECK = "fd_check"  # the results' key of the finite-difference accuracy check, beside the modes


def fd_check(setting: Setting, args) -> dict:
    """`finite_difference`'s accuracy at `setting`: benchmarks/fd_accuracy.py's cosine and relative error
    with `exact` at SearchConfig's ε on real capnas_shapes batches after the search's warm-up, as
    {estimate: {cosine, cosine_min, cosine_max, relative_error}} (or {"error": …})."""
    import tempfile

    record_path = os.path.join(tempfile.mkdtemp(prefix="fd_check_"), "fd_accuracy.json")
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fd_accuracy.py"),
           f"--channels={setting.channels}", f"--cells={setting.cells}", f"--nodes={setting.nodes}",
           f"--primitives={args.primitives}", "--epsilons=default", f"--batches={args.fd_check_batches}",
           f"--batch_size={args.batch_size}", f"--json={record_path}", "--output="]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.mode_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout: still running after {args.mode_timeout:.0f} s"}
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()] or [f"exit code {out.returncode}"]
        return {"error": lines[-1][:300]}
    with open(record_path) as f:
        record = json.load(f)
    (epsilon, by_estimate), = record["results"].items()
    summary = {"epsilon": float(epsilon), "batches": record["batches"], "elapsed_s": record["elapsed_s"]}
    for name, batches in by_estimate.items():
        cosines = [b["cosine"] for b in batches]
        summary[name] = {"cosine": statistics.fmean(cosines), "cosine_min": min(cosines),
                         "cosine_max": max(cosines),
                         "relative_error": statistics.fmean(b["relative_error"] for b in batches)}
    return summary


def fd_check_lines(results: dict, settings: list[Setting]) -> str:
    """The finite-difference check's line per config: its cosine with `exact` beside the step's cost."""
    names = {"three_stage_full": "three-stage (full)", "three_stage_paper": "three-stage (paper's terms)",
             "darts_2nd": "DARTS 2nd order", "hvp_stage1": "its Stage I product alone"}
    lines = []
    for s in settings:
        r = results.get((FD_CHECK, False, s.name))
        if r is None:
            continue
        if "error" in r:
            lines.append(f"- `finite_difference` against `exact`, {s.name}: check failed: {r['error']}")
            continue
        figures = "; ".join(
            f"{title} {r[n]['cosine']:.2f}" + (f" ({r[n]['cosine_min']:.2f}–{r[n]['cosine_max']:.2f})"
                                               if r["batches"] > 1 else "")
            + f", relative error {r[n]['relative_error']:.2f}" for n, title in names.items() if n in r)
        lines.append(f"- `finite_difference` against `exact`, {s.name} (cosine at ε = {r['epsilon']:g}, "
                     f"{r['batches']} capnas_shapes batch{'es' if r['batches'] > 1 else ''} after 30 weight steps, "
                     f"`benchmarks/fd_accuracy.py`): {figures}")
    return "\n".join(lines)


def planned_combinations(args, modes: list[str], xla_options: list[bool], settings: list[Setting]) -> list:
    """(mode, xla, setting) in the order they are measured: the steps the targets name first, group by
    group (XLA off at each config, then on; the plain step first in each group, so its ratios come from
    neighbours in time), then the levers' variants, which only add to what the first part established."""
    xla_modes, xla_configs = args.xla_modes.split(","), args.xla_configs.split(",")
    lever_configs, large_modes = args.lever_configs.split(","), args.large_modes.split(",")
    planned = []
    for levers in (False, True):
        for xla in xla_options:
            for s in settings:
                for mode in [m for m in MODES if m in modes and m.endswith(LEVERS) == levers]:
                    if xla and (mode not in xla_modes or s.name not in xla_configs):
                        continue
                    if levers and s.name not in lever_configs:
                        continue
                    if s.name == "large" and mode not in large_modes:
                        continue
                    planned.append((mode, xla, s))
    return planned


def load_results(path: str) -> dict:
    """{(mode, xla, config): figures} from a --raw_json file; {} if there is none yet."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not the JSON of an earlier run ({e}); move it away or pass another --raw_json.")
    results = {}
    for key, value in raw.items():
        mode, xla, config = key.split("|")
        results[(mode, xla == "True", config)] = value
    return results


def save_results(path: str, results: dict) -> None:
    """Through a temporary file and a rename, so an interrupted run leaves the last complete file."""
    atomic_write_json(path, {"|".join(map(str, k)): v for k, v in results.items()})


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}"


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(results: dict, settings: list[Setting], xla_options: list[bool]) -> str:
    """One row per (mode, XLA, config): time, memory, ratios to plain (same config and XLA), growth."""
    head = ("| step | XLA | config | time s | × plain | peak MB | × plain | tensors MB | × plain | graph MB | "
            "graph nodes | trace s (Python + first call) | growth time (large/default) | growth peak | growth tensors | measured UTC |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in MODES:
        for xla in xla_options:
            for s in settings:
                r = results.get((mode, xla, s.name))
                if r is None:
                    continue
                xla_s = "on" if xla else "off"
                if "error" in r:
                    rows.append(f"| {MODE_TITLES[mode]} | {xla_s} | {s.name} | failed: {r['error']} "
                                "|" + " |" * 11 + f" {r.get('measured_utc', '')} |")
                    continue
                p = results.get(("plain", xla, s.name), {})
                d = results.get((mode, xla, "default"), {})
                growth = lambda key: _ratio(r.get(key), d.get(key)) if s.name != "default" else ""  # noqa: E731
                trace = (f"{r['python_trace_s']:.0f} + {r['first_call_s']:.0f}" if "python_trace_s" in r
                         else f"{r['trace_s']:.0f}")
                rows.append(f"| {MODE_TITLES[mode]} | {xla_s} | {s.name} | {r['step_s']:.3f} | "
                            f"{_ratio(r['step_s'], p.get('step_s'))} | {r['peak_mb']:.0f} | "
                            f"{_ratio(r['peak_mb'], p.get('peak_mb'))} | {fmt(r.get('tensor_peak_mb'), '.0f')} | "
                            f"{_ratio(r.get('tensor_peak_mb'), p.get('tensor_peak_mb'))} | "
                            f"{fmt(r.get('graph_mb'), '.0f')} | {fmt(r.get('graph_nodes'), ',')} | {trace} | "
                            f"{growth('step_s')} | "
                            f"{growth('peak_mb')} | {growth('tensor_peak_mb')} | {r.get('measured_utc', '')} |")
    return "\n".join(rows)


def xla_speedups(results: dict, settings: list[Setting]) -> str:
    lines = []
    for mode in MODES:
        for s in settings:
            off, on = results.get((mode, False, s.name), {}), results.get((mode, True, s.name), {})
            if "step_s" in off and "step_s" in on:
                lines.append(f"- {MODE_TITLES[mode]}, {s.name}: XLA on / off = {on['step_s'] / off['step_s']:.2f} "
                             f"({'faster' if on['step_s'] < off['step_s'] else 'slower'} with XLA)")
    return "\n".join(lines)


def one_op_speedups(results: dict, settings: list[Setting], xla_options: list[bool]) -> str:
    """One operation per edge / all operations, per sampling strategy (same config and XLA setting)."""
    lines = []
    for mode in SAMPLED_MODES[::2]:
        for xla in xla_options:
            for s in settings:
                one, every = results.get((mode, xla, s.name), {}), results.get((mode + ALL_OPS, xla, s.name), {})
                if "step_s" in one and "step_s" in every:
                    lines.append(f"- {mode}, {s.name}, XLA {'on' if xla else 'off'}: one op per edge / all ops = "
                                 f"{one['step_s'] / every['step_s']:.2f} in time ({one['step_s']:.3f} s / "
                                 f"{every['step_s']:.3f} s), {_ratio(one.get('tensor_peak_mb'), every.get('tensor_peak_mb'))} "
                                 f"in tensors, {_ratio(one.get('trace_s'), every.get('trace_s'))} in trace time")
    return "\n".join(lines)


def write_block(path: str, block: str, body: str) -> None:
    """Replaces the `<!-- block:begin -->…<!-- block:end -->` section of `path` (appends it if absent),
    keeping the rest of the hand-written document."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = open(path).read() if os.path.exists(path) else "# Performance\n"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    atomic_write_text(path, text)


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} at the start "
            f"(the machine is shared with other engineers running TensorFlow: compare ratios, not absolute times)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny supernet (C=4, 2 cells × 2 nodes, 4 candidate ops; large = C=8, 4 cells), "
                             "2 timed repeats, the five steps the targets name (no lever variants unless --modes names "
                             "them; the DARTS steps at the default config only), XLA on for the exact step at the "
                             "default config only")
    parser.add_argument("--darts_cifar", action="store_true",
                        help="DARTS' CIFAR-10 search setting with a classification head; takes the flags of "
                             "benchmarks/darts_cifar.py instead of these")
    parser.add_argument("--channels", type=int, default=8, help="C of the default supernet (SupernetConfig)")
    parser.add_argument("--cells", type=int, default=5, help="cells of the default supernet")
    parser.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell")
    parser.add_argument("--primitives", default="", help="comma-separated candidate ops (empty: the DARTS set)")
    parser.add_argument("--partial_channels", type=int, default=0,
                        help="K of the *_pc modes (PC-DARTS); default 4 (PC-DARTS' K), --quick 2")
    parser.add_argument("--batch_size", type=int, default=16, help="batch of each stream (configs/shapes_search.cfg)")
    parser.add_argument("--image_size", type=int, default=32, help="S of the S×S×3 images")
    parser.add_argument("--max_caption_len", type=int, default=16, help="L, tokens per caption incl. <start>")
    parser.add_argument("--vocab_size", type=int, default=64, help="V")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per combination (median); default 5, --quick 2")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of {MODES} (default: all but the sampling strategies'; --quick: the five steps the targets "
                             f"name, {','.join(CORE_MODES)}, without the levers' variants)")
    parser.add_argument("--xla", default="off,on", help="'off', 'on' or 'off,on' (in the child: one of them)")
    parser.add_argument("--xla_modes", default="",
                        help="steps measured with XLA on too (empty: the five steps the targets name; --quick: "
                             "exact, since XLA compilation of the nested-tape steps takes minutes on a CPU)")
    parser.add_argument("--xla_configs", default="",
                        help="configs measured with XLA on (empty: default,large; --quick: default)")
    parser.add_argument("--lever_configs", default="",
                        help="configs at which the *_reuse, *_pc and *_bf16 modes are measured (empty: default)")
    parser.add_argument("--large_modes", default="",
                        help="steps measured at the large config too (empty: all; --quick: plain,exact,"
                             "finite_difference, the steps whose growth the targets concern)")
    parser.add_argument("--configs", default="default,large",
                        help="'default' and/or 'large' (2× channels and 2× cells of the default)")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="TF inter-op threads in each measurement (0: TF's default). 1 runs independent "
                             "branches of a step one after the other, so their activations do not coexist")
    parser.add_argument("--mode_timeout", type=float, default=1800.0,
                        help="seconds before one combination is stopped and recorded as a timeout")
    parser.add_argument("--max_rss_gb", type=float, default=12.0,
                        help="a combination using more resident memory is stopped (the machine is shared)")
    parser.add_argument("--fd_check_batches", type=int, default=1,
                        help="when finite_difference is measured: capnas_shapes batches of the independent check of its "
                             "accuracy (cosine with `exact` at SearchConfig's ε, benchmarks/fd_accuracy.py) at each "
                             "config of --fd_check_configs; 0: no check")
    parser.add_argument("--fd_check_configs", default="default",
                        help="configs at which the finite-difference check runs (it computes `exact` op by op)")
    parser.add_argument("--output", default=None,
                        help="markdown file to write the table into (default docs/performance.md; '' = print only)")
    parser.add_argument("--block", default="",
                        help="name of the table's block in --output (default: search_step_quick with --quick, "
                             "else search_step); a partial run can go to a block of its own")
    parser.add_argument("--raw_json", default="/tmp/search_step_results.json",
                        help="where every measured figure is written as JSON, after each combination")
    parser.add_argument("--resume", action="store_true",
                        help="keep the combinations already in --raw_json (measured or failed) and measure only the "
                             "others: a run of hours can go on after an interruption; each row says when it ran")
    parser.add_argument("--render_json", default="",
                        help="re-render the table of an earlier run's --raw_json (same --quick/config flags); no measuring")
    parser.add_argument("--machine", default="", help="with --render_json: the load line of the original run")
    parser.add_argument("--command", default="", help="with --render_json: the command of the original run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--profile_dir", default="", help=argparse.SUPPRESS)  # internal: profile_step.py
    parser.add_argument("--profile_steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1; received {args.repeats}.")
    if args.quick:
        args.channels, args.cells, args.nodes = 4, 2, 2
        args.repeats = args.repeats or 2
        args.primitives = args.primitives or "none,skip_connect,avg_pool_3x3,sep_conv_3x3"
        args.xla_modes = args.xla_modes or "exact"  # the XLA target is the three-stage step's on / off
        args.xla_configs = args.xla_configs or "default"
        args.lever_configs = args.lever_configs or "default"
        args.partial_channels = args.partial_channels or 2
        # The levers' variants are 8 more processes (~5 min on 2 cores): measured in the full run or on request.
        args.modes = args.modes or ",".join(CORE_MODES)
        args.large_modes = args.large_modes or "plain,exact,finite_difference"  # keeps --quick under 10 min
    # XLA compilation of a nested-tape step takes tens of minutes at the default size: only the steps the
    # targets name get it, and the levers run at the default config only.
    args.xla_modes = args.xla_modes or ",".join(CORE_MODES)
    args.xla_configs = args.xla_configs or "default,large"
    args.lever_configs = args.lever_configs or "default"
    args.large_modes = args.large_modes or ",".join(MODES)
    args.modes = args.modes or ",".join(m for m in MODES if m not in SAMPLED_MODES)  # those: on request
    args.repeats = args.repeats or 5
    args.partial_channels = args.partial_channels or 4
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--darts_cifar" in argv:  # its own flags: benchmarks/darts_cifar.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import darts_cifar

        return darts_cifar.main(argv)
    args = parse_args(argv)
    if args.child:
        args.xla = args.xla == "on"
        print(json.dumps(measure(args)))
        return
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    xla_options = [{"off": False, "on": True}.get(x) for x in args.xla.split(",")]
    if bad or None in xla_options:
        raise SystemExit(f"--modes must be a subset of {MODES} and --xla of off,on; received "
                         f"--modes={args.modes!r} --xla={args.xla!r}.")
    if "plain" not in modes:
        modes.insert(0, "plain")  # every ratio is to the plain step
    all_settings = {"default": Setting("default", args.channels, args.cells, args.nodes),
                    "large": Setting("large", 2 * args.channels, 2 * args.cells, args.nodes)}
    settings = [all_settings[c] for c in args.configs.split(",") if c in all_settings]
    if not settings:
        raise SystemExit(f"--configs must name 'default' and/or 'large'; received {args.configs!r}.")
    common = [f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
              f"--max_caption_len={args.max_caption_len}", f"--vocab_size={args.vocab_size}",
              f"--repeats={args.repeats}", f"--primitives={args.primitives}",
              f"--inter_op_threads={args.inter_op_threads}", f"--partial_channels={args.partial_channels}"]
    command = args.command or "python benchmarks/search_step.py " + " ".join(argv)
    header = (f"supernet {', '.join(s.name + ': ' + s.describe() for s in settings)}; "
              f"candidate ops: {args.primitives or 'the DARTS set (8)'}; batch {args.batch_size} per stream, "
              f"{args.image_size}×{args.image_size} images, L={args.max_caption_len}, V={args.vocab_size}; "
              f"partial channels (*_pc): K={args.partial_channels}; "
              f"median of {args.repeats} steps after trace + warm-up")
    machine = args.machine or machine_line()
    print(header + "\n" + machine, flush=True)
    started = time.time()
    results = load_results(args.render_json or args.raw_json) if args.render_json or args.resume else {}
    if args.render_json:
        settings = [s for s in settings if any(k[2] == s.name for k in results)]
    for mode, xla, s in [] if args.render_json else planned_combinations(args, modes, xla_options, settings):
        if (mode, xla, s.name) in results:
            continue  # --resume: measured (or failed) in an earlier run
        flags = [*s.flags(), *common, f"--mode={mode}", f"--xla={'on' if xla else 'off'}"]
        t0 = time.time()
        earlier = results.get((mode, xla, "default"), {})
        if s.name != "default" and str(earlier.get("error", "")).startswith(("timeout", "killed")):
            # The large config costs more than the default one: it would only time out again.
            r = {"error": f"skipped: {earlier['error']} at the default config"}
        else:
            r = run_child(os.path.abspath(__file__), flags, timeout=args.mode_timeout, max_rss_gb=args.max_rss_gb)
        r["measured_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0))
        results[(mode, xla, s.name)] = r
        save_results(args.raw_json, results)
        shown = r.get("error") or (f"{r['step_s']:.3f} s/step, peak {r['peak_mb']:.0f} MB, "
                                  f"tensors {fmt(r.get('tensor_peak_mb'), '.0f')} MB, "
                                  f"trace {r['trace_s']:.1f} s, traces {r['traces']}")
        print(f"  {s.name:7s} XLA {'on ' if xla else 'off'} {mode:18s} {shown}  "
              f"[{time.time() - t0:.0f} s]", flush=True)
    check_configs = args.fd_check_configs.split(",")
    for s in [] if args.render_json or "finite_difference" not in modes or args.fd_check_batches < 1 else settings:
        if s.name not in check_configs or (FD_CHECK, False, s.name) in results:
            continue
        t0 = time.time()
        results[(FD_CHECK, False, s.name)] = {**fd_check(s, args),
                                              "measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0))}
        save_results(args.raw_json, results)
        print(f"  {s.name:7s} finite-difference check [{time.time() - t0:.0f} s]", flush=True)
    table = markdown_table(results, settings, xla_options)
    speedups = "\n".join(x for x in (xla_speedups(results, settings),
                                      one_op_speedups(results, settings, xla_options),
                                      fd_check_lines(results, settings)) if x)
    print("\n" + table + "\n\n" + speedups)
    body = (f"Command: `{command.strip()}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            + (f"table re-rendered from {args.render_json} (same run)" if args.render_json
               else f"{time.time() - started:.0f} s in all"
               + (" in this sitting (resumed: rows measured earlier keep their time, column 'measured UTC')"
                  if args.resume else "")) + f".\n\n{header}.\n{machine}.\n\n"
            f"Peak = resident-set high-water mark during the timed steps minus the built models' resident set "
            f"(what the process needs, graphs included); tensors = the TensorFlow allocator's peak bytes in use "
            f"during the timed steps (weights, optimizer slots, activations: what a GPU's `get_memory_info` "
            f"reports; on the CPU through the BFC allocator); graph = resident set added by tracing alone; "
            f"× plain = ratio to the plain step of the same config and XLA setting; growth = large / "
            f"default for the same step and XLA setting.\n\n{table}\n\n{speedups}\n")
    output = args.output if args.output is not None else DEFAULT_DOC
    if output:
        write_block(output, args.block or ("search_step_quick" if args.quick else "search_step"), body)
        print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
