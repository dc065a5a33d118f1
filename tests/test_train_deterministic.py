"""`python -m capnas_tf.train --deterministic`: two fresh processes end with bit-identical A and genotype,
and a run killed after a checkpoint and resumed ends where the uninterrupted run does."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As a user runs it: TF_CPP_MIN_LOG_LEVEL left to the toolkit, which keeps its notices off stderr.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "PYTHONPATH": REPO}

# The exact three-stage hypergradient (the estimator whose results drifted between runs), on a supernet
# with BatchNorm, ReLU and max-pooling, 2 epochs × 4 steps, a checkpoint every 2 steps; LSTM F and W,
# which trace faster than the transformer (the drift came from the order of independent ops, not the decoder).
# Three cells of one node: a normal cell (so both halves of A follow the hypergradient) and two reduction
# cells, 6 mixed edges of 4 ops each: quicker to trace than 2 cells of 2 nodes (10 edges, both cells reductions).
SEARCH_FLAGS = ["--mode=search", "--dataset=capnas_shapes", "--image_size=16", "--batch_size=8",
                "--search_strategy=three_stage", "--hypergradient=exact", "--stage2=soft", "--search_epochs=2",
                "--warmup_epochs=0", "--steps_per_epoch=4", "--checkpoint_every=2", "--supernet_channels=4",
                "--supernet_cells=3", "--supernet_nodes=1", "--decoder=lstm", "--student_decoder=lstm",
                "--primitives=none,skip_connect,max_pool_3x3,sep_conv_3x3", "--log_every=2",
                "--search_eval_images=0", "--deterministic"]


def _command(workdir, data_dir):
    return [sys.executable, "-m", "capnas_tf.train", f"--workdir={workdir}", f"--data_dir={data_dir}",
            *SEARCH_FLAGS]


def _outputs(workdir):
    search = os.path.join(workdir, "search")
    with open(os.path.join(search, "alpha_history.jsonl"), "rb") as history, \
            open(os.path.join(search, "genotype.json"), "rb") as genotype:
        return history.read(), genotype.read()


def _kill_after_first_checkpoint(process, workdir, timeout=300):
    """SIGKILLs `process` once its first checkpoint is on disk and listed; returns whether it was killed mid-run.

    The manager writes the checkpoint's files before it lists them in the `checkpoint` state file: a kill
    between the two leaves nothing to resume from, so the kill waits for the listing."""
    directory = os.path.join(workdir, "search", "checkpoints")
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if (tf.train.latest_checkpoint(directory) or "").endswith("ckpt-2"):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    return process.returncode == -signal.SIGKILL


@pytest.mark.slow  # a minute of processes or tracing; CI runs it after the default suite (.ci/run)
def test_deterministic_search_is_bit_identical_across_processes_and_resumes(tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # Side by side (each run builds capnas_shapes in a data_dir of its own): one uninterrupted, one killed
    # once its first checkpoint is on disk, then resumed at once, beside the uninterrupted run's last steps.
    first_log, resumed_log = tmp_path / "uninterrupted.log", tmp_path / "resumed.log"
    with open(first_log, "w") as out:
        first = subprocess.Popen(_command(uninterrupted, uninterrupted / "tfds"), env=ENV, cwd=REPO, stdout=out,
                                 stderr=out)
    killed_run = subprocess.Popen(_command(interrupted, interrupted / "tfds"), env=ENV, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_after_first_checkpoint(killed_run, interrupted), "the run ended before it could be killed"
    with open(resumed_log, "w") as out:
        resumed = subprocess.Popen(_command(interrupted, interrupted / "tfds"), env=ENV, cwd=REPO, stdout=out,
                                   stderr=out)
    try:
        first.wait(timeout=600)
        resumed.wait(timeout=600)
    finally:
        for process in (first, resumed):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert first.returncode == 0, first_log.read_text()[-3000:]
    assert resumed.returncode == 0, resumed_log.read_text()[-3000:]
    assert "Resuming from" in resumed_log.read_text()
    # a notice, not an error to show
    assert "oneDNN supports DT_INT64" not in first_log.read_text() + resumed_log.read_text()

    history, genotype = _outputs(uninterrupted)
    resumed_history, resumed_genotype = _outputs(interrupted)
    assert history.count(b"\n") == 2  # A after epoch 1 and epoch 2
    assert resumed_history == history  # every value of A, to the last bit
    epochs = [json.loads(line) for line in history.splitlines()]
    for key in ("alpha_normal", "alpha_reduce"):  # A moved between the epochs, so the equality could fail
        assert epochs[1][key] != epochs[0][key], key
    assert resumed_genotype == genotype
