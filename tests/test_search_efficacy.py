"""benchmarks/search_efficacy.py and benchmarks/efficacy_stats.py, their pure parts: the exact test against
enumeration, the plan and its resume, the records' fingerprints, random search's choice by validation, the
report. No search or retrain runs here (the benchmark itself does that)."""
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest

_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


es = _load("efficacy_stats")
se = _load("search_efficacy")


def _enumerated_p(x, y):
    """P(U ≥ U_observed) over every assignment of the pooled values to the first sample, by brute force."""
    pooled = list(x) + list(y)

    def u(a, b):
        return sum((ai > bj) + 0.5 * (ai == bj) for ai in a for bj in b)

    observed = u(x, y)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        hits += u(a, b) >= observed - 1e-12
        total += 1
    return observed, hits / total


@pytest.mark.parametrize("x, y", [
    ([0.9, 0.8, 0.75], [0.1, 0.5, 0.7, 0.2, 0.6]),            # no ties
    ([0.5, 0.5, 0.7, 0.2], [0.5, 0.3, 0.3, 0.7, 0.1, 0.2]),   # ties within and across the samples
    ([0.1, 0.2], [0.8, 0.9, 0.95, 0.3]),                      # the other direction: p near 1
])
def test_mann_whitney_is_the_exact_enumerated_p_value(x, y):
    u_expected, p_expected = _enumerated_p(x, y)
    u, p = es.mann_whitney_greater(x, y)
    assert u == pytest.approx(u_expected)
    assert p == pytest.approx(p_expected, abs=1e-12)
    assert es.auc(x, y) == pytest.approx(u_expected / (len(x) * len(y)))


def test_percentile_counts_ties_as_half():
    panel = [0.1, 0.2, 0.2, 0.4]
    assert es.percentile_in_panel(0.2, panel) == pytest.approx(50.0)
    assert es.percentile_in_panel(0.5, panel) == 100.0
    assert es.percentile_in_panel(0.0, panel) == 0.0
    assert es.median_percentile([0.0, 0.2, 0.5], panel) == pytest.approx(50.0)


def test_the_test_holds_its_level_and_has_power_against_a_top_fifth_search():
    # Searched genotypes from the panel's own distribution: rejections at most alpha (the exact test is
    # conservative), up to Monte Carlo error (3 standard errors of 400 draws).
    assert es.power(8, 20, top_fraction=1.0, simulations=400) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    assert es.power(8, 20, top_fraction=0.2, simulations=200) > 0.9
    # With the panel's own scores: retrain noise far above the panel's spread leaves little power.
    panel = np.linspace(0.3, 0.7, 20)
    assert es.power_with_noise(panel, 0.0, 8, retrain_seeds=2, simulations=200) > 0.9
    assert es.power_with_noise(panel, 5.0, 8, retrain_seeds=2, simulations=200) < 0.3


def test_bootstrap_interval_contains_the_statistic_of_a_clear_difference():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.6, 1.0, 8), rng.uniform(0.0, 0.7, 20)
    low, high = es.bootstrap_interval(x, y, es.auc, resamples=300)
    assert low <= es.auc(x, y) <= high and low > 0.5


PANEL = se.panel_genotypes(se.Space(), 8)


def test_panel_is_a_pure_function_of_its_index_and_genotypes_are_named_by_content():
    assert se.panel_genotypes(se.Space(), 10)[:8] == PANEL
    assert len({se.genotype_key(g) for g in PANEL}) == len(PANEL)
    reordered = {k: PANEL[0][k] for k in reversed(list(PANEL[0]))}
    assert se.genotype_key(reordered) == se.genotype_key(PANEL[0])


def _retrain_record(genotype, seed, *, test, val=0.5, factor=1, novel=None):
    content = {"entirely_correct": test, "relation": test / 2}
    return {"job_id": se.retrain_id(genotype, seed, factor), "kind": "retrain", "status": "ok", "seed": seed,
            "factor": factor, "genotype": genotype, "encoder_params": 1000, "best_validation_score": val,
            "wall_s": 240.0, "host": "h",
            "scores": {"test": {"CIDEr": 2 * test, "BLEU-4": test / 3, "content": content},
                       "test_novel": {"CIDEr": test, "BLEU-4": test / 4,
                                      "content": {"entirely_correct": novel or test, "relation": 0.1}}}}


def test_plan_runs_the_panel_then_the_stability_check_then_each_search_before_its_retrains():
    jobs = se.plan({}, panel=PANEL, variants=["three_stage"], search_seeds=2)
    ids = [j.job_id for j in jobs]
    first = PANEL[:se.STABILITY_GENOTYPES]
    assert ids[:len(first)] == [se.retrain_id(g, 0) for g in first]
    assert ids[len(first):2 * len(first)] == [se.retrain_id(g, 1) for g in first]
    stability = [se.retrain_id(g, s, se.STABILITY_FACTOR) for s in se.RETRAIN_SEEDS for g in first]
    assert ids[2 * len(first):4 * len(first)] == stability
    assert ids[-2:] == [se.search_id("three_stage", 0), se.search_id("three_stage", 1)]
    assert len(ids) == len(set(ids)) == 2 * len(PANEL) + len(stability) + 2

    # Once a search is recorded its genotype's retrains follow it; a genotype already in the panel is not
    # planned twice.
    found = {se.search_id("three_stage", 0): {"status": "ok", "genotype": PANEL[3]},
             se.search_id("three_stage", 1): {"status": "ok", "genotype": PANEL[0] | {"reduce_concat": [2]}}}
    ids2 = [j.job_id for j in se.plan(found, panel=PANEL, variants=["three_stage"], search_seeds=2)]
    assert ids2[-3:] == [se.search_id("three_stage", 1)] + [
        se.retrain_id(found[se.search_id("three_stage", 1)]["genotype"], s) for s in se.RETRAIN_SEEDS]
    assert len(ids2) == len(ids) + 2


def test_pending_skips_recorded_jobs_and_failed_ones_unless_retried():
    jobs = se.plan({}, panel=PANEL, variants=[], search_seeds=1, stability=False)
    records = {jobs[0].job_id: {"status": "ok"}, jobs[1].job_id: {"status": "failed"}}
    assert se.pending(jobs, records)[0] == jobs[2]
    assert se.pending(jobs, records, retry_failed=True)[0] == jobs[1]


def test_a_record_of_another_budget_is_refused_by_name():
    budgets = {"space": se.Space(), "retrain": se.RetrainBudget(), "search": se.SearchBudget()}
    jobs = se.plan({}, panel=PANEL, variants=["darts"], search_seeds=1)
    good = {j.job_id: {"fingerprint": se.expected_fingerprint(j, **budgets)} for j in jobs}
    se.check_fingerprints(good, jobs, "recs", **budgets)
    other = dict(budgets, retrain=se.RetrainBudget(steps_per_epoch=7))
    with pytest.raises(ValueError, match=rf"recs/{jobs[0].job_id}\.json was made with another budget"):
        se.check_fingerprints(good, jobs, "recs", **other)


def test_a_record_made_with_another_recipe_default_is_refused(monkeypatch):
    # the budget is unchanged; a default of RetrainConfig (the learning rate) or of the decoder class is not
    budgets = {"space": se.Space(), "retrain": se.RetrainBudget(), "search": se.SearchBudget()}
    jobs = se.plan({}, panel=PANEL, variants=[], search_seeds=1, stability=False)
    good = {j.job_id: {"fingerprint": se.expected_fingerprint(j, **budgets)} for j in jobs}
    build = se.retrain_config
    monkeypatch.setattr(se, "retrain_config", lambda *a, **k: dataclasses.replace(build(*a, **k), lr=1e-3))
    with pytest.raises(ValueError, match="was made with another budget"):
        se.check_fingerprints(good, jobs, "recs", **budgets)
    monkeypatch.setattr(se, "retrain_config", build)
    se.decoder_fingerprint.cache_clear()
    import capnas_tf.retrain

    monkeypatch.setattr(capnas_tf.retrain, "decoder_options", lambda config: {"dropout": 0.0, "count_heads": 2})
    try:
        with pytest.raises(ValueError, match="was made with another budget"):
            se.check_fingerprints(good, jobs, "recs", **budgets)
    finally:
        se.decoder_fingerprint.cache_clear()


def test_random_search_chooses_by_validation_never_by_test():
    # validation score opposite to test score: the choice must be the lowest-test genotype of each draw
    records = {}
    for i, g in enumerate(PANEL):
        for s in se.RETRAIN_SEEDS:
            r = _retrain_record(g, s, test=0.1 * i, val=1.0 - 0.1 * i)
            records[r["job_id"]] = r
    chosen = se.random_search_genotypes(records, PANEL, search_seeds=3)
    assert len(chosen) == 3
    for s, g in enumerate(chosen):
        picks = np.random.default_rng((se.PANEL_RNG_SEED, 1, s)).choice(len(PANEL), se.RANDOM_SEARCH_K,
                                                                          replace=False)
        assert PANEL.index(g) == min(picks)


def test_report_gives_a_verdict_only_when_every_search_and_retrain_is_recorded():
    records = {}
    for i, g in enumerate(PANEL):
        for s in se.RETRAIN_SEEDS:
            r = _retrain_record(g, s, test=0.05 * i + 0.01 * s)
            records[r["job_id"]] = r
    searched = [PANEL[0] | {"normal_concat": [2, 3, k]} for k in range(4)]  # 4 genotypes not in the panel
    for k, g in enumerate(searched):
        records[se.search_id("three_stage", k)] = {
            "job_id": se.search_id("three_stage", k), "kind": "search", "status": "ok", "genotype": g,
            "search_time_s": 300.0, "final_entropy": 1.2, "parameter_free_reduction_edges": 2,
            "successive_cosine": 0.18 if k else None}  # none: a search whose A steps were never compared
    budgets = {"space": se.Space(), "retrain": se.RetrainBudget(), "search": se.SearchBudget()}

    def report():
        jobs = se.plan(records, panel=PANEL, variants=["three_stage"], search_seeds=4, stability=False)
        return se.render(records, panel=PANEL, variants=["three_stage"], search_seeds=4, jobs=jobs,
                         command="python benchmarks/search_efficacy.py", **budgets)

    md = report()  # the panel is complete, the searched genotypes have no retrain yet: random search only
    assert "`three_stage`: " not in md and "`random_search`: " in md
    assert "| `three_stage` | 0 of 4 | – |" in md
    assert f"| `{se.search_id('three_stage', 0)}` | `{se.genotype_key(searched[0])}` | 5.0 | 1.200 | – | 2 of " in md
    assert f"| `{se.search_id('three_stage', 1)}` | `{se.genotype_key(searched[1])}` | 5.0 | 1.200 | 0.18 | 2 of " in md
    for g in searched:  # every searched genotype above the whole panel
        for s in se.RETRAIN_SEEDS:
            r = _retrain_record(g, s, test=0.9)
            records[r["job_id"]] = r
    md = report()
    u, p = es.mann_whitney_greater([0.9] * 4, [se.genotype_scores(records, g) for g in PANEL])
    assert f"`three_stage`: beats the panel (p = {p:.3f}, median percentile 100)" in md
    assert "| `three_stage` | 4 | 90.0 % | 1.00" in md


def test_one_shot_tau_ranks_lower_supernet_loss_as_better():
    records = {}
    for i, g in enumerate(PANEL):
        for s in se.RETRAIN_SEEDS:
            r = _retrain_record(g, s, test=0.1 * i)
            records[r["job_id"]] = r
    keys = [se.genotype_key(g) for g in PANEL]
    agrees = {"one_shot_panel": {"keys": keys, "losses": [5.0 - 0.1 * i for i in range(len(PANEL))]}}
    disagrees = {"one_shot_panel": {"keys": keys, "losses": [1.0 + 0.1 * i for i in range(len(PANEL))]}}
    assert se.one_shot_tau(records, agrees, PANEL) == pytest.approx(1.0)
    assert se.one_shot_tau(records, disagrees, PANEL) == pytest.approx(-1.0)
    assert se.one_shot_tau({}, agrees, PANEL) is None  # no retrained scores yet


def test_one_shot_losses_score_each_genotype_on_the_shared_weights_with_one_trace(tmp_path):
    import tensorflow as tf

    from capnas_tf.config import SearchConfig, SupernetConfig
    from capnas_tf.search.captioning import path_loss
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search_space.genotypes import Genotype, genotype_op_weights
    from tests.retrain_fixtures import tiny_data

    data = tiny_data(str(tmp_path))
    space = se.Space()
    config = SearchConfig(supernet=SupernetConfig(channels=4, num_cells=3, num_nodes=space.num_nodes,
                                                  primitives=space.primitives, max_skip_connect=2))
    models = build_search_models(config, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                 image_size=16, seed=0)
    genotypes = PANEL[:3] + [PANEL[0]]
    losses = se.one_shot_losses(models, genotypes, se.validation_batches(data, 2, 4), primitives=space.primitives)
    assert losses[0] == losses[3] and len(set(losses[:3])) == 3 and all(np.isfinite(losses))
    # the first genotype's loss is the supernet's caption loss at its one-hot path, batch by batch
    from capnas_tf.jobs import search_streams

    stream = iter(search_streams(data, 4))
    path = tuple(tf.constant(w, tf.float32) for w in genotype_op_weights(Genotype.from_dict(PANEL[0]), space.primitives))
    direct = np.mean([path_loss(models, next(stream)["val"], path, training_decoder=False).numpy() for _ in range(2)])
    assert losses[0] == pytest.approx(direct, rel=1e-5)


def test_a_selection_variant_retrains_the_perturbation_genotype_of_its_base_search_without_searching_again():
    found = {se.search_id("three_stage", 0): {"status": "ok", "genotype": PANEL[3],
                                              "genotype_pt": PANEL[0] | {"normal_concat": [9]}}}
    ids = [j.job_id for j in se.plan(found, panel=PANEL, variants=["three_stage", "three_stage_pt"],
                                     search_seeds=1, stability=False)]
    assert ids.count(se.search_id("three_stage", 0)) == 1 and not any("three_stage_pt" in i for i in ids)
    assert ids[-2:] == [se.retrain_id(PANEL[0] | {"normal_concat": [9]}, s) for s in se.RETRAIN_SEEDS]
    assert se.searched_genotypes(found, "three_stage_pt", 1) == [PANEL[0] | {"normal_concat": [9]}]
    assert se.searched_genotypes(found, "three_stage", 1) == [PANEL[3]]


def test_capnas_shapes_v1_is_the_panel_genotype_it_is_named_after():
    from capnas_tf.search_space.genotypes import CAPNAS_SHAPES_V1

    genotype = json.loads(CAPNAS_SHAPES_V1.to_json())
    assert se.genotype_key(genotype) == "2ac71f5f1c"
    assert genotype in se.panel_genotypes(se.Space(), 20)
