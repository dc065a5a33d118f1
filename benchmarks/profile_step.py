"""Where a search step's time goes, from the TensorFlow profiler: one step of a `search_step.py` or
`darts_cifar.py` mode is run under `tf.profiler`, and its XPlane (the trace viewer's data) is read
back to sum each op's own time by the part of the step it belongs to (the name scopes the library
puts around Stage I, the teacher's decode, Stage II, Stage III, each ± branch of a central
difference, the outer tape's gradient sums, the weight and architecture updates) and by op type.

    python benchmarks/profile_step.py --mode=exact                         # search_step.py's default config
    python benchmarks/profile_step.py --mode=finite_difference --quick     # any search_step.py flag passes on
    python benchmarks/profile_step.py --darts_cifar --mode=darts_2nd_fd    # DARTS' CIFAR setting

    python benchmarks/profile_step.py --mode=plain --xla=on --quick         # the XLA-compiled step

With `--xla=on` the step is one compiled XLA cluster: its trace holds XLA:CPU's thunks (one per HLO
instruction of the optimised module, named as in it), not TensorFlow ops. The child then dumps the
optimised HLO (`XLA_FLAGS=--xla_dump_to=<profile_dir>/xla_hlo`), whose metadata names the TensorFlow op
each instruction came from; `hlo_instructions` reads that, so the compiled step's time lands under the
same parts and TensorFlow op types as XLA off's and the two tables compare line by line.

The step is traced, run twice (first call, warm-up) and timed `--repeats` times as in the benchmark,
then `--steps` more calls run under the profiler, in the same child process as the benchmark's
measurements. Times are the sums of the ops' self times (an op's duration minus that of the ops
nested inside it on the same thread) over every executor thread, so they add up to CPU-busy time,
not wall time: on 2 cores two parts running side by side both count.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search_step as bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# The name scopes of capnas_tf/search (hypergradient.py, strategies.py) and darts_cifar.py; the outermost
# one in an op's path is its part of the step (`scope_of`).
# fd_*_pair / darts_pair: a central difference's ± branches as one loop body (one replica);
# *_plus / *_minus: the same traced twice (several replicas), see hypergradient.central_difference;
# *_jvp: a forward-over-reverse Hessian-vector product (hypergradient.forward_over_reverse_hvp).
SCOPES = ("hypergradient_reverse", "stage1", "stage2_decode", "stage2", "stage3", "stage2_jvp", "stage1_jvp",
          "darts_jvp", "fd_stage2_pair", "fd_stage1_pair", "darts_pair", "fd_stage2_plus", "fd_stage2_minus",
          "fd_stage1_plus", "fd_stage1_minus",
          "darts_train", "darts_val", "darts_plus", "darts_minus", "supernet_weight_step", "student_weight_step",
          "supernet_update", "student_update", "architecture_update", "weight_step", "weight_update")
UNSCOPED = "(no scope of the step)"


def _unsuffixed(part: str) -> str:
    """A path component without the `_1`, `_2_1` … Keras and TF append to make names unique
    ("mixed_op_3_1" → "mixed_op"; a scope entered twice in one graph: "darts_val_1" → "darts_val")."""
    return re.sub(r"(_\d+)+$", "", part)


def load_xspace(profile_dir: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise SystemExit(f"no *.xplane.pb under {profile_dir}: the profiler wrote nothing")
    space = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    return space


def self_times(events):
    """[(event, self ps)] for the events of one thread: duration minus the durations of the events
    directly nested in it (events on one line nest by time interval)."""
    out, stack = [], []  # stack of [end_ps, index into out]
    for e in sorted(events, key=lambda e: (e.offset_ps, -e.duration_ps)):
        start, end = e.offset_ps, e.offset_ps + e.duration_ps
        while stack and stack[-1][0] <= start:
            stack.pop()
        if stack:
            out[stack[-1][1]][1] -= e.duration_ps
        out.append([e, e.duration_ps])
        stack.append([end, len(out) - 1])
    return out


def split_op(name: str) -> tuple[str, str] | None:
    """("scope/…/node", "OpType") for a TensorFlow op event ("node:OpType"); None for other events
    (executor bookkeeping, function calls, Python)."""
    if "::" in name:  # C++ scopes: "ExecutorState::Process", "ThreadpoolListener::Record"
        return None
    node, sep, op_type = name.rpartition(":")
    kernel = op_type.lstrip("_")  # oneDNN's rewrites: "_MklMatMul", "_MklFusedConv2D"
    if not sep or not node or not kernel[:1].isupper() or not kernel.isidentifier():
        return None
    return node, op_type


def scope_of(node: str) -> str:
    """The step's part an op belongs to: its outermost known name scope, marked ∇ per `gradient_tape/`
    in front of it. A tape names the gradient ops of a forward op "gradient_tape/<the forward op's name>"
    whatever scope it is called in, so "stage1" is Stage I's forward, "stage1 ∇" the first-order
    backward through it (under nested tapes: the inner tape's, and the outer tape's through the
    forward — the names do not tell them apart), "stage1 ∇∇" the outer tape's pass through the inner
    tape's gradient (the second-order terms). The AddN that sums a variable's gradient contributions
    is named in the scope the tape was called in."""
    depth = 0
    for part in map(_unsuffixed, node.split("/")):
        if part == "gradient_tape":
            depth += 1
        elif part in SCOPES:
            return part + (" " + "∇" * depth if depth else "")
    return UNSCOPED


def layer_of(node: str) -> str:
    """The layer an op belongs to, the same in every part of the step: its node path without the
    step's scope (and what encloses it), `gradient_tape/`, the `_1`, `_2_1` … suffixes of Keras and TF and the op's own
    name, so that every cell's and edge's copy of a layer adds up, e.g.
    "supernet/search_cell/mixed_op/factorized_reduce/strided_slice"."""
    parts = [_unsuffixed(p) for p in node.split("/")]
    known = [i for i, p in enumerate(parts) if p in SCOPES]
    parts = parts[known[-1] + 1 if known else 0 : -1]
    return "/".join(p for p in parts if p != "gradient_tape") or "(top level)"


HLO_DUMP = "xla_hlo"  # under --profile_dir: the child's XLA dump (XLA on)

_HLO_COMPUTATION = re.compile(r"^(?:ENTRY )?%([^ ]+) \(.*\{$")
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([^ ]+) = (.*)$")
_HLO_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_HLO_METADATA = re.compile(r'metadata=\{[^}]*?op_type="([^"]*)" op_name="([^"]*)"')
_HLO_CALLS = re.compile(r"calls=%([^,\s}]+)")


def hlo_instructions(text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (TensorFlow op name, op type)} for every instruction of an optimised HLO
    module's text (XLA:CPU names each thunk of its trace after its instruction). The TensorFlow op is the
    instruction's own `metadata`, else that of the computation it calls (a fusion). Instructions XLA made
    without one are ("", "HLO <opcode>"), the opcode of a fusion being its computation's root's: in a
    training step the filter gradients of (depthwise) convolutions are such `HLO convolution`s, and
    MaxPoolGrad's arg-max `HLO reduce-window` feeds a scatter that alone keeps the op's name. (Naming
    them after a user was tried: it labelled the filter gradients as the gradient-norm `Sum` that reads
    them.)"""
    own, calls, opcode, computation_op, computation_root = {}, {}, {}, {}, {}
    computation = None
    for line in text.splitlines():
        if m := _HLO_COMPUTATION.match(line):
            computation = m.group(1)
            continue
        m = _HLO_INSTRUCTION.match(line)
        if not m:
            continue
        name, rest = m.groups()
        code = _HLO_OPCODE.search(rest)
        opcode[name] = code.group(1) if code else "?"
        is_root = line.lstrip().startswith("ROOT")
        if is_root and computation:
            computation_root[computation] = opcode[name]
        if op := _HLO_METADATA.search(rest):
            own[name] = (op.group(2), op.group(1))
            if computation and (computation not in computation_op or is_root):
                computation_op[computation] = own[name]
        if called := _HLO_CALLS.search(rest):
            calls[name] = called.group(1)

    def named(name: str) -> tuple[str, str]:
        if name in own:
            return own[name]
        if name in calls:
            return computation_op.get(calls[name]) or ("", f"HLO {computation_root.get(calls[name], opcode[name])}")
        return "", f"HLO {opcode[name]}"

    return {name: named(name) for name in opcode}


def load_hlo_instructions(profile_dir: str) -> dict[str, tuple[str, str]]:
    """`hlo_instructions` of every optimised module the child dumped ({} with XLA off: nothing dumped);
    the largest module (the step) wins a name two modules share."""
    paths = sorted(glob.glob(os.path.join(profile_dir, HLO_DUMP, "*cpu_after_optimizations.txt"))
                   + glob.glob(os.path.join(profile_dir, HLO_DUMP, "*gpu_after_optimizations.txt")),
                   key=os.path.getsize)
    merged = {}
    for path in paths:
        with open(path) as f:
            merged.update(hlo_instructions(f.read()))
    return merged


def union_length(intervals) -> float:
    """Length of the union of [start, end) intervals: the wall time during which at least one of them ran."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def op_times(space, xla_ops: dict | None = None) -> dict:
    """{"ops": {(scope, op type): [self seconds, count]}, "layers": {layer: [self seconds, count]},
    "wall": {scope: seconds during which at least one of its ops ran}, "span_s": first op start to last
    op end} over the host (and any GPU) planes' TF op events, and XLA thunk events named in `xla_ops`
    (`load_hlo_instructions`), each counted as the TensorFlow op its instruction came from."""
    xla_ops = xla_ops or {}
    totals = collections.defaultdict(lambda: [0.0, 0])
    layers = collections.defaultdict(lambda: [0.0, 0])
    intervals = collections.defaultdict(list)
    for plane in space.planes:
        if not (plane.name.startswith("/host:CPU") or plane.name.startswith("/device:GPU")):
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}  # display_name is the type alone
        for line in plane.lines:
            for event, self_ps in self_times(line.events):
                name = names.get(event.metadata_id, "")
                op = split_op(name) or xla_ops.get(name)
                if op is None:
                    continue
                start = line.timestamp_ns * 1000 + event.offset_ps
                scope = scope_of(op[0])
                for cell in (totals[(scope, op[1])], layers[layer_of(op[0])]):
                    cell[0] += self_ps * 1e-12
                    cell[1] += 1
                intervals[scope].append((start, start + event.duration_ps))
    every = [iv for ivs in intervals.values() for iv in ivs]
    span = (max(e for _, e in every) - min(s for s, _ in every)) * 1e-12 if every else 0.0
    wall = {scope: union_length(iv) * 1e-12 for scope, iv in intervals.items()}
    return {"ops": dict(totals), "layers": dict(layers), "wall": wall, "span_s": span}


def by_scope(ops: dict) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """[(scope, seconds, its three costliest op types)] in descending order of time."""
    scopes = collections.defaultdict(dict)
    for (scope, op_type), (seconds, _) in ops.items():
        scopes[scope][op_type] = seconds
    rows = [(s, sum(t.values()), sorted(t.items(), key=lambda kv: -kv[1])[:3]) for s, t in scopes.items()]
    return sorted(rows, key=lambda r: -r[1])


def by_op_type(ops: dict) -> list[tuple[str, float, int]]:
    types = collections.defaultdict(lambda: [0.0, 0])
    for (_, op_type), (seconds, count) in ops.items():
        types[op_type][0] += seconds
        types[op_type][1] += count
    return sorted(((t, s, n) for t, (s, n) in types.items()), key=lambda r: -r[1])


def _stat_values(plane, event) -> dict:
    """An event's stats by name; a stat that refers to a string (the op name of an allocation) resolved."""
    names = plane.stat_metadata
    values = {}
    for stat in event.stats:
        kind = stat.WhichOneof("value")
        value = getattr(stat, kind) if kind else None
        values[names[stat.metadata_id].name] = names[value].name if kind == "ref_value" else value
    return values


def memory_at_peak(space) -> dict | None:
    """The allocator's busiest moment in the trace, and who holds the memory then:
    {"peak_mb": bytes in use at that moment, "by_part": {scope: [MB, buffers]}, "before_mb": what was
    allocated before the profiler started (weights, optimizer slots, anything the earlier steps left)}.
    From the profiler's MemoryAllocation / MemoryDeallocation events (TF 2.21 records them on the CPU with
    or without TF_CPU_ALLOCATOR_USE_BFC), each naming the op that allocated the buffer: a buffer
    allocated during the profile and not yet freed at the peak counts under that op's part of the step
    (`scope_of`), so "stage1" at the exact step's peak is Stage I's forward activations the outer tape
    keeps. None if the trace has no memory events."""
    events = []
    for plane in space.planes:
        if not plane.name.startswith(("/host:CPU", "/device:GPU")):
            continue
        kinds = {k: m.name for k, m in plane.event_metadata.items()
                 if m.name in ("MemoryAllocation", "MemoryDeallocation")}
        for line in plane.lines:
            for event in line.events:
                if event.metadata_id in kinds:
                    start = line.timestamp_ns * 1000 + event.offset_ps
                    allocation = kinds[event.metadata_id] == "MemoryAllocation"
                    events.append((start, allocation, _stat_values(plane, event)))
    if not events:
        return None
    events.sort(key=lambda e: e[0])
    # bytes_allocated is per allocator: follow the one that peaks highest (the host's, or the GPU's).
    allocator = max(events, key=lambda e: e[2].get("bytes_allocated", 0))[2].get("allocator_name")
    events = [(allocation, stats) for _, allocation, stats in events if stats.get("allocator_name") == allocator]
    at_peak = max(range(len(events)), key=lambda i: events[i][1].get("bytes_allocated", 0))  # the first maximum
    peak = events[at_peak][1].get("bytes_allocated", 0)
    live = {}  # the buffers allocated during the profile and not yet freed, replayed up to the peak
    for allocation, stats in events[: at_peak + 1]:
        if allocation:
            live[stats.get("addr")] = (stats.get("allocation_bytes", 0), stats.get("tf_op") or "")
        else:
            live.pop(stats.get("addr"), None)
    by_part = collections.defaultdict(lambda: [0.0, 0])
    for size, op in live.values():
        part = by_part[scope_of(op)]
        part[0] += size / 2**20
        part[1] += 1
    during = sum(mb for mb, _ in by_part.values())
    return {"peak_mb": peak / 2**20, "by_part": dict(by_part), "before_mb": peak / 2**20 - during}


def render_memory(memory: dict | None) -> str:
    if memory is None:
        return "No memory events in the trace."
    lines = [f"Tensor memory at the allocator's peak during the profiled steps: {memory['peak_mb']:.1f} MB, of which "
             f"{memory['before_mb']:.1f} MB was allocated before profiling began (weights, optimizer slots, what "
             "earlier steps left cached) and the rest by the ops of each part, still held at the peak:", "",
             "| part of the step that allocated it | MB held at the peak | share of the peak | buffers |",
             "|---|---|---|---|"]
    for scope, (mb, count) in sorted(memory["by_part"].items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {scope} | {mb:.1f} | {100 * mb / max(memory['peak_mb'], 1e-9):.1f} % | {count} |")
    return "\n".join(lines)


def render(profile: dict, *, steps: int, top: int) -> str:
    ops = profile["ops"]
    total = sum(s for s, _ in ops.values()) or 1e-12
    count = sum(n for _, n in ops.values())
    lines = [f"Ops' self time summed over threads: {total / steps:.3f} s per step "
             f"(profiled span {profile['span_s'] / steps:.3f} s per step); {count / steps:.0f} op executions "
             f"per step, {1e6 * total / max(count, 1):.0f} µs each on average.", "",
             "Per part: **wall** = time during which at least one of its ops ran (the parts of a step run "
             "mostly one after the other, so these add up to about the span); **op time** = its ops' "
             "durations summed over threads (ops running side by side both count, contention included).",
             "",
             "| part of the step (name scope) | wall s per step | op time s per step | share of op time | "
             "costliest op types (op time s per step) |",
             "|---|---|---|---|---|"]
    wall = profile.get("wall", {})
    for scope, seconds, heavy in by_scope(ops):
        lines.append(f"| {scope} | {wall.get(scope, 0.0) / steps:.3f} | {seconds / steps:.3f} | "
                     f"{100 * seconds / total:.1f} % | " + ", ".join(f"{t} {s / steps:.3f}" for t, s in heavy) + " |")
    lines += ["", "| op type | s per step | share | ops per step |", "|---|---|---|---|"]
    for op_type, seconds, count in by_op_type(ops)[:top]:
        lines.append(f"| {op_type} | {seconds / steps:.3f} | {100 * seconds / total:.1f} % | {count / steps:.0f} |")
    lines += ["", "| layer (over every part) | s per step | share | ops per step |", "|---|---|---|---|"]
    for layer, (seconds, count) in sorted(profile["layers"].items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {layer} | {seconds / steps:.3f} | {100 * seconds / total:.1f} % | {count / steps:.0f} |")
    return "\n".join(lines)


def _keep_hlo_text_only(dump_dir: str) -> None:
    """Removes what XLA dumps beside the optimised HLO text (LLVM IR, MLIR, object files: hundreds of
    MB for a search step)."""
    for path in glob.glob(os.path.join(dump_dir, "*")):
        if not path.endswith("_after_optimizations.txt"):
            os.remove(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", required=True, help="a mode of search_step.py (or of darts_cifar.py with --darts_cifar)")
    parser.add_argument("--darts_cifar", action="store_true", help="profile a darts_cifar.py mode")
    parser.add_argument("--xla", choices=("off", "on"), default="off",
                        help="profile the step compiled by XLA (jit_compile) instead of TensorFlow's executor")
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (after the timed ones)")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps before profiling (the benchmark's figures)")
    parser.add_argument("--top", type=int, default=15, help="op types listed")
    parser.add_argument("--profile_dir", default="", help="keep the profile here (view it in TensorBoard's "
                                                          "profile plugin); default: a temporary directory")
    parser.add_argument("--mode_timeout", type=float, default=3600.0, help="seconds before the child is stopped")
    parser.add_argument("--max_rss_gb", type=float, default=20.0, help="resident memory at which the child is stopped")
    parser.add_argument("--output", default=None,
                        help="markdown file to write the tables into (default docs/performance.md; '' = print only)")
    parser.add_argument("--block", default="", help="block name in --output (default profile_<mode>[_cifar])")
    parser.add_argument("--render", default="",
                        help="re-render an earlier run's --profile_dir (nothing is run); --timed gives the step "
                             "time that run printed")
    parser.add_argument("--timed", default="", help="with --render: the 'Timed before profiling' text of that run")
    parser.add_argument("--command", default="", help="with --render: the command of that run, shown in the block")
    args, passthrough = parser.parse_known_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be >= 1; received {args.steps} and {args.repeats}.")
    script = os.path.join(HERE, "darts_cifar.py" if args.darts_cifar else "search_step.py")
    profile_dir = args.profile_dir or tempfile.mkdtemp(prefix="capnas_profile_")
    flags = [*passthrough, f"--mode={args.mode}", f"--xla={args.xla}", f"--repeats={args.repeats}",
             f"--profile_dir={profile_dir}", f"--profile_steps={args.steps}"]
    # The optimised HLO names each XLA thunk's TensorFlow op; only the text is read, the rest is removed.
    xla_env = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={os.path.join(profile_dir, HLO_DUMP)}"
                            " --xla_dump_hlo_as_text".strip()} if args.xla == "on" else None
    t0 = time.time()
    if args.render:
        profile_dir = args.render
        timed = f"re-rendered from {args.render}; timed before profiling: {args.timed or 'not recorded'}"
    else:
        result = bench.run_child(script, flags, timeout=args.mode_timeout, max_rss_gb=args.max_rss_gb, env=xla_env)
        _keep_hlo_text_only(os.path.join(profile_dir, HLO_DUMP))
        if "error" in result:
            raise SystemExit(f"{args.mode}: {result['error']}")
        timed = f"timed before profiling: {result['step_s']:.3f} s per step (median of {args.repeats})"
    space = load_xspace(profile_dir)
    profile = op_times(space, load_hlo_instructions(profile_dir))
    where = "darts_cifar.py" if args.darts_cifar else "search_step.py"
    command = "python benchmarks/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shown = f"`{args.command}` (re-rendered by `{command}`)" if args.render and args.command else f"`{command}`"
    body = (f"Command: {shown} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - t0:.0f} s.\n\n"
            f"{where} mode `{args.mode}` {' '.join(passthrough)}, XLA {args.xla}; "
            f"{'' if args.render else bench.machine_line() + '; '}{timed}; "
            f"profiled: {args.steps} step(s).\n\n" + render(profile, steps=args.steps, top=args.top) + "\n\n"
            + render_memory(memory_at_peak(space)) + "\n")
    print(body)
    output = args.output if args.output is not None else bench.DEFAULT_DOC
    if output:
        block = args.block or f"profile_{args.mode}" + ("_cifar" if args.darts_cifar else "") + (
            "_xla" if args.xla == "on" else "")
        bench.write_block(output, block, body)
        print(f"written to {output}")


if __name__ == "__main__":
    main()
