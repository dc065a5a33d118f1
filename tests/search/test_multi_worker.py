"""`--strategy=multi_worker`: two worker processes on 127.0.0.1 (TF_CONFIG each), the search of
`python -m capnas_tf.train` with the global batch split over both.

  - A after the steps equals a single-process run's on the same global batch (`--strategy=default`);
  - only the chief writes the workdir; the other worker's temporary directory is gone at the end;
  - killing a worker mid-run stops the other with a one-line error within a bounded time, and re-running
    both resumes from the chief's last checkpoint to the A of the uninterrupted run (`slow`);
  - `--mode=pipeline` retrains and exports under the strategy, the chief alone writing (`slow`).

Decoder dropout is off (`--decoder_dropout=0`): each replica draws its own masks, so with dropout no
split of a batch reproduces the single-process step. DARTS first order: the second-order estimators'
agreement over replicas is checked in test_distributed.py.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ENV.pop("TF_CONFIG", None)

# 2 epochs × 2 steps of a global batch of 8, the checkpoint of epoch 1 at step 2.
FLAGS = ["--mode=search", "--dataset=capnas_shapes", "--image_size=16", "--batch_size=8", "--search_strategy=darts",
         "--darts_order=1", "--decoder_dropout=0", "--search_epochs=2", "--warmup_epochs=0", "--steps_per_epoch=2",
         "--supernet_channels=4", "--supernet_cells=2", "--supernet_nodes=2",
         "--primitives=none,skip_connect,max_pool_3x3,sep_conv_3x3", "--log_every=1", "--search_eval_images=0",
         "--deterministic"]
SEARCH_OUTPUTS = {"alpha_heatmap.png", "alpha_history.jsonl", "checkpoints", "genotype.json", "genotype.png",
                  "tensorboard"}
TIMEOUT = 300  # per run; each takes well under a minute on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, data_dir, strategy: str) -> list:
    return [sys.executable, "-m", "capnas_tf.train", f"--workdir={workdir}", f"--data_dir={data_dir}",
            f"--strategy={strategy}", *FLAGS]


def _start_workers(workdir, data_dir, root, attempt: str, extra=()) -> tuple[list, list]:
    """Two workers of one cluster on free local ports, both given the same --workdir; each with a TMPDIR
    of its own (where a non-chief worker puts its temporary workdir). Returns (processes, log paths)."""
    ports = [_free_port(), _free_port()]
    processes, logs = [], []
    for index in range(2):
        tmp = root / f"{attempt}-tmp{index}"
        tmp.mkdir()
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        log = root / f"{attempt}-worker{index}.log"
        with open(log, "w") as out:
            processes.append(subprocess.Popen(
                [*_command(workdir, data_dir, "multi_worker"), *extra], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, env={**ENV, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(tmp)}))
        logs.append(log)
    return processes, logs


def _wait(processes, logs, timeout=TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    try:
        for process, log in zip(processes, logs):
            process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, f"{log}:\n{log.read_text()[-4000:]}"


def _history(workdir) -> list:
    with open(os.path.join(workdir, "search", "alpha_history.jsonl")) as f:
        return [json.loads(line) for line in f]


def _files(directory) -> list:
    return sorted(os.path.relpath(os.path.join(d, name), directory)
                  for d, _, names in os.walk(directory) for name in names)


def _wait_for_file(path, process, timeout=TIMEOUT) -> None:
    """Returns once `path` exists, or `process` has ended (its exit status is checked by `_wait`)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process baseline and the uninterrupted two-worker search, side by side: the workers start
    once the baseline has written its vocab.txt, which it does after building the TFDS dataset, so they read
    that dataset rather than race to build it."""
    root = tmp_path_factory.mktemp("multi_worker")
    data_dir = root / "tfds"
    single, single_log = root / "single", root / "single.log"
    with open(single_log, "w") as out:
        baseline = subprocess.Popen(_command(single, data_dir, "default"), env=ENV, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
    _wait_for_file(single / "vocab.txt", baseline)
    workdir = root / "workdir"
    processes, logs = _start_workers(workdir, data_dir, root, "uninterrupted")
    _wait([baseline, *processes], [single_log, *logs])
    return {"root": root, "data_dir": data_dir, "single": single, "workdir": workdir, "logs": logs}


@pytest.mark.slow  # a minute of processes or tracing; CI runs it after the default suite (.ci/run)
def test_two_workers_search_as_one_process_does_and_only_the_chief_writes(runs):
    single, multi = _history(runs["single"]), _history(runs["workdir"])
    assert [(h["epoch"], h["step"]) for h in multi] == [(1, 2), (2, 4)] == [(h["epoch"], h["step"]) for h in single]
    for s, m in zip(single, multi):
        for key in ("alpha_normal", "alpha_reduce"):
            expected, got = np.asarray(s[key]), np.asarray(m[key])
            # The replicas' sums are all-reduced in another order than one device sums the batch.
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5 * np.abs(expected).max(),
                                       err_msg=f"{key} after step {s['step']}")
        assert m["genotype"] == s["genotype"]

    chief_log, worker_log = (log.read_text() for log in runs["logs"])
    assert "2 replica(s)" in chief_log and "this worker writes" not in chief_log
    assert "this worker writes" in worker_log
    # The workdir holds one run's outputs, written once: the chief's.
    workdir = runs["workdir"]
    assert set(os.listdir(workdir / "search")) == SEARCH_OUTPUTS
    assert set(os.listdir(workdir)) == {"search", "vocab.txt"}
    assert sorted(os.listdir(workdir / "search" / "checkpoints")) == sorted(
        ["checkpoint"] + [f"ckpt-{n}.{ext}" for n in (2, 4) for ext in ("index", "data-00000-of-00001")])
    assert len(os.listdir(workdir / "search" / "tensorboard")) == 1
    # The other worker wrote (and saved its checkpoints) to a temporary directory that is gone.
    assert _files(runs["root"] / "uninterrupted-tmp1") == [] and _files(runs["root"] / "uninterrupted-tmp0") == []


def _kill_after_checkpoint(processes, workdir, victim: int, timeout=TIMEOUT) -> float:
    """SIGKILLs worker `victim` once the chief's checkpoint of step 2 is listed; returns when."""
    state = os.path.join(workdir, "search", "checkpoints", "checkpoint")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        if os.path.exists(state) and "ckpt-2" in open(state).read():
            processes[victim].send_signal(signal.SIGKILL)
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError("the run ended (or timed out) before the checkpoint of step 2")


@pytest.mark.slow  # two more two-worker runs: ~1.5 minutes on 2 cores
def test_a_killed_worker_stops_the_other_and_a_rerun_resumes_from_the_chiefs_checkpoint(runs):
    root, workdir = runs["root"], runs["root"] / "killed"
    processes, logs = _start_workers(workdir, runs["data_dir"], root, "killed")
    try:
        killed_at = _kill_after_checkpoint(processes, workdir, victim=1)
        chief = processes[0]
        chief.wait(timeout=120)  # the coordination service misses the worker's heartbeats within seconds
        stopped_after = time.monotonic() - killed_at
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    chief_log = logs[0].read_text()
    assert chief.returncode == 1, chief_log[-4000:]
    assert stopped_after < 60, stopped_after
    error = [line for line in chief_log.splitlines() if line.startswith("Error: ")]
    assert error and "a worker of this multi-worker run stopped" in error[0], chief_log[-4000:]
    assert "Restart every worker" in error[0] and "Traceback" not in chief_log

    processes, logs = _start_workers(workdir, runs["data_dir"], root, "resumed")
    _wait(processes, logs)
    chief_log, worker_log = (log.read_text() for log in logs)
    assert f"Resuming from {workdir}/search/checkpoints/ckpt-2 at step 2" in chief_log
    assert "Resuming from" in worker_log and "ckpt-2 at step 2" in worker_log  # the chief's, copied
    # Both runs with --deterministic: the resumed A is the uninterrupted run's, to the last bit.
    assert _history(workdir) == _history(runs["workdir"])
    assert _files(root / "resumed-tmp0") == [] and _files(root / "resumed-tmp1") == []


@pytest.mark.slow  # a search and two tiny retrains with exports, on two workers: ~2 minutes on 2 cores
def test_a_two_worker_pipeline_retrains_and_exports_from_the_chief_only(runs):
    root, workdir = runs["root"], runs["root"] / "pipeline"
    retrain = ["--mode=pipeline", "--retrain_epochs=2", "--retrain_steps_per_epoch=2", "--retrain_batch_size=8",
               "--retrain_channels=4", "--retrain_cells=2", "--max_eval_images=16", "--final_metrics=BLEU,CIDEr",
               "--noblind_baseline"]
    processes, logs = _start_workers(workdir, runs["data_dir"], root, "pipeline", extra=retrain)
    _wait(processes, logs)
    assert set(os.listdir(workdir)) == {"search", "retrain", "export", "vocab.txt"}
    with open(workdir / "retrain" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["best_epoch"] in (1, 2) and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert os.path.isfile(workdir / "retrain" / "captioner.keras")
    assert os.path.isfile(workdir / "export" / "saved_model" / "1" / "saved_model.pb")
    assert os.path.isfile(workdir / "export" / "captioner.onnx")
    assert "2 replica(s)" in logs[0].read_text()
    assert _files(root / "pipeline-tmp0") == [] and _files(root / "pipeline-tmp1") == []
