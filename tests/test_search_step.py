"""The search-step benchmark's driver: what it measures in which order, and resuming a long run."""
import importlib.util
import json
import os
import sys

import pytest

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
_spec = importlib.util.spec_from_file_location("search_step", os.path.join(_DIR, "search_step.py"))
ss = importlib.util.module_from_spec(_spec)
sys.modules["search_step"] = ss  # its dataclasses look their module up there
_spec.loader.exec_module(ss)


def _plan(argv):
    args = ss.parse_args(argv)
    settings = [ss.Setting("default", 8, 5, 4), ss.Setting("large", 16, 10, 4)]
    return [(m, x, s.name) for m, x, s in ss.planned_combinations(args, args.modes.split(","), [False, True], settings)]


def test_full_run_measures_the_named_steps_group_by_group_before_the_levers():
    plan = _plan([])
    core = [p for p in plan if not p[0].endswith(ss.LEVERS)]
    # The five steps the targets name and the two forward-over-reverse steps, XLA off, at default and large;
    # with XLA on only the five named steps.
    assert len(core) == 7 * 2 + 5 * 2
    assert plan[: len(core)] == core  # every lever variant after every named step
    order = []
    for _, x, c in core:
        if (x, c) not in order:
            order.append((x, c))
    assert order == [(False, "default"), (False, "large"), (True, "default"), (True, "large")]
    groups = [[p for p in core if (p[1], p[2]) == key] for key in order]
    assert [len(g) for g in groups] == [7, 7, 5, 5]
    assert all(g[0][0] == "plain" for g in groups)  # each group's ratios come from neighbours in time
    assert sum(len(g) for g in groups) == len(core)  # each group measured in one stretch
    assert [p for g in groups for p in g] == core
    assert {m for m, x, _ in core if x} == set(ss.CORE_MODES)
    levers = plan[len(core):]
    assert levers and all(not x and c == "default" for _, x, c in levers)  # XLA off, default config


def test_quick_run_plan():
    plan = _plan(["--quick"])
    assert [p for p in plan if p[1]] == [("exact", True, "default")]
    assert {m for m, _, c in plan if c == "large"} == {"plain", "exact", "finite_difference"}


def test_resume_measures_nothing_already_recorded_and_renders_every_row(tmp_path, monkeypatch):
    raw, doc = tmp_path / "raw.json", tmp_path / "perf.md"
    figures = {"step_s": 1.0, "peak_mb": 100.0, "trace_s": 3.0, "python_trace_s": 1.0, "first_call_s": 2.0,
               "tensor_peak_mb": 10.0, "graph_mb": 5.0, "traces": 1, "measured_utc": "2026-12-02 01:00"}
    recorded = {"plain|False|default": figures, "exact|False|default": dict(figures, step_s=4.0),
                "finite_difference|False|default": {"error": "timeout: still running after 9 s",
                                                    "measured_utc": "2026-12-02 01:05"},
                "fd_check|False|default": FD_CHECKED}
    raw.write_text(json.dumps(recorded))
    monkeypatch.setattr(ss, "run_child", lambda *a, **k: pytest.fail(f"measured again: {a[1]}"))
    monkeypatch.setattr(ss, "fd_check", lambda *a, **k: pytest.fail("checked again"))
    ss.main(["--configs=default", "--xla=off", "--modes=plain,exact,finite_difference", "--resume",
             f"--raw_json={raw}", f"--output={doc}"])
    text = doc.read_text()
    assert "| three-stage exact | off | default | 4.000 | 4.00 |" in text
    assert "failed: timeout: still running after 9 s" in text and "2026-12-02 01:05" in text
    assert ("`finite_difference` against `exact`, default (cosine at ε = 0.1, 3 capnas_shapes batches after 30 "
            "weight steps, `benchmarks/fd_accuracy.py`): three-stage (full) 0.81 (0.75–0.85), relative error 0.61"
            in text)
    assert json.loads(raw.read_text()) == recorded


FD_CHECKED = {"epsilon": 0.1, "batches": 3, "elapsed_s": 60.0, "measured_utc": "2026-12-02 01:10",
              "three_stage_full": {"cosine": 0.81, "cosine_min": 0.75, "cosine_max": 0.85, "relative_error": 0.612}}


def test_the_finite_difference_check_runs_once_per_check_config_when_finite_difference_is_measured(
        tmp_path, monkeypatch):
    raw = tmp_path / "raw.json"
    checked = []
    monkeypatch.setattr(ss, "run_child", lambda *a, **k: {"step_s": 1.0, "peak_mb": 1.0, "trace_s": 1.0,
                                                          "traces": 1})
    monkeypatch.setattr(ss, "fd_check", lambda setting, args: checked.append(setting.name) or dict(FD_CHECKED))
    ss.main(["--configs=default,large", "--xla=off", "--modes=plain", f"--raw_json={raw}", "--output="])
    assert checked == []  # finite_difference not measured: nothing to check
    ss.main(["--configs=default,large", "--xla=off", "--modes=plain,finite_difference", f"--raw_json={raw}",
             "--output="])
    assert checked == ["default"]  # --fd_check_configs' default: the large config's exact is op by op too costly
    assert json.loads(raw.read_text())["fd_check|False|default"]["three_stage_full"]["cosine"] == 0.81
    ss.main(["--configs=default", "--xla=off", "--modes=plain,finite_difference", f"--raw_json={raw}",
             "--output=", "--resume"])
    assert checked == ["default"]  # resumed: recorded, not checked again


@pytest.mark.slow  # ~4 min on 2 cores: builds capnas_shapes and computes `exact` op by op
def test_the_finite_difference_check_measures_the_cosine_with_exact_on_a_real_supernet(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # the check's child builds capnas_shapes there
    args = ss.parse_args(["--primitives=skip_connect,max_pool_3x3,sep_conv_3x3", "--batch_size=4",
                          "--fd_check_batches=2"])
    summary = ss.fd_check(ss.Setting("default", 4, 2, 2), args)
    assert "error" not in summary, summary
    assert summary["epsilon"] == 0.1 and summary["batches"] == 2
    for name in ("three_stage_full", "three_stage_paper", "darts_2nd", "hvp_stage1", "hvp_stage2", "hvp_darts"):
        figures = summary[name]
        assert -1.0 <= figures["cosine_min"] <= figures["cosine"] <= figures["cosine_max"] <= 1.0
        assert figures["relative_error"] >= 0.0
    # Stage II's product perturbs only the student W, whose loss has no kinks in W's direction that jump:
    # it agrees closely where Stage I's does not (docs/performance.md)
    assert summary["hvp_stage2"]["cosine_min"] > 0.99


def test_each_measurement_is_saved_as_it_lands(tmp_path, monkeypatch):
    raw = tmp_path / "raw.json"
    seen = []

    def child(script, flags, **kw):
        seen.append(json.loads(raw.read_text()) if raw.exists() else {})  # what an interruption would leave
        if "--mode=exact" in flags:
            raise KeyboardInterrupt
        return {"step_s": 1.0, "peak_mb": 1.0, "trace_s": 1.0, "traces": 1}

    monkeypatch.setattr(ss, "run_child", child)
    with pytest.raises(KeyboardInterrupt):
        ss.main(["--configs=default", "--xla=off", "--modes=plain,exact", f"--raw_json={raw}", "--output="])
    assert seen[0] == {} and list(json.loads(raw.read_text())) == ["plain|False|default"]


def test_a_raw_json_that_is_not_json_is_named_in_the_error(tmp_path):
    raw = tmp_path / "raw.json"
    raw.write_text("{not json")
    with pytest.raises(SystemExit, match="raw.json: not the JSON of an earlier run"):
        ss.load_results(str(raw))
