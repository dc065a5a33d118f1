"""Search efficacy: do the search strategies find better encoders than a panel of random architectures?

    python benchmarks/search_efficacy.py                        # run what is missing, then write docs/results.md
    python benchmarks/search_efficacy.py --max_minutes=60       # stop after the job that passes an hour
    python benchmarks/search_efficacy.py --report_only          # only rewrite docs/results.md from the records
    python benchmarks/search_efficacy.py --variants=three_stage,darts --search_seeds=8

(from the repository root; prefix `PYTHONPATH=.` if capnas_tf is not pip-installed.)

The design (a search is compared with what the same retrain makes of architectures drawn at random):
  * a fixed **panel** of PANEL_SIZE genotypes drawn uniformly from the search space (`sample_genotype`
    with the panel's own seeds), each retrained with every seed of RETRAIN_SEEDS: computed once, reused by
    every strategy and variant;
  * per variant (a search strategy and its options, VARIANTS), SEARCH_SEEDS searches, each searched
    genotype retrained with the same seeds as the panel; the `*_pt` variants (SELECTIONS) take the genotype
    that DARTS-PT's perturbation rule selects on the same searched supernets (no search of their own);
  * a genotype's score is the mean over its retrain seeds of the primary score, the share of `test`
    captions that are entirely correct (`capnas_tf.data.shapes_content`: every group, attribute and relation
    right); test CIDEr and `test_novel` beside it. The retrain keeps the epoch of the best validation score,
    so nothing is chosen on a test split;
  * the test: one-sided exact Mann–Whitney U of the variant's genotypes against the panel, AUC = U / (n·m),
    each searched genotype's percentile in the panel, bootstrap intervals (`benchmarks/efficacy_stats.py`);
    random search is the best of RANDOM_SEARCH_K panel genotypes by validation score, per search seed;
  * per search, its near-free diagnostics: A's history, the final entropy of softmax(A), the mean cosine of
    successive A gradients (near 0: the A steps are mostly noise), the parameter-free
    operations on the reduction edges, and Kendall τ between its one-shot ranking of the panel (each panel
    genotype's validation caption loss on the supernet's shared weights) and the panel's retrained scores;
  * once, the budget's stability: the first STABILITY_GENOTYPES panel genotypes retrained at
    STABILITY_FACTOR × the steps; Spearman ρ between the two budgets' scores (≥ 0.7 wanted).

Every job (a retrain of one genotype with one seed, or one search) runs in a Python process of its own
and writes its record to `docs/search_efficacy/<job id>.json` as soon as it finishes; records are
committed, so the benchmark runs over several sittings: re-running the command skips what is recorded.
A retrain record is named by what determines it (genotype, seed, budget), so a searched genotype that is
already in the panel is not retrained twice. A record of another budget or space is refused, naming it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efficacy_stats as es  # noqa: E402

QUICKSTART_PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3")
PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none")
SPLITS = ("test", "test_novel")
PRIMARY = "entirely_correct"
PANEL_SIZE = 20
RETRAIN_SEEDS = (0, 1)
SEARCH_SEEDS = 8
RANDOM_SEARCH_K = 5
STABILITY_GENOTYPES = 6
STABILITY_FACTOR = 3
PANEL_RNG_SEED = 20_251_207  # the panel's draws: independent of every run seed
RECORDS = "docs/search_efficacy"


@dataclasses.dataclass(frozen=True)
class Space:
    """The searched space: the quickstart's 3 cells × 3 nodes × 5 candidate ops."""

    supernet_channels: int = 8
    supernet_cells: int = 3
    num_nodes: int = 3
    primitives: tuple = QUICKSTART_PRIMITIVES
    max_skip_connect: int | None = 2


@dataclasses.dataclass(frozen=True)
class RetrainBudget:
    """What determines a retrain besides its genotype and seed: the recipe (`RetrainConfig` defaults:
    transformer decoder over the grid, 32 images × 4 captions a step, C = 16) at the quickstart's steps, its
    captions decoded greedily (`GREEDY`)."""

    epochs: int = 2
    steps_per_epoch: int = 600
    batch_size: int = 32
    max_eval_images: int = 0  # all 300 images of each evaluation split
    dataset_version: str = ""  # capnas_shapes' TFDS version, filled in at run time

    def scaled(self, factor: int) -> "RetrainBudget":
        return dataclasses.replace(self, steps_per_epoch=self.steps_per_epoch * factor)


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """Every search: the same steps on the same streams; the rest at `SearchConfig` defaults."""

    batch_size: int = 16
    epochs: int = 6
    warmup_epochs: int = 2
    steps_per_epoch: int = 50


# A variant: a strategy and the SearchConfig options that differ from the defaults.
# Run in this order: the method, its baseline, the remedy against parameter-free reductions (β-DARTS' Beta-Decay
# at its DARTS-space weight), the published two-term estimator, then the sampling strategies.
VARIANTS = {
    "three_stage": {"strategy": "three_stage", "hypergradient_terms": "full"},
    "darts": {"strategy": "darts"},
    "three_stage_beta": {"strategy": "three_stage", "hypergradient_terms": "full", "arch_beta_decay": 25.0},
    "darts_beta": {"strategy": "darts", "arch_beta_decay": 25.0},
    "three_stage_paper": {"strategy": "three_stage", "hypergradient_terms": "paper"},
    "gdas": {"strategy": "gdas"},
    "random_ws": {"strategy": "random_ws"},
    "reinforce": {"strategy": "reinforce"},
}


# Variants that need no search of their own: another selection on a variant's searched supernet. DARTS-PT's
# rule (capnas_tf.search.selection): the ops and edges whose removal costs the supernet most, not argmax(A).
SELECTIONS = {"three_stage_pt": "three_stage", "darts_pt": "darts"}
PT_BATCHES = 4  # D_val batches of the perturbation measurement and the one-shot panel losses


KNOWN_VARIANTS = list(VARIANTS) + list(SELECTIONS)
# the method and its baseline with both selections first, then the remedies, the published estimator, the rest
DEFAULT_VARIANTS = ["three_stage", "three_stage_pt", "darts", "darts_pt", "three_stage_beta", "darts_beta",
                    "three_stage_paper", "gdas", "random_ws", "reinforce"]


def fingerprint(obj) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def genotype_key(genotype: dict) -> str:
    """A short name for a genotype: what it is, not where it came from."""
    canonical = json.dumps({k: genotype[k] for k in sorted(genotype)}, sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:10]


def retrain_id(genotype: dict, seed: int, factor: int = 1) -> str:
    return f"retrain-{genotype_key(genotype)}-r{seed}" + ("" if factor == 1 else f"-x{factor}")


def search_id(variant: str, seed: int) -> str:
    return f"search-{variant}-s{seed}"


def panel_genotypes(space: Space, size: int) -> list[dict]:
    """The panel: genotype k is a pure function of (PANEL_RNG_SEED, k), so the panel can grow."""
    import numpy as np

    from capnas_tf.search_space.genotypes import sample_genotype

    return [json.loads(sample_genotype(np.random.default_rng((PANEL_RNG_SEED, k)), primitives=space.primitives,
                                       num_nodes=space.num_nodes,
                                       max_skip_connect=space.max_skip_connect).to_json()) for k in range(size)]


def parameter_free_reduction_edges(genotype: dict) -> int:
    return sum(op in PARAMETER_FREE for op, _ in genotype["reduce"])


# --- planning (pure) -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Job:
    job_id: str
    kind: str  # "retrain" or "search"
    genotype: dict | None = None
    seed: int = 0
    factor: int = 1
    variant: str | None = None


def plan(records: dict, *, panel: list[dict], variants, search_seeds: int, retrain_seeds=RETRAIN_SEEDS,
         stability: bool = True) -> list[Job]:
    """Every job wanted, in the order they run: the panel seed by seed; the budget's stability check on the
    first genotypes; then per variant each search followed by its genotype's retrains. A searched
    genotype's retrains are known once its search is recorded, so the driver plans again after each job."""
    jobs, seen = [], set()

    def add(job):
        if job.job_id not in seen:
            seen.add(job.job_id)
            jobs.append(job)

    first = panel[:STABILITY_GENOTYPES]
    for seed in retrain_seeds:
        for genotype in first:
            add(Job(retrain_id(genotype, seed), "retrain", genotype, seed))
    if stability:
        for seed in retrain_seeds:
            for genotype in first:
                add(Job(retrain_id(genotype, seed, STABILITY_FACTOR), "retrain", genotype, seed, STABILITY_FACTOR))
    for seed in retrain_seeds:
        for genotype in panel[STABILITY_GENOTYPES:]:
            add(Job(retrain_id(genotype, seed), "retrain", genotype, seed))
    for variant in variants:
        base = SELECTIONS.get(variant, variant)
        field = "genotype_pt" if variant in SELECTIONS else "genotype"
        for s in range(search_seeds):
            sid = search_id(base, s)
            add(Job(sid, "search", seed=s, variant=base))
            record = records.get(sid)
            if record is not None and record["status"] == "ok" and field in record:
                for seed in retrain_seeds:
                    add(Job(retrain_id(record[field], seed), "retrain", record[field], seed))
    return jobs


def pending(jobs: list[Job], records: dict, *, retry_failed: bool = False) -> list[Job]:
    def done(job):
        record = records.get(job.job_id)
        return record is not None and (record["status"] == "ok" or not retry_failed)
    return [job for job in jobs if not done(job)]


# --- the record store -------------------------------------------------------------------------------------

def load_records(folder: str) -> dict[str, dict]:
    records = {}
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    try:
                        record = json.load(f)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: not valid JSON ({e}); delete it to run that job again.") from None
                records[record["job_id"]] = record
    return records


def expected_fingerprint(job: Job, *, space: Space, retrain: RetrainBudget, search: SearchBudget) -> dict:
    """What determines a job's result besides its seed: the budget, and every setting of the configs the job
    is run with (their defaults included), so that a changed default is a changed fingerprint. A setting added
    later whose default leaves the job as it was (e.g. a decoder option that is off) is added to the records'
    fingerprints in the commit that adds it."""
    if job.kind == "retrain":
        budget = retrain.scaled(job.factor)
        config = fingerprint(retrain_config(budget, genotype_path=""))
        del config["genotype"]  # the genotype is the job's identity, not its recipe
        return {"retrain": fingerprint(budget), "config": config, "decoder": decoder_fingerprint(budget),
                "data": data_fingerprint(budget.batch_size)}
    return {"space": fingerprint(space), "search": fingerprint(search), "variant": VARIANTS[job.variant],
            "config": fingerprint(search_config(space, search, job.variant)),
            "data": data_fingerprint(search.batch_size)}


@functools.lru_cache(maxsize=None)
def decoder_fingerprint(budget: RetrainBudget) -> dict:
    """The retrain's decoder settings, its class's defaults included (they live with the decoder, not in
    `RetrainConfig`); vocabulary and caption length come from the data."""
    from capnas_tf.decoders import get_decoder
    from capnas_tf.retrain import decoder_options

    config = retrain_config(budget, genotype_path="")
    settings = get_decoder(config.decoder, vocab_size=8, max_len=8, **decoder_options(config)).get_config()
    return {"name": config.decoder, **{k: v for k, v in json.loads(json.dumps(settings, default=str)).items()
                                       if k not in ("vocab_size", "max_len", "name", "trainable", "dtype")}}


def data_fingerprint(batch_size: int) -> dict:
    from capnas_tf.config import DataConfig

    data = fingerprint(DataConfig(batch_size=batch_size))
    del data["seed"]  # the job's seed
    return data


def check_fingerprints(records: dict, jobs: list[Job], folder: str, **budgets) -> None:
    """Refuses to mix records of another budget, space or variant definition into one table."""
    for job in jobs:
        record = records.get(job.job_id)
        if record is not None and record.get("fingerprint") != expected_fingerprint(job, **budgets):
            raise ValueError(f"{folder}/{job.job_id}.json was made with another budget, space or variant "
                             f"({record.get('fingerprint')}, expected {expected_fingerprint(job, **budgets)}); "
                             "use another --records folder, or the options of that run.")


def save_record(folder: str, record: dict) -> str:
    from capnas_tf.io_utils import atomic_write_json

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{record['job_id']}.json")
    atomic_write_json(path, record)
    return path


# --- the statistics of the table (pure) ------------------------------------------------------------------

def genotype_scores(records: dict, genotype: dict, *, split: str = "test", metric: str = PRIMARY,
                    retrain_seeds=RETRAIN_SEEDS, factor: int = 1) -> float | None:
    """The mean over retrain seeds of a content score (or "CIDEr"), None until every seed is recorded."""
    values = []
    for seed in retrain_seeds:
        record = records.get(retrain_id(genotype, seed, factor))
        if record is None or record["status"] != "ok":
            return None
        scores = record["scores"][split]
        values.append(scores[metric] if metric in ("CIDEr", "BLEU-4") else scores["content"][metric])
    return sum(values) / len(values)


def validation_score(records: dict, genotype: dict, retrain_seeds=RETRAIN_SEEDS) -> float | None:
    values = [records.get(retrain_id(genotype, s)) for s in retrain_seeds]
    if any(v is None or v["status"] != "ok" for v in values):
        return None
    return sum(v["best_validation_score"] for v in values) / len(values)


def searched_genotypes(records: dict, variant: str, search_seeds: int) -> list[dict]:
    """The variant's genotypes: its searches' (argmax A), or for a SELECTIONS variant the perturbation
    selection on its base variant's searched supernets."""
    field = "genotype_pt" if variant in SELECTIONS else "genotype"
    found = [records.get(search_id(SELECTIONS.get(variant, variant), s)) for s in range(search_seeds)]
    return [r[field] for r in found if r is not None and r["status"] == "ok" and field in r]


def random_search_genotypes(records: dict, panel: list[dict], search_seeds: int) -> list[dict]:
    """Per search seed s: of RANDOM_SEARCH_K panel genotypes drawn with seed s, the best by validation score."""
    import numpy as np

    scored = [(g, validation_score(records, g)) for g in panel]
    scored = [(g, v) for g, v in scored if v is not None]
    if len(scored) < RANDOM_SEARCH_K:
        return []
    chosen = []
    for s in range(search_seeds):
        picks = np.random.default_rng((PANEL_RNG_SEED, 1, s)).choice(len(scored), RANDOM_SEARCH_K, replace=False)
        chosen.append(max((scored[i] for i in sorted(picks)), key=lambda gv: gv[1])[0])
    return chosen


def comparison(searched: list[float], panel: list[float]) -> dict:
    u, p = es.mann_whitney_greater(searched, panel)
    return {"n": len(searched), "U": u, "p": p, "auc": es.auc(searched, panel),
            "auc_interval": es.bootstrap_interval(searched, panel, es.auc),
            "median_percentile": es.median_percentile(searched, panel),
            "median_percentile_interval": es.bootstrap_interval(searched, panel, es.median_percentile),
            "percentiles": [es.percentile_in_panel(s, panel) for s in searched]}


# --- the report ---------------------------------------------------------------------------------------------

def _f(value, digits=3, pct=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f} %" if pct else f"{value:.{digits}f}"


def seed_sd(records: dict, genotypes: list[dict]) -> float | None:
    """The pooled standard deviation of a genotype's primary score between retrain seeds."""
    import numpy as np

    per_genotype = []
    for g in genotypes:
        values = [records.get(retrain_id(g, s)) for s in RETRAIN_SEEDS]
        if all(v is not None and v["status"] == "ok" for v in values):
            per_genotype.append(np.var([v["scores"]["test"]["content"][PRIMARY] for v in values], ddof=1))
    return float(np.sqrt(np.mean(per_genotype))) if len(per_genotype) >= 3 else None


def measured_power(records: dict, panel: list[dict], search_seeds: int) -> str:
    scores = [v for v in (genotype_scores(records, g) for g in panel) if v is not None]
    sd = seed_sd(records, panel)
    if len(scores) < len(panel) or sd is None:
        return " (the power with the measured panel and its retrain noise follows once the panel is complete)"
    p = es.power_with_noise(scores, sd, search_seeds, retrain_seeds=len(RETRAIN_SEEDS))
    return (f"; with the measured panel and its retrain noise (standard deviation between seeds "
            f"{100 * sd:.1f} points), {p:.2f}")


def render(records: dict, *, panel: list[dict], variants, search_seeds: int, jobs: list[Job], command: str,
           space: Space, retrain: RetrainBudget, search: SearchBudget) -> str:
    done = [j for j in jobs if j.job_id in records]
    panel_primary = [genotype_scores(records, g) for g in panel]
    panel_primary = [v for v in panel_primary if v is not None]
    lines = [
        "# Search efficacy on capnas_shapes",
        "",
        "Does a search strategy find a better encoder than an architecture drawn at random from the same space,",
        "when every genotype is retrained by the same recipe with the same seeds? Produced by",
        "`benchmarks/search_efficacy.py` from the records in [search_efficacy/](search_efficacy/); every number is",
        "measured. The benchmark runs over several sittings; re-running the command resumes it:",
        "",
        f"    {command}",
        "",
        f"**Progress: {len(done)} of the {len(jobs)} jobs planned so far are recorded** "
        f"({sum(1 for j in done if j.kind == 'retrain')} retrains, "
        f"{sum(1 for j in done if j.kind == 'search')} searches); a searched genotype's retrains are planned once "
        "its search is recorded.",
        "",
        "## Design",
        "",
        f"- **Space**: supernet C = {space.supernet_channels}, {space.supernet_cells} cells × {space.num_nodes} "
        f"nodes, ops {', '.join(space.primitives)}; at most {space.max_skip_connect} skip_connect in the normal cell.",
        f"- **Panel**: {len(panel)} genotypes drawn uniformly from the space, each retrained with seeds "
        f"{', '.join(map(str, RETRAIN_SEEDS))}.",
        f"- **Retrain** (every genotype): the recipe of [captioner_recipe.md](captioner_recipe.md) (`RetrainConfig` "
        f"defaults) at {retrain.epochs} × {retrain.steps_per_epoch} steps of {retrain.batch_size} images; the epoch "
        "with the best validation score (entirely-correct captions) is kept; greedy captions of all 300 images of "
        "`test` and `test_novel`.",
        f"- **Search** (every variant): {search.epochs} epochs × {search.steps_per_epoch} steps "
        f"({search.warmup_epochs} warm-up epochs with A frozen), batch {search.batch_size} of each stream, "
        f"`SearchConfig` defaults otherwise; {search_seeds} search seeds per variant.",
        "- **Variants**: " + "; ".join(
            f"`{v}` = " + (f"DARTS-PT's perturbation selection on `{SELECTIONS[v]}`'s searched supernets" if v in SELECTIONS
                           else ", ".join(f"{k}={val}" for k, val in VARIANTS[v].items())) for v in variants) + ".",
        f"- **Score**: a genotype's share of entirely correct `test` captions, mean over its retrain seeds. The test: "
        "one-sided exact Mann–Whitney U of a variant's genotypes against the panel (H1: they score higher); AUC = "
        "U / (n·m) with a 95 % bootstrap interval; each genotype's percentile in the panel. Random search: per "
        f"search seed, the best of {RANDOM_SEARCH_K} panel genotypes by validation score.",
        f"- **Power**: if every searched genotype lands in the top 20 % of the space, {search_seeds} searches against "
        f"{len(panel)} panel genotypes reject at p < 0.05 with probability "
        f"{es.power(search_seeds, len(panel)):.2f} with no retrain noise{measured_power(records, panel, search_seeds)}.",
        "",
        "## Verdict",
        "",
    ]
    rows, verdicts = [], []
    for variant in list(variants) + ["random_search"]:
        genotypes = (random_search_genotypes(records, panel, search_seeds) if variant == "random_search"
                     else searched_genotypes(records, variant, search_seeds))
        scored = [(g, genotype_scores(records, g)) for g in genotypes]
        complete = [(g, v) for g, v in scored if v is not None]
        primary = [v for _, v in complete]
        if len(panel_primary) < len(panel) or len(complete) < search_seeds:
            rows.append((variant, len(complete), None, primary, complete))
            continue
        result = comparison(primary, panel_primary)
        rows.append((variant, len(complete), result, primary, complete))
        wins = result["p"] < 0.05 and result["median_percentile"] >= 75
        verdicts.append(f"- `{variant}`: {'beats' if wins else 'does not beat'} the panel (p = {result['p']:.3f}, "
                        f"median percentile {result['median_percentile']:.0f}).")
    lines += verdicts or ["No variant has all its searches and retrains recorded yet: no verdict. The tables show "
                          "what is recorded."]
    lines += ["", "## Panel", ""]
    if panel_primary:
        import numpy as np

        q = np.quantile(panel_primary, [0, 0.25, 0.5, 0.75, 1])
        lines.append(f"{len(panel_primary)} of {len(panel)} panel genotypes have every seed recorded: entirely "
                     f"correct `test` captions min {_f(q[0], pct=True)}, quartiles {_f(q[1], pct=True)} / "
                     f"{_f(q[2], pct=True)} / {_f(q[3], pct=True)}, max {_f(q[4], pct=True)}.")
    else:
        lines.append("No panel genotype has every seed recorded yet.")
    lines += ["", "Entirely correct `test` captions per retrain seed and their mean; relation, CIDEr and `test_novel` "
              "(entirely correct) are means over the seeds; *free* = parameter-free ops on the reduction cell's "
              "edges.", "",
              "| genotype | params | free | " + " | ".join(f"seed {s}" for s in RETRAIN_SEEDS)
              + " | mean | relation | CIDEr | test_novel |", "|---" * (7 + len(RETRAIN_SEEDS)) + "|"]
    for g in panel:
        per_seed = []
        for s in RETRAIN_SEEDS:
            r = records.get(retrain_id(g, s))
            per_seed.append(_f(r["scores"]["test"]["content"][PRIMARY], pct=True)
                            if r and r["status"] == "ok" else ("failed" if r else "–"))
        r0 = records.get(retrain_id(g, RETRAIN_SEEDS[0]))
        params = f"{r0['encoder_params']:,}" if r0 and r0["status"] == "ok" else "–"
        lines.append(f"| `{genotype_key(g)}` | {params} | {parameter_free_reduction_edges(g)} of {len(g['reduce'])} | "
                     + " | ".join(per_seed)
                     + f" | {_f(genotype_scores(records, g), pct=True)}"
                     + f" | {_f(genotype_scores(records, g, metric='relation'), pct=True)}"
                     + f" | {_f(genotype_scores(records, g, metric='CIDEr'))}"
                     + f" | {_f(genotype_scores(records, g, split='test_novel'), pct=True)} |")
    lines += ["", "## Variants against the panel", "",
              "| variant | genotypes scored | mean score | AUC [95 %] | median percentile [95 %] | p (one-sided) |",
              "|---|---|---|---|---|---|"]
    for variant, n, result, primary, _ in rows:
        mean = _f(sum(primary) / len(primary), pct=True) if primary else "–"
        if result is None:
            lines.append(f"| `{variant}` | {n} of {search_seeds} | {mean} | – | – | – |")
        else:
            lo, hi = result["auc_interval"]
            plo, phi = result["median_percentile_interval"]
            lines.append(f"| `{variant}` | {n} | {mean} | {result['auc']:.2f} [{lo:.2f}, {hi:.2f}] | "
                         f"{result['median_percentile']:.0f} [{plo:.0f}, {phi:.0f}] | {result['p']:.3f} |")
    lines += ["", "## Searches", "",
              "| search | genotype | time (min) | final entropy of softmax(A) | cosine of successive ∇A "
              "| parameter-free reduction edges | one-shot Kendall τ with the panel | score | percentile in the panel |",
              "|---|---|---|---|---|---|---|---|---|"]
    for variant in variants:
        for s in range(search_seeds):
            r = records.get(search_id(variant, s))
            if r is None:
                continue
            if r["status"] != "ok":
                lines.append(f"| `{search_id(variant, s)}` | failed: {r.get('error', '')} | | | | | | | |")
                continue
            score = genotype_scores(records, r["genotype"])
            pct = _f(es.percentile_in_panel(score, panel_primary), 0) if score is not None and panel_primary else "–"
            lines.append(f"| `{search_id(variant, s)}` | `{genotype_key(r['genotype'])}` | "
                         f"{r['search_time_s'] / 60:.1f} | {r['final_entropy']:.3f} | "
                         f"{_f(r.get('successive_cosine'), 2)} | "
                         f"{r['parameter_free_reduction_edges']} of {len(r['genotype']['reduce'])} | "
                         f"{_f(one_shot_tau(records, r, panel), 2)} | {_f(score, pct=True)} | {pct} |")
    lines += ["", "## Is the retrain budget's ranking stable?", ""]
    first = panel[:STABILITY_GENOTYPES]
    short = [genotype_scores(records, g) for g in first]
    long = [genotype_scores(records, g, factor=STABILITY_FACTOR) for g in first]
    if all(v is not None for v in short + long):
        rho = es.spearman(short, long)
        lines.append(f"Spearman ρ between the scores at {retrain.epochs} × {retrain.steps_per_epoch} steps and at "
                     f"{STABILITY_FACTOR}× the steps, over the first {len(first)} panel genotypes × "
                     f"{len(RETRAIN_SEEDS)} seeds: **{rho:.2f}** ({'≥' if rho >= 0.7 else 'below'} 0.7"
                     f"{'' if rho >= 0.7 else ': the budget must be raised'}).")
        lines += ["", "| genotype | budget | 3× budget |", "|---|---|---|"]
        lines += [f"| `{genotype_key(g)}` | {_f(a, pct=True)} | {_f(b, pct=True)} |"
                  for g, a, b in zip(first, short, long)]
    else:
        have = sum(v is not None for v in long)
        lines.append(f"Not yet measured: {have} of {len(first)} genotypes have every seed at {STABILITY_FACTOR}× "
                     "the steps.")
    times = [r["wall_s"] for r in records.values() if r.get("kind") == "retrain" and r["status"] == "ok"
             and r["factor"] == 1]
    searches = [r["search_time_s"] for r in records.values() if r.get("kind") == "search" and r["status"] == "ok"]
    lines += ["", "## Cost", ""]
    if times:
        lines.append(f"A retrain takes {sum(times) / len(times) / 60:.1f} min on average ({len(times)} recorded), "
                     "scoring included.")
    if searches:
        lines.append(f"A search takes {sum(searches) / len(searches) / 60:.1f} min on average ({len(searches)} "
                     "recorded), tracing included.")
    hosts = sorted({r.get("host", "?") for r in records.values()})
    lines.append(f"Measured on {', '.join(hosts) or '–'} (2-core CPU, no GPU), one job at a time.")
    return "\n".join(lines) + "\n"


# --- running -----------------------------------------------------------------------------------------------

def search_config(space: Space, search: SearchBudget, variant: str):
    from capnas_tf.config import SearchConfig, SupernetConfig

    supernet = SupernetConfig(channels=space.supernet_channels, num_cells=space.supernet_cells,
                              num_nodes=space.num_nodes, primitives=tuple(space.primitives),
                              max_skip_connect=space.max_skip_connect)
    return SearchConfig(epochs=search.epochs, steps_per_epoch=search.steps_per_epoch,
                        warmup_epochs=search.warmup_epochs, log_every=max(1, search.steps_per_epoch // 2),
                        eval_images=0, supernet=supernet, **VARIANTS[variant])


# Content accuracy ranks genotypes and greedy captions say the same content as the default beam of 3 (the
# recipe's three seeds: entirely correct .983/.933/.937 greedy, .987/.927/.937 beam); the records were taken
# greedily, so the benchmark keeps greedy decoding and its fingerprints.
GREEDY = 1


def retrain_config(retrain: RetrainBudget, genotype_path: str):
    from capnas_tf.config import RetrainConfig

    return RetrainConfig(genotype=genotype_path, epochs=retrain.epochs, steps_per_epoch=retrain.steps_per_epoch,
                         batch_size=retrain.batch_size, max_eval_images=retrain.max_eval_images,
                         final_metrics=("BLEU", "CIDEr"), export_saved_model=False, export_onnx=False,
                         log_every=max(1, retrain.steps_per_epoch // 2), blind_baseline=False, beam_width=GREEDY)


def validation_batches(data, count: int, batch_size: int) -> list:
    """The first `count` D_val batches of the search's stream (the same for every measurement of a search)."""
    from capnas_tf.jobs import search_streams

    stream = iter(search_streams(data, batch_size))
    return [next(stream)["val"] for _ in range(count)]


def one_shot_losses(models, genotypes: list[dict], val: list, *, primitives) -> list[float]:
    """Each genotype's caption loss on the supernet's shared weights (the one-hot path of its operations),
    mean over the same `batches` D_val batches: the search's own ranking of the panel, for Kendall τ against
    the panel's retrained scores. One trace serves every genotype (the path is an input)."""
    import numpy as np
    import tensorflow as tf

    from capnas_tf.search.captioning import path_loss
    from capnas_tf.search_space.genotypes import Genotype, genotype_op_weights

    loss = tf.function(lambda batch, normal, reduce: path_loss(models, batch, (normal, reduce),
                                                               training_decoder=False), autograph=False)
    out = []
    for genotype in genotypes:
        normal, reduce = (tf.constant(w, tf.float32)
                          for w in genotype_op_weights(Genotype.from_dict(genotype), primitives))
        out.append(float(np.mean([loss(batch, normal, reduce).numpy() for batch in val])))
    return out


def one_shot_tau(records: dict, record: dict, panel: list[dict]) -> float | None:
    """Kendall τ between the search's one-shot ranking of the panel (lower loss first) and the panel's
    retrained scores, over the panel genotypes with every seed recorded."""
    losses = dict(zip(record.get("one_shot_panel", {}).get("keys", []),
                      record.get("one_shot_panel", {}).get("losses", [])))
    pairs = [(-losses[genotype_key(g)], genotype_scores(records, g)) for g in panel if genotype_key(g) in losses]
    pairs = [(a, b) for a, b in pairs if b is not None]
    return es.kendall([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 5 else None


def execute(job: Job, workdir: str, *, space: Space, retrain: RetrainBudget, search: SearchBudget, data) -> dict:
    import keras
    import tensorflow as tf

    from capnas_tf.config import RunConfig
    from capnas_tf.jobs import search_job
    from capnas_tf.retrain import retrain_job
    from capnas_tf.search.loop import NonFiniteLossError, arch_entropy
    from capnas_tf.search_space.genotypes import Genotype

    run_dir = os.path.join(workdir, job.job_id)
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt restarts: one uninterrupted measurement
    os.makedirs(run_dir)
    record = {"job_id": job.job_id, "kind": job.kind, "seed": job.seed, "factor": job.factor,
              "variant": job.variant, "fingerprint": expected_fingerprint(job, space=space, retrain=retrain,
                                                                         search=search),
              "tensorflow": tf.__version__, "host": socket.gethostname()}
    keras.backend.clear_session()
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if job.kind == "search":
            result = search_job(RunConfig(workdir=run_dir, seed=job.seed), search_config(space, search, job.variant),
                                data, batch_size=search.batch_size)
            with open(os.path.join(run_dir, "search", "alpha_history.jsonl")) as f:
                history = [json.loads(line) for line in f]
            genotype = json.loads(result.genotype.to_json())
            import numpy as np

            last = history[-1]
            cosines = [h["successive_cosine"] for h in history if h.get("successive_cosine") is not None]
            record.update(genotype=genotype, alpha_history=[{k: h.get(k) for k in (
                              "epoch", "step", "alpha_normal", "alpha_reduce", "successive_cosine")} for h in history],
                          # epochs of equal length: the mean of their means is the mean over the compared A steps
                          successive_cosine=sum(cosines) / len(cosines) if cosines else None,
                          final_entropy=arch_entropy([np.asarray(last["alpha_normal"]),
                                                      np.asarray(last["alpha_reduce"])]),
                          parameter_free_reduction_edges=parameter_free_reduction_edges(genotype),
                          search_steps=result.steps)
            search_wall = time.perf_counter() - start
            batches = validation_batches(data, PT_BATCHES, search.batch_size)
            if VARIANTS[job.variant]["strategy"] in ("three_stage", "darts"):
                from capnas_tf.search.selection import perturbation_importance
                from capnas_tf.search_space.genotypes import genotype_from_importance

                ops, edges = perturbation_importance(result.strategy.models, result.strategy.A_values(), batches)
                record["genotype_pt"] = json.loads(genotype_from_importance(
                    ops, edges, space.primitives, space.num_nodes, max_skip_connect=space.max_skip_connect).to_json())
            panel = panel_genotypes(space, PANEL_SIZE)
            record["one_shot_panel"] = {
                "keys": [genotype_key(g) for g in panel],
                "losses": one_shot_losses(result.strategy.models, panel, batches, primitives=space.primitives)}
            record["measurement_time_s"] = time.perf_counter() - start - search_wall
        else:
            path = os.path.join(run_dir, "genotype.json")
            Genotype.from_dict(job.genotype).save(path)
            result = retrain_job(RunConfig(workdir=run_dir, seed=job.seed),
                                 retrain_config(retrain.scaled(job.factor), path), data)
            m = result.metrics["model"]
            record.update(genotype=job.genotype, encoder_params=int(result.captioner.encoder.count_params()),
                          best_epoch=result.best_epoch, best_validation_score=float(result.best_validation_score),
                          selection_metric=result.selection_metric,
                          scores={s: {"CIDEr": m[s]["CIDEr"], "BLEU-4": m[s]["BLEU-4"], "content": m[s]["content"],
                                      "distinct": m[s].get("diversity")} for s in SPLITS})
    except (NonFiniteLossError, FloatingPointError) as e:  # a diverged run is a result, not a crash
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
    else:
        record["status"] = "ok"
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if job.kind == "search" and "measurement_time_s" in record:
        # the search's own time; the one-shot panel losses and the perturbation selection are recorded beside it
        wall -= record["measurement_time_s"]
    record.update({"search_time_s" if job.kind == "search" else "wall_s": wall, "cpu_s": cpu,
                   "load_average_1min": os.getloadavg()[0],
                   "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")})
    return record


def dataset_version() -> str:
    from capnas_tf.data.shapes_tfds import CapnasShapes

    return str(CapnasShapes.VERSION)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants, in the order they run (known: {', '.join(KNOWN_VARIANTS)})")
    parser.add_argument("--search_seeds", type=int, default=SEARCH_SEEDS, help="searches per variant")
    parser.add_argument("--panel_size", type=int, default=PANEL_SIZE, help="random genotypes in the panel")
    parser.add_argument("--no_stability", action="store_true", help="skip the budget's stability retrains")
    parser.add_argument("--records", default=RECORDS, help="the folder of the job records (committed)")
    parser.add_argument("--workdir", default="runs/search_efficacy", help="the jobs' run folders (not committed)")
    parser.add_argument("--out_md", default="docs/results.md", help="the report")
    parser.add_argument("--max_minutes", type=float, default=0.0,
                        help="start no job after this many minutes (0: run everything planned)")
    parser.add_argument("--max_jobs", type=int, default=0, help="run at most this many jobs (0: no limit)")
    parser.add_argument("--retry_failed", action="store_true", help="run again the jobs recorded as failed")
    parser.add_argument("--report_only", action="store_true", help="only rewrite the report from the records")
    parser.add_argument("--only_job", default=None, help="internal: run this one job in this process")
    # budget overrides, for tests (they change the records' fingerprints)
    parser.add_argument("--retrain_steps_per_epoch", type=int, default=None)
    parser.add_argument("--search_steps_per_epoch", type=int, default=None)
    parser.add_argument("--max_eval_images", type=int, default=None)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in KNOWN_VARIANTS]
    if unknown:
        parser.error(f"--variants: {unknown} are not variants of this benchmark ({', '.join(KNOWN_VARIANTS)}).")
    for name in ("search_seeds", "panel_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, received {getattr(args, name)}.")
    if args.panel_size < max(STABILITY_GENOTYPES, RANDOM_SEARCH_K):
        parser.error(f"--panel_size must be >= {max(STABILITY_GENOTYPES, RANDOM_SEARCH_K)}, received "
                     f"{args.panel_size}.")
    return args


def budgets(args) -> dict:
    retrain = RetrainBudget(dataset_version=dataset_version())
    search = SearchBudget()
    if args.retrain_steps_per_epoch:
        retrain = dataclasses.replace(retrain, steps_per_epoch=args.retrain_steps_per_epoch)
    if args.max_eval_images is not None:
        retrain = dataclasses.replace(retrain, max_eval_images=args.max_eval_images)
    if args.search_steps_per_epoch:
        search = dataclasses.replace(search, steps_per_epoch=args.search_steps_per_epoch)
    return {"space": Space(), "retrain": retrain, "search": search}


def run_only(job: Job, args, b: dict) -> int:
    import traceback

    from capnas_tf.config import DataConfig, RunConfig
    from capnas_tf.jobs import load_data

    batch = b["search"].batch_size if job.kind == "search" else b["retrain"].batch_size
    try:
        data = load_data(RunConfig(workdir=args.workdir, seed=job.seed), DataConfig(batch_size=batch, seed=job.seed))
        save_record(args.records, execute(job, args.workdir, data=data, **b))
    except BaseException:
        os.makedirs(os.path.join(args.workdir, job.job_id), exist_ok=True)
        with open(os.path.join(args.workdir, job.job_id, "crash.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    return 0


def run_in_subprocess(job: Job, argv: list[str], args, b: dict) -> dict:
    """A fresh Python process per job (no traced functions, caches or memory carried over). A process that
    dies without a record is recorded as failed with the last line of its traceback."""
    import subprocess

    argv = [a for a in argv if not a.startswith(("--only_job", "--max_minutes", "--max_jobs", "--report_only"))]
    code = subprocess.call([sys.executable, os.path.abspath(__file__), *argv, f"--only_job={job.job_id}"])
    record = load_records(args.records).get(job.job_id)
    if record is not None and code == 0:
        return record
    if code in (-2, 130):  # Ctrl-C: stop, record nothing
        raise KeyboardInterrupt
    crash = os.path.join(args.workdir, job.job_id, "crash.txt")
    last = f"exit code {code}"
    if os.path.exists(crash):
        with open(crash) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        last = f"crashed ({lines[-1] if lines else last})"
    record = {"job_id": job.job_id, "kind": job.kind, "seed": job.seed, "factor": job.factor, "variant": job.variant,
              "status": "failed", "error": last, "host": socket.gethostname(),
              "fingerprint": expected_fingerprint(job, **b),
              "finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    save_record(args.records, record)
    return record


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    b = budgets(args)
    variants = args.variants.split(",")
    panel = panel_genotypes(b["space"], args.panel_size)

    def current_plan():
        records = load_records(args.records)
        jobs = plan(records, panel=panel, variants=variants, search_seeds=args.search_seeds,
                    stability=not args.no_stability)
        check_fingerprints(records, jobs, args.records, **b)
        return records, jobs

    records, jobs = current_plan()
    if args.only_job:
        job = next((j for j in jobs if j.job_id == args.only_job), None)
        if job is None:
            raise SystemExit(f"--only_job={args.only_job!r} is not a job of this plan.")
        return run_only(job, args, b)
    started, ran = time.perf_counter(), 0
    while not args.report_only:
        todo = pending(jobs, records, retry_failed=args.retry_failed)
        out_of_time = args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes
        if not todo or out_of_time or (args.max_jobs and ran >= args.max_jobs):
            break
        job = todo[0]
        print(f"=== {job.job_id} ({len(jobs) - len(todo) + 1} of {len(jobs)} planned so far) ===", flush=True)
        t0 = time.perf_counter()
        record = run_in_subprocess(job, argv, args, b)
        ran += 1
        print(f"=== {job.job_id}: {record['status']} in {time.perf_counter() - t0:.0f} s", flush=True)
        records, jobs = current_plan()
    command = "python benchmarks/search_efficacy.py" + "".join(
        f" {a}" for a in argv if not a.startswith(("--max_minutes", "--max_jobs", "--report_only", "--retry_failed")))
    md = render(records, panel=panel, variants=variants, search_seeds=args.search_seeds, jobs=jobs,
                command=command, **b)
    os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(f"Wrote {args.out_md}: {len([j for j in jobs if j.job_id in records])} of {len(jobs)} jobs recorded.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
