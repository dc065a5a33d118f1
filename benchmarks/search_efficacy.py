"""Search efficacy: do the search strategies find better encoders than architectures drawn at random?

    python benchmarks/search_efficacy.py --quick     # quick mode, < 30 min on 2 cores → docs/results_quick.md, .png
    python benchmarks/search_efficacy.py             # full mode: the table the README quotes
    python benchmarks/search_efficacy.py --strategies=three_stage,darts --seeds=2 --random_archs=4

(from the repository root; prefix `PYTHONPATH=.` if capnas_tf is not pip-installed.)

On capnas_shapes, for every seed s in 0 … --seeds − 1:
  * each strategy of `--strategies` searches A on one supernet (same space, data, steps and batch for
    every strategy; `capnas_tf.jobs.search_job`) and derives its genotype;
  * K = --random_archs genotypes are drawn uniformly from the same space
    (`sample_genotype(np.random.default_rng((s, k)))`, with the same skip_connect cap as the derivation);
  * every genotype is retrained from scratch with the SAME budget (`capnas_tf.retrain.retrain_job`:
    epochs, steps, batch, optimiser, cells and channels identical; exports off) and evaluated on `test`
    and `test_novel` (BLEU, CIDEr; METEOR with --meteor).

Each run's record (scores, search and retrain wall time, parameter counts, genotype, machine load) is
written to `<workdir>/results/<run_id>.json` as soon as it finishes; re-running the same command skips
finished runs, so an interrupted benchmark resumes. An unfinished run restarts from scratch (a search
that finished is kept) so that every recorded time is one uninterrupted measurement. A workdir holding
results of another budget is refused. Each run has a Python process of its own (no TensorFlow state
carried over); a run whose loss became non-finite, or whose process crashed, is recorded as failed
(counted in the table, its error listed); `--retry_failed` runs them again.

From all records found it writes `docs/results.md` (mean ± sample standard deviation per strategy, for
the random architectures, and for random search = the best of each seed's K random architectures by
validation CIDEr, whose search cost is the K retrains) and `docs/results.png` (test CIDEr against search
cost). `--report_only` rewrites both from the records without running anything, e.g. with the reading
written after looking at the numbers:

    python benchmarks/search_efficacy.py --quick --report_only --reading=reading.txt --cost_note="…"
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import socket
import sys
import time

QUICKSTART_PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3")
METHOD_RANDOM = "random"
METHOD_RANDOM_SEARCH = "random_search"
SPLITS = ("test", "test_novel")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Everything that must be identical across the runs of one benchmark (its records are compared
    against it on resume). The search space is the quickstart's: 3 cells × 3 nodes × 5 candidate ops."""

    # space (searched by every strategy, sampled by the random architectures)
    supernet_channels: int = 8
    supernet_cells: int = 3
    num_nodes: int = 3
    primitives: tuple = QUICKSTART_PRIMITIVES
    max_skip_connect: int | None = 2
    # search (every strategy: the same steps on the same streams)
    search_batch_size: int = 16
    search_epochs: int = 6
    warmup_epochs: int = 2
    search_steps_per_epoch: int = 50
    hypergradient: str = "exact"
    arch_lr: float = 0.03  # the quickstart's η_a
    # retrain (every genotype, searched or random)
    retrain_channels: int = 8
    retrain_cells: int = 3
    retrain_epochs: int = 3
    retrain_steps_per_epoch: int = 160
    retrain_batch_size: int = 32
    retrain_pool_batchnorm: bool = True  # BN after pooling, as the supernet's candidates (RetrainConfig's default)
    max_eval_images: int = 0  # 0: all 300 images of each evaluation split
    meteor: bool = False

    def fingerprint(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


FULL = Budget()
# Quick: sized so that its CPU time (~25 min, mostly tracing the 10 searches' step functions) fits in
# 30 min of an otherwise idle 2-core machine; its scores are a smoke-scale reading only.
QUICK = dataclasses.replace(FULL, search_epochs=2, warmup_epochs=1, search_steps_per_epoch=10,
                            retrain_epochs=2, retrain_steps_per_epoch=50, max_eval_images=100)
DEFAULT_SEEDS = {"quick": 2, "full": 3}
# Full mode: K = 5 (15 random architectures over 3 seeds) keeps the whole run near 2.5 h on 2 cores.
DEFAULT_RANDOM_ARCHS = {"quick": 3, "full": 5}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the benchmark: a strategy's search + retrain, or a random genotype's retrain."""

    method: str  # a strategy name, or METHOD_RANDOM
    seed: int
    arch: int | None = None  # index k of the random genotype

    @property
    def run_id(self) -> str:
        return f"{self.method}-seed{self.seed}" + ("" if self.arch is None else f"-arch{self.arch}")

    @property
    def searches(self) -> bool:
        return self.method != METHOD_RANDOM


def plan_runs(strategies, seeds: int, random_archs: int) -> list[RunSpec]:
    """Seed-major (all of seed 0 first), so an interrupted benchmark has complete seeds."""
    runs = []
    for seed in range(seeds):
        runs += [RunSpec(name, seed) for name in strategies]
        runs += [RunSpec(METHOD_RANDOM, seed, k) for k in range(random_archs)]
    return runs


# --- the result store -------------------------------------------------------------------------------

def results_dir(workdir: str) -> str:
    return os.path.join(workdir, "results")


def load_records(workdir: str) -> dict[str, dict]:
    """Every record in `<workdir>/results/`, by run id."""
    records = {}
    folder = results_dir(workdir)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    try:
                        record = json.load(f)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: not valid JSON ({e}); delete it to re-run that run.") from None
                records[record["run_id"]] = record
    return records


def check_budget(records: dict[str, dict], budget: Budget, workdir: str) -> None:
    """Refuses to mix runs of different budgets in one table."""
    expected = budget.fingerprint()
    for run_id, record in records.items():
        if record.get("budget") != expected:
            changed = sorted(k for k in set(expected) | set(record.get("budget", {}))
                             if expected.get(k) != record.get("budget", {}).get(k))
            raise ValueError(f"--workdir={workdir} holds run {run_id!r} of another budget (differs in {changed}); "
                             "use another --workdir, or the same options as that run.")


def pending_runs(runs: list[RunSpec], records: dict[str, dict], *, retry_failed: bool = False) -> list[RunSpec]:
    """The runs without a record (and the failed ones when `retry_failed`)."""
    def done(spec):
        record = records.get(spec.run_id)
        return record is not None and (record["status"] == "ok" or not retry_failed)
    return [spec for spec in runs if not done(spec)]


def save_record(workdir: str, record: dict) -> str:
    from capnas_tf.io_utils import atomic_write_json

    os.makedirs(results_dir(workdir), exist_ok=True)
    path = os.path.join(results_dir(workdir), f"{record['run_id']}.json")
    atomic_write_json(path, record)
    return path


# --- aggregation (pure) -------------------------------------------------------------------------------

def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation with ddof = 1, n); std is NaN for n = 1, both NaN for n = 0."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, 1
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


def run_summary(record: dict) -> dict:
    """The numbers of one finished run that the table and the plot use."""
    return {
        "test_CIDEr": record["scores"]["test"]["CIDEr"], "test_BLEU-4": record["scores"]["test"]["BLEU-4"],
        "test_novel_CIDEr": record["scores"]["test_novel"]["CIDEr"],
        "test_novel_BLEU-4": record["scores"]["test_novel"]["BLEU-4"],
        "search_time_s": record["search_time_s"], "retrain_time_s": record["retrain_time_s"],
        "search_cpu_s": record.get("search_cpu_s", math.nan), "retrain_cpu_s": record.get("retrain_cpu_s", math.nan),
        "encoder_params": record["encoder_params"], "val_CIDEr": record["best_validation_CIDEr"],
    }


def random_search_summaries(records: list[dict]) -> list[dict]:
    """Random search per seed: of the seed's K random genotypes, the one with the best validation CIDEr
    (the test splits are never looked at to choose); its search cost is the K retrains it took."""
    by_seed: dict[int, list[dict]] = {}
    for record in records:
        if record["method"] == METHOD_RANDOM and record["status"] == "ok":
            by_seed.setdefault(record["seed"], []).append(record)
    summaries = []
    for seed in sorted(by_seed):
        group = sorted(by_seed[seed], key=lambda r: r["arch"])
        best = max(group, key=lambda r: r["best_validation_CIDEr"])  # first of equals: lowest k
        summary = run_summary(best)
        summary["search_time_s"] = sum(r["retrain_time_s"] for r in group)
        summary["search_cpu_s"] = sum(r["retrain_cpu_s"] for r in group)
        summary["seed"], summary["k"] = seed, len(group)
        summaries.append(summary)
    return summaries


TABLE_COLUMNS = ("test_CIDEr", "test_BLEU-4", "test_novel_CIDEr", "test_novel_BLEU-4", "search_time_s",
                 "search_cpu_s", "retrain_time_s", "encoder_params")


def aggregate(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per method (in `methods` order, then random architectures, then random search):
    `{"method", "runs", "failed", column: (mean, std, n), …}`."""
    rows = []
    for method in list(methods) + [METHOD_RANDOM]:
        mine = [r for r in records if r["method"] == method]
        ok = [run_summary(r) for r in mine if r["status"] == "ok"]
        row = {"method": method, "runs": len(ok), "failed": len(mine) - len(ok)}
        row.update({c: mean_std([s[c] for s in ok]) for c in TABLE_COLUMNS})
        rows.append(row)
    searched = random_search_summaries(records)
    row = {"method": METHOD_RANDOM_SEARCH, "runs": len(searched), "failed": 0}
    row.update({c: mean_std([s[c] for s in searched]) for c in TABLE_COLUMNS})
    rows.append(row)
    return rows


def fmt(stat: tuple, digits: int = 3, scale: float = 1.0) -> str:
    """`mean ± std` of a `mean_std` triple; `–` when there is no value, the mean alone when n = 1."""
    mean, std, n = stat
    if n == 0 or math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean * scale:,.{digits}f}"
    return f"{mean * scale:,.{digits}f} ± {std * scale:,.{digits}f}"


def verdict(rows: list[dict], seeds: int) -> list[str]:
    """Plain statements comparing each strategy's mean test CIDEr with the random architectures'
    and with random search: above / below when both sides have n ≥ 2 and the difference exceeds the
    larger of the two standard deviations, else within (a loose descriptive rule, not a significance test)."""
    by = {r["method"]: r for r in rows}
    lines = []
    for method, row in by.items():
        if method in (METHOD_RANDOM, METHOD_RANDOM_SEARCH) or row["runs"] == 0:
            continue
        for other, label in ((METHOD_RANDOM, "random architectures"), (METHOD_RANDOM_SEARCH, "random search")):
            (m, s, n), (mo, so, no) = row["test_CIDEr"], by[other]["test_CIDEr"]
            if n == 0 or no == 0:
                continue
            diff = m - mo
            if n < 2 or no < 2:
                lines.append(f"`{method}` vs {label}, test CIDEr: {m:.3f} vs {mo:.3f} (difference {diff:+.3f}); "
                             f"n = {n} vs {no} is too few runs to tell.")
                continue
            spread = max(s, so)
            where = ("above it by more than" if diff > spread else "below it by more than" if -diff > spread
                     else "within")
            lines.append(f"`{method}` vs {label}, test CIDEr: {m:.3f} vs {mo:.3f} (difference {diff:+.3f}): "
                         f"{where} the larger std ({spread:.3f}); n = {n} vs {no}.")
    return lines


# --- the report -------------------------------------------------------------------------------------

METHOD_LABELS = {METHOD_RANDOM: "random architectures (every one)",
                 METHOD_RANDOM_SEARCH: "random search (best of K by validation CIDEr)"}


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{socket.gethostname()}: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def render_markdown(rows: list[dict], records: list[dict], *, budget: Budget, mode: str, command: str,
                    seeds: int, random_archs: int, strategies: list[str], missing: list[str],
                    machine: str, wall_time_s: float | None, cost_note: str | None) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    dates = sorted(r["finished_at"] for r in records)
    loads = [r["load_average_1min"] for r in ok]
    baseline = {s: mean_std([r["baseline"][s]["CIDEr"] for r in ok if r.get("baseline")]) for s in SPLITS}
    tf_version = next((r["tensorflow"] for r in records if "tensorflow" in r), "?")
    b = budget
    search_steps = b.search_epochs * b.search_steps_per_epoch
    title_mode = "QUICK MODE (small search, small retrain, few seeds: a smoke-scale reading, not the " \
                 "benchmark's answer)" if mode == "quick" else "full mode"
    out = [f"# Search efficacy on capnas_shapes — {title_mode}", ""]
    out += ["Does a search strategy find a better encoder than an architecture drawn at random from the same "
            "space, when every genotype is retrained with the same budget? (Li & Talwalkar 2019, "
            "Yu et al. 2020.) Produced by `benchmarks/search_efficacy.py`; every number in the tables is measured.", ""]
    out += ["```", command, "```", ""]
    out += [f"- **Mode**: {mode}. **Seeds**: {seeds} (0 … {seeds - 1}). **Random architectures**: K = "
            f"{random_archs} per seed ({random_archs * seeds} in all), drawn uniformly from the space "
            f"(`sample_genotype`, different ones per seed).",
            f"- **Strategies run**: {', '.join(f'`{s}`' for s in strategies) or 'none'}."
            + (f" **Not run (not registered in `STRATEGIES` when this ran)**: {', '.join(f'`{s}`' for s in missing)}."
               if missing else ""),
            f"- **Space**: supernet C = {b.supernet_channels}, {b.supernet_cells} cells × {b.num_nodes} nodes, "
            f"ops {', '.join(b.primitives)}; at most {b.max_skip_connect} skip_connect in the normal cell "
            "(derived and sampled alike).",
            f"- **Search budget** (each strategy): {b.search_epochs} epochs × {b.search_steps_per_epoch} steps "
            f"= {search_steps} steps ({b.warmup_epochs} warm-up epoch(s) with A frozen), batch "
            f"{b.search_batch_size} of each of D_tr, U, D_val; η_a = {b.arch_lr}; hypergradient "
            f"`{b.hypergradient}` (three_stage; darts: second order); other settings at `SearchConfig` defaults.",
            f"- **Retrain budget** (every genotype): DiscreteEncoder C = {b.retrain_channels}, "
            f"{b.retrain_cells} cells + LSTM decoder, {b.retrain_epochs} epochs × {b.retrain_steps_per_epoch} "
            f"steps, batch {b.retrain_batch_size}, AdamW at `RetrainConfig` defaults; the checkpoint with the "
            f"best validation CIDEr is evaluated; greedy decoding on "
            f"{'all' if not b.max_eval_images else f'the first {b.max_eval_images}'} images of each split.",
            f"- **When / where**: {dates[0] if dates else '?'} → {dates[-1] if dates else '?'} (UTC); "
            f"{machine}; TensorFlow {tf_version}." + (
                f" The machine was shared with other TensorFlow jobs: 1-minute load average at the end of the "
                f"runs {min(loads):.1f} … {max(loads):.1f} (2 cores), so wall times are upper bounds of an idle "
                "machine's." if loads else ""),
            ]
    wall = sum(r["search_time_s"] + r["retrain_time_s"] for r in ok)
    cpu = sum(r.get("search_cpu_s", 0.0) + r.get("retrain_cpu_s", 0.0) for r in ok)
    out.append(f"- **Cost of the recorded runs**: searches + retrains {wall / 60:.1f} min wall, {cpu / 60:.1f} min "
               "CPU (process start-up and data loading not included).")
    if wall_time_s is not None:
        out.append(f"- **Wall time of this invocation**: {wall_time_s / 60:.1f} min.")
    if cost_note:
        out.append(f"- **How long**: {cost_note}")
    out += ["", "| method | runs | test CIDEr | test BLEU-4 | test_novel CIDEr | test_novel BLEU-4 | "
            "search time (min) | search CPU time (min) | retrain time (min) | encoder params |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        label = METHOD_LABELS.get(row["method"], f"`{row['method']}`")
        runs = str(row["runs"]) + (f" (+{row['failed']} failed)" if row["failed"] else "")
        search = "0" if row["method"] == METHOD_RANDOM else fmt(row["search_time_s"], 1, 1 / 60)
        search_cpu = "0" if row["method"] == METHOD_RANDOM else fmt(row["search_cpu_s"], 1, 1 / 60)
        out.append(f"| {label} | {runs} | {fmt(row['test_CIDEr'])} | {fmt(row['test_BLEU-4'])} | "
                   f"{fmt(row['test_novel_CIDEr'])} | {fmt(row['test_novel_BLEU-4'])} | {search} | {search_cpu} | "
                   f"{fmt(row['retrain_time_s'], 1, 1 / 60)} | {fmt(row['encoder_params'], 0)} |")
    out.append(f"| always the most frequent training caption | – | {fmt(baseline['test'])} | – | "
               f"{fmt(baseline['test_novel'])} | – | – | – | – | – |")
    out += ["", "Mean ± sample standard deviation (ddof = 1) over runs: one run per seed for a strategy and "
            "for random search, K per seed for random architectures. Search time is the wall time of "
            "`search_job` (model building and tracing included) and its CPU time the process's (both cores "
            "summed; less sensitive to the other jobs on the machine than wall time); for random search "
            "both are those of the K retrains its choice needed. Retrain time includes the per-epoch validation and the final test scoring.",
            "", "![test CIDEr against search cost](results.png)", "", "## Reading", ""]
    out += [f"- {line}" for line in verdict(rows, seeds)] or [
        "- Nothing to compare yet: a strategy and the random architectures both need a finished run."]
    out += ["", "READING_PARAGRAPH", "", "## Runs", "",
            "| run | test CIDEr | test_novel CIDEr | val CIDEr | search (s) | retrain (s) | encoder params | genotype (normal / reduce) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: (r["seed"], r["method"], r.get("arch") or 0)):
        if r["status"] != "ok":
            out.append(f"| {r['run_id']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        s = run_summary(r)
        gene = "; ".join(" ".join(f"{op}({i})" for op, i in r["genotype"][cell]) for cell in ("normal", "reduce"))
        out.append(f"| {r['run_id']} | {s['test_CIDEr']:.3f} | {s['test_novel_CIDEr']:.3f} | {s['val_CIDEr']:.3f} | "
                   f"{s['search_time_s']:.0f} | {s['retrain_time_s']:.0f} | {s['encoder_params']:,} | {gene} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], records: list[dict], methods: list[str], path: str, *, title: str) -> None:
    """Test and test_novel CIDEr against search cost (CPU minutes: less sensitive than wall time to the
    other jobs on a shared machine): every run as a dot, mean ± std as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    searched = random_search_summaries(records)
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split in zip(axes, SPLITS):
        key = f"{split}_CIDEr"
        series = [(m, [run_summary(r) for r in ok if r["method"] == m]) for m in list(methods) + [METHOD_RANDOM]]
        series.append((METHOD_RANDOM_SEARCH, searched))
        for i, (method, points) in enumerate(series):
            if not points:
                continue
            xs = [0.0 if method == METHOD_RANDOM else p["search_cpu_s"] / 60 for p in points]
            ys = [p[key] for p in points]
            label = METHOD_LABELS.get(method, method)
            ax.scatter(xs, ys, s=14, alpha=0.35, color=colors(i))
            (mx, sx, _), (my, sy, _) = mean_std(xs), mean_std(ys)
            ax.errorbar([mx], [my], xerr=None if math.isnan(sx) else [sx], yerr=None if math.isnan(sy) else [sy],
                        fmt="o", ms=7, capsize=4, color=colors(i), label=label)
        base = [r["baseline"][split]["CIDEr"] for r in ok if r.get("baseline")]
        if base:
            ax.axhline(sum(base) / len(base), ls="--", lw=1, color="grey", label="most frequent caption")
        ax.set_title(split)
        ax.set_xlim(left=-0.3)  # random architectures sit at 0: no search
        ax.set_xlabel("search cost (CPU minutes of the search process, both cores summed)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CIDEr (retrained, same budget)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- running ----------------------------------------------------------------------------------------

def search_config(budget: Budget, strategy: str):
    from capnas_tf.config import SearchConfig, SupernetConfig

    supernet = SupernetConfig(channels=budget.supernet_channels, num_cells=budget.supernet_cells,
                              num_nodes=budget.num_nodes, primitives=tuple(budget.primitives),
                              max_skip_connect=budget.max_skip_connect)
    return SearchConfig(strategy=strategy, hypergradient=budget.hypergradient, epochs=budget.search_epochs,
                        steps_per_epoch=budget.search_steps_per_epoch, warmup_epochs=budget.warmup_epochs,
                        arch_lr=budget.arch_lr, log_every=max(1, budget.search_steps_per_epoch // 2),
                        eval_images=0, supernet=supernet)


def retrain_config(budget: Budget, genotype_path: str):
    from capnas_tf.config import RetrainConfig

    metrics = ("BLEU", "METEOR", "CIDEr") if budget.meteor else ("BLEU", "CIDEr")
    return RetrainConfig(genotype=genotype_path, channels=budget.retrain_channels, num_cells=budget.retrain_cells,
                         epochs=budget.retrain_epochs, steps_per_epoch=budget.retrain_steps_per_epoch,
                         batch_size=budget.retrain_batch_size, max_eval_images=budget.max_eval_images,
                         pool_batchnorm=budget.retrain_pool_batchnorm, final_metrics=metrics, export_saved_model=False, export_onnx=False,
                         log_every=max(1, budget.retrain_steps_per_epoch // 2),
                         # as recorded so far: the epoch of the best validation CIDEr, and no blind baseline
                         # (the same for every genotype, and its retrain would count in retrain_time_s)
                         selection_metric="CIDEr", blind_baseline=False)


def random_genotype(budget: Budget, seed: int, k: int):
    """The k-th random genotype of `seed`: a pure function of (seed, k), so K can grow on resume."""
    import numpy as np

    from capnas_tf.search_space.genotypes import sample_genotype

    return sample_genotype(np.random.default_rng((seed, k)), primitives=tuple(budget.primitives),
                           num_nodes=budget.num_nodes, max_skip_connect=budget.max_skip_connect)


class Tee:
    """print() to stdout and to the run's log file."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file.write(line + "\n")

    def close(self):
        self.file.close()


def execute(spec: RunSpec, budget: Budget, data, workdir: str) -> dict:
    """Search (if any) → genotype → retrain → test scores, as a record. A finished search is reused
    (`search_done.json`); anything else left by an interrupted attempt is deleted first."""
    import keras
    import tensorflow as tf

    from capnas_tf.config import RunConfig
    from capnas_tf.jobs import search_job
    from capnas_tf.retrain import retrain_job
    from capnas_tf.search.loop import NonFiniteLossError
    from capnas_tf.search_space.genotypes import Genotype

    run_dir = os.path.join(workdir, "runs", spec.run_id)
    os.makedirs(run_dir, exist_ok=True)
    log = Tee(os.path.join(run_dir, "log.txt"))
    run = RunConfig(workdir=run_dir, seed=spec.seed)
    record = {"run_id": spec.run_id, "method": spec.method, "seed": spec.seed, "arch": spec.arch,
              "budget": budget.fingerprint(), "tensorflow": tf.__version__, "host": socket.gethostname()}
    genotype_path = os.path.join(run_dir, "genotype.json")
    done_path = os.path.join(run_dir, "search_done.json")
    try:
        if not spec.searches:
            random_genotype(budget, spec.seed, spec.arch).save(genotype_path)
            record.update(search_time_s=0.0, search_cpu_s=0.0, search_steps=0)
        elif os.path.exists(done_path):
            with open(done_path) as f:
                record.update(json.load(f))
            log(f"[{spec.run_id}] search finished earlier ({record['search_time_s']:.0f} s); reusing its genotype")
        else:
            shutil.rmtree(os.path.join(run_dir, "search"), ignore_errors=True)
            keras.backend.clear_session()
            start, cpu = time.perf_counter(), time.process_time()
            result = search_job(run, search_config(budget, spec.method), data,
                                batch_size=budget.search_batch_size, log=log)
            done = {"search_time_s": time.perf_counter() - start, "search_cpu_s": time.process_time() - cpu,
                    "search_steps": result.steps}
            result.genotype.save(genotype_path)
            from capnas_tf.io_utils import atomic_write_json

            atomic_write_json(done_path, done)
            record.update(done)
        shutil.rmtree(os.path.join(run_dir, "retrain"), ignore_errors=True)
        keras.backend.clear_session()
        start, cpu = time.perf_counter(), time.process_time()
        result = retrain_job(run, retrain_config(budget, genotype_path), data, log=log)
        record.update(retrain_time_s=time.perf_counter() - start, retrain_cpu_s=time.process_time() - cpu)
    except (NonFiniteLossError, FloatingPointError) as e:  # a diverged run is a result, not a crash
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        log(f"[{spec.run_id}] FAILED: {record['error']}")
    else:
        metrics = result.metrics
        record.update(
            status="ok", genotype=Genotype.load(genotype_path).to_dict(),
            encoder_params=int(result.captioner.encoder.count_params()),
            captioner_params=int(result.captioner.count_params()),
            best_validation_CIDEr=float(result.best_validation_score), best_epoch=result.best_epoch,
            scores={s: metrics["model"][s] for s in SPLITS},
            baseline={s: metrics["baseline"][s] for s in SPLITS} if "baseline" in metrics else None,
            num_images=metrics["num_images"])
    finally:
        log.close()
    record.update(load_average_1min=os.getloadavg()[0],
                  finished_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"))
    return record


def run_one(run_id: str, runs: list[RunSpec], budget: Budget, workdir: str) -> int:
    """The child process: loads the data of the run's seed, runs it, saves its record. A crash leaves
    its traceback in `<run dir>/crash.txt` for the driver."""
    import traceback

    from capnas_tf.config import DataConfig
    from capnas_tf.config import RunConfig
    from capnas_tf.jobs import load_data

    spec = next((r for r in runs if r.run_id == run_id), None)
    if spec is None:
        raise SystemExit(f"--only_run={run_id!r} is not a run of this benchmark.")
    try:
        data = load_data(RunConfig(workdir=workdir, seed=spec.seed),  # D_tr / U / D_val order: the seed's
                         DataConfig(batch_size=budget.search_batch_size, seed=spec.seed))
        save_record(workdir, execute(spec, budget, data, workdir))
    except BaseException:
        os.makedirs(os.path.join(workdir, "runs", run_id), exist_ok=True)
        with open(os.path.join(workdir, "runs", run_id, "crash.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    return 0


def run_in_subprocess(spec: RunSpec, budget: Budget, workdir: str, argv: list[str]) -> dict:
    """Runs `spec` in a fresh Python process (no TensorFlow state carried from one run to the next:
    traced functions, autograph caches, memory), and returns its record. A process that dies without
    one is recorded as failed with the last line of its traceback."""
    import subprocess

    crash = os.path.join(workdir, "runs", spec.run_id, "crash.txt")
    if os.path.exists(crash):
        os.remove(crash)
    argv = [a for a in run_arguments(argv) if not a.startswith("--only_run")]
    code = subprocess.call([sys.executable, os.path.abspath(__file__), *argv, f"--only_run={spec.run_id}"])
    record = load_records(workdir).get(spec.run_id)
    if record is not None and code == 0:
        return record
    if code in (-2, 130):  # Ctrl-C: stop the benchmark, record nothing
        raise KeyboardInterrupt
    last = f"exit code {code}"
    if os.path.exists(crash):
        with open(crash) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        last = f"crashed ({lines[-1] if lines else last})"
    record = {"run_id": spec.run_id, "method": spec.method, "seed": spec.seed, "arch": spec.arch,
              "budget": budget.fingerprint(), "status": "failed", "error": last, "host": socket.gethostname(),
              "load_average_1min": os.getloadavg()[0],
              "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    save_record(workdir, record)
    print(f"[{spec.run_id}] FAILED: {last}", flush=True)
    return record


def registered_strategies() -> list[str]:
    from capnas_tf.search.strategies import STRATEGIES

    return list(STRATEGIES)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="quick mode: 2 × 10 search steps, 2 × 50 retrain steps, 100 evaluation images, "
                             "2 seeds, K = 3 (< 30 min on an idle 2-core CPU)")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated search strategies (default: every name in STRATEGIES)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 … N−1 (default: 2 quick, 3 full)")
    parser.add_argument("--random_archs", type=int, default=None,
                        help="K random architectures per seed (default: 3 quick, 5 full)")
    parser.add_argument("--workdir", default=None,
                        help="runs and per-run records (default: runs/search_efficacy[_quick])")
    parser.add_argument("--out_md", default=None,
                        help="the table (Markdown; default docs/results.md, --quick docs/results_quick.md)")
    parser.add_argument("--out_png", default=None,
                        help="the plot of score against search cost (default docs/results.png, --quick "
                             "docs/results_quick.png)")
    parser.add_argument("--retry_failed", action="store_true", help="run again the runs recorded as failed")
    parser.add_argument("--report_only", action="store_true", help="only rewrite the table and plot from the records")
    parser.add_argument("--cost_note", default=None,
                        help="a sentence on how long the benchmark takes (e.g. the full mode, estimated from "
                             "measured step costs), put in the doc")
    parser.add_argument("--only_run", default=None,
                        help="internal: run this one run id in this process (the driver starts one process per run)")
    parser.add_argument("--reading", default=None,
                        help="a text file with the one-paragraph reading of the table, put in the doc")
    overrides = parser.add_argument_group("budget overrides (for tests; they change the budget fingerprint)")
    for field in dataclasses.fields(Budget):
        if field.name in ("primitives",):
            overrides.add_argument("--primitives", default=None, help="comma-separated candidate ops")
        elif field.type in ("bool",):
            overrides.add_argument(f"--{field.name}", action="store_true", default=None,
                                   help=f"Budget.{field.name}")
        elif field.name != "max_skip_connect":
            kind = {"int": int, "float": float, "str": str}[field.type]
            overrides.add_argument(f"--{field.name}", type=kind, default=None, help=f"Budget.{field.name}")
    args = parser.parse_args(argv)
    for name in ("seeds", "random_archs"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "seeds" else 0):
            parser.error(f"--{name} must be >= {1 if name == 'seeds' else 0}, received {value}.")
    suffix = "_quick" if args.quick else ""
    args.out_md = args.out_md or f"docs/results{suffix}.md"
    args.out_png = args.out_png or f"docs/results{suffix}.png"
    return args


REPORT_ONLY_OPTIONS = ("--report_only", "--reading", "--cost_note", "--out_md", "--out_png", "--retry_failed")


def run_arguments(argv: list[str]) -> list[str]:
    """`argv` without the options that only shape the report, so the doc shows the command that ran."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in REPORT_ONLY_OPTIONS:
            skip_value = "=" not in arg and name not in ("--report_only", "--retry_failed")
            continue
        kept.append(arg)
    return kept


def budget_from_args(args) -> Budget:
    budget = QUICK if args.quick else FULL
    changes = {}
    for field in dataclasses.fields(Budget):
        value = getattr(args, field.name, None)
        if value is not None:
            changes[field.name] = tuple(value.split(",")) if field.name == "primitives" else value
    return dataclasses.replace(budget, **changes)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    budget = budget_from_args(args)
    seeds = args.seeds or DEFAULT_SEEDS[mode]
    random_archs = DEFAULT_RANDOM_ARCHS[mode] if args.random_archs is None else args.random_archs
    workdir = args.workdir or ("runs/search_efficacy_quick" if args.quick else "runs/search_efficacy")
    registered = registered_strategies()
    strategies = registered if args.strategies is None else [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in registered]
    if unknown:
        raise SystemExit(f"--strategies: {unknown} not registered in capnas_tf.search.strategies.STRATEGIES "
                         f"{registered}.")
    expected = ("three_stage", "darts", "gdas", "random_ws", "reinforce")  # the strategies the benchmark compares
    missing = [s for s in expected if s not in registered]
    command = "python " + " ".join(["benchmarks/search_efficacy.py"]
                                   + run_arguments(sys.argv[1:] if argv is None else list(argv)))

    records = load_records(workdir)
    check_budget(records, budget, workdir)
    runs = plan_runs(strategies, seeds, random_archs)
    todo = pending_runs(runs, records, retry_failed=args.retry_failed)
    print(f"search_efficacy ({mode}): {len(runs)} runs planned, {len(runs) - len(todo)} already recorded in "
          f"{workdir}/results, {len(todo)} to run{' (not now: --report_only)' if args.report_only else ''}. "
          f"Compared strategies not registered: {missing or 'none'}.", flush=True)
    if args.only_run:
        return run_one(args.only_run, runs, budget, workdir)
    if args.report_only:
        todo = []
    started = time.perf_counter()
    for i, spec in enumerate(todo):
        print(f"=== [{i + 1}/{len(todo)}] {spec.run_id} ===", flush=True)
        t0 = time.perf_counter()
        record = run_in_subprocess(spec, budget, workdir, sys.argv[1:] if argv is None else list(argv))
        print(f"=== {spec.run_id}: {record['status']} in {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - started if todo else None

    wanted = {spec.run_id for spec in runs}
    chosen = [r for run_id, r in load_records(workdir).items() if run_id in wanted]
    if not chosen:
        raise SystemExit(f"No records in {workdir}/results for the runs asked for; nothing to report.")
    rows = aggregate(chosen, strategies)
    md = render_markdown(rows, chosen, budget=budget, mode=mode, command=command, seeds=seeds,
                         random_archs=random_archs, strategies=strategies, missing=missing,
                         machine=machine_description(), wall_time_s=wall, cost_note=args.cost_note)
    reading = "(No reading paragraph was given: pass --reading=FILE.)"
    if args.reading:
        with open(args.reading) as f:
            reading = f.read().strip()
    md = md.replace("READING_PARAGRAPH", reading)
    os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
    with open(args.out_md, "w") as f:
        f.write(md)
    plot(rows, chosen, strategies, args.out_png,
         title=f"search efficacy on capnas_shapes ({mode} mode, {seeds} seed(s), K = {random_archs})")
    print(f"Wrote {args.out_md} and {args.out_png}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
