"""benchmarks/search_efficacy.py, its pure parts: mean ± std, random search's choice, resume-skip, budget
check, the rendered table and plot. No search or retrain runs here (the benchmark's --quick does that)."""
import dataclasses
import importlib.util
import math
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "search_efficacy.py")
_spec = importlib.util.spec_from_file_location("search_efficacy", _PATH)
se = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = se  # dataclasses look their module up there
_spec.loader.exec_module(se)

BUDGET = dataclasses.replace(se.QUICK, search_steps_per_epoch=2, retrain_steps_per_epoch=3)


def _record(method, seed, *, arch=None, cider=0.5, val=0.4, search_s=60.0, retrain_s=30.0, status="ok"):
    spec = se.RunSpec(method, seed, arch)
    record = {"run_id": spec.run_id, "method": method, "seed": seed, "arch": arch, "status": status,
              "budget": BUDGET.fingerprint(), "finished_at": "2026-11-23 15:00", "load_average_1min": 2.0}
    if status != "ok":
        return dict(record, error="NonFiniteLossError: Stage III: stage3/val_loss is nan at step 3")
    scores = {"CIDEr": cider, "BLEU-4": cider / 10}
    return dict(record, search_time_s=search_s, search_cpu_s=2 * search_s, retrain_time_s=retrain_s,
                retrain_cpu_s=2 * retrain_s, encoder_params=1000 + seed, best_validation_CIDEr=val,
                scores={"test": scores, "test_novel": dict(scores, CIDEr=cider - 0.1)},
                baseline={"test": {"CIDEr": 0.3}, "test_novel": {"CIDEr": 0.35}},
                genotype={"normal": [["skip_connect", 0], ["sep_conv_3x3", 1]],
                          "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]]})


RECORDS = [
    _record("three_stage", 0, cider=1.0), _record("three_stage", 1, cider=2.0), _record("three_stage", 2, cider=3.0),
    _record("darts", 0, status="failed"), _record("darts", 1, cider=0.7),
    # seed 0: arch 1 has the best validation CIDEr but not the best test CIDEr; seed 1: arch 0 wins
    _record("random", 0, arch=0, cider=0.9, val=0.1, retrain_s=10.0),
    _record("random", 0, arch=1, cider=0.2, val=0.8, retrain_s=20.0),
    _record("random", 1, arch=0, cider=0.6, val=0.5, retrain_s=40.0),
    _record("random", 1, arch=1, cider=0.4, val=0.5, retrain_s=50.0),
]


def test_mean_std_is_the_sample_standard_deviation():
    mean, std, n = se.mean_std([1.0, 2.0, 3.0])
    assert (mean, std, n) == (2.0, 1.0, 3)
    mean, std, n = se.mean_std([5.0])
    assert mean == 5.0 and math.isnan(std) and n == 1
    assert se.mean_std([])[2] == 0 and math.isnan(se.mean_std([])[0])
    assert se.fmt((2.0, 1.0, 3)) == "2.000 ± 1.000"
    assert se.fmt((5.0, math.nan, 1)) == "5.000"
    assert se.fmt((math.nan, math.nan, 0)) == "–"


def test_aggregate_rows_per_method_with_failures_counted():
    rows = {r["method"]: r for r in se.aggregate(RECORDS, ["three_stage", "darts"])}
    assert list(rows) == ["three_stage", "darts", "random", "random_search"]
    assert rows["three_stage"]["test_CIDEr"] == (2.0, 1.0, 3)
    assert rows["three_stage"]["search_time_s"] == (60.0, 0.0, 3)
    assert (rows["darts"]["runs"], rows["darts"]["failed"]) == (1, 1)
    assert rows["random"]["runs"] == 4
    assert rows["random"]["test_CIDEr"][0] == pytest.approx((0.9 + 0.2 + 0.6 + 0.4) / 4)


def test_random_search_picks_by_validation_and_pays_for_all_k_retrains():
    picks = se.random_search_summaries(RECORDS)
    assert [p["seed"] for p in picks] == [0, 1]
    assert [p["test_CIDEr"] for p in picks] == [0.2, 0.6]  # seed 0: arch 1 (val 0.8); seed 1: tie → arch 0
    assert [p["search_time_s"] for p in picks] == [30.0, 90.0]
    assert [p["k"] for p in picks] == [2, 2]


def test_finished_runs_are_skipped_on_resume_and_failed_ones_only_on_request(tmp_path):
    workdir = str(tmp_path)
    runs = se.plan_runs(["three_stage", "darts"], seeds=2, random_archs=2)
    assert [r.run_id for r in runs[:4]] == ["three_stage-seed0", "darts-seed0", "random-seed0-arch0",
                                           "random-seed0-arch1"]
    for record in (_record("three_stage", 0), _record("darts", 0, status="failed"), _record("random", 0, arch=1)):
        se.save_record(workdir, record)
    records = se.load_records(workdir)
    assert sorted(records) == ["darts-seed0", "random-seed0-arch1", "three_stage-seed0"]
    pending = [r.run_id for r in se.pending_runs(runs, records)]
    assert pending == ["random-seed0-arch0", "three_stage-seed1", "darts-seed1", "random-seed1-arch0",
                       "random-seed1-arch1"]
    retry = [r.run_id for r in se.pending_runs(runs, records, retry_failed=True)]
    assert retry == ["darts-seed0"] + pending[:1] + pending[1:]


def test_a_workdir_of_another_budget_is_refused(tmp_path):
    se.save_record(str(tmp_path), _record("three_stage", 0))
    records = se.load_records(str(tmp_path))
    se.check_budget(records, BUDGET, str(tmp_path))  # same budget: fine
    with pytest.raises(ValueError, match=r"another budget \(differs in \['retrain_epochs'\]\)"):
        se.check_budget(records, dataclasses.replace(BUDGET, retrain_epochs=9), str(tmp_path))


def test_report_options_are_left_out_of_the_quoted_command():
    argv = ["--quick", "--report_only", "--reading", "r.txt", "--cost_note=about 5 h", "--seeds=2"]
    assert se.run_arguments(argv) == ["--quick", "--seeds=2"]


def test_report_states_mode_command_and_table(tmp_path):
    rows = se.aggregate(RECORDS, ["three_stage", "darts"])
    md = se.render_markdown(rows, RECORDS, budget=BUDGET, mode="quick", command="python benchmarks/x.py --quick",
                            seeds=3, random_archs=2, strategies=["three_stage", "darts"], missing=["gdas"],
                            machine="test machine", wall_time_s=600.0, cost_note=None)
    assert "QUICK MODE" in md and "python benchmarks/x.py --quick" in md and "`gdas`" in md
    assert "| `three_stage` | 3 | 2.000 ± 1.000 |" in md
    assert "| `darts` | 1 (+1 failed) |" in md
    # 2.0 vs 0.525 (stds 1.0 and 0.29): above; darts has one run: too few to tell
    assert "`three_stage` vs random architectures, test CIDEr: 2.000 vs 0.525 (difference +1.475): above it" in md
    assert "`darts` vs random architectures, test CIDEr: 0.700 vs 0.525 (difference +0.175); n = 1 vs 4 is too few" in md
    path = str(tmp_path / "results.png")
    se.plot(rows, RECORDS, ["three_stage", "darts"], path, title="test")
    assert os.path.getsize(path) > 10_000


def test_quick_and_full_modes_write_to_their_own_documents():
    quick, full = se.parse_args(["--quick"]), se.parse_args([])
    assert (quick.out_md, quick.out_png) == ("docs/results_quick.md", "docs/results_quick.png")
    assert (full.out_md, full.out_png) == ("docs/results.md", "docs/results.png")
    assert se.parse_args(["--out_md=x.md"]).out_md == "x.md"
