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
                                                    "measured_utc": "2026-12-02 01:05"}}
    raw.write_text(json.dumps(recorded))
    monkeypatch.setattr(ss, "run_child", lambda *a, **k: pytest.fail(f"measured again: {a[1]}"))
    ss.main(["--configs=default", "--xla=off", "--modes=plain,exact,finite_difference", "--resume",
             f"--raw_json={raw}", f"--output={doc}"])
    text = doc.read_text()
    assert "| three-stage exact | off | default | 4.000 | 4.00 |" in text
    assert "failed: timeout: still running after 9 s" in text and "2026-12-02 01:05" in text
    assert json.loads(raw.read_text()) == recorded


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
