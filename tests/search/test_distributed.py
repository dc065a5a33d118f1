"""The search under tf.distribute: with MirroredStrategy over two logical CPUs and the global batch
split between them, the hypergradients and one whole search step equal the single-device ones.

The distributed half runs in a fresh Python (tests/search/mirrored_worker.py); this file only compares.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.distribute import check_jit_compile


def _run_mirrored_worker(*args: str, timeout: int) -> dict:
    """Runs tests/search/mirrored_worker.py in a fresh Python: a MirroredStrategy whose collectives have
    run makes a later one in the same process abort (BUILD_NOTES.md), and the worker needs two logical
    CPUs configured before TensorFlow starts."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "tests.search.mirrored_worker", *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"mirrored_worker {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def _assert_replicas_equal_single_device(results: dict) -> None:
    expected_names = {"replica_sum/one_tape", "replica_sum/one_unrolled_step", "replica_sum/two_unrolled_steps",
                      "three_stage/exact", "three_stage/finite_difference",
                      "three_stage/exact_straight_through", "darts/exact",
                      "darts/finite_difference", "step/arch/hypergradient_norm", "step/stage1/grad_norm",
                      "step/stage2/grad_norm", "step/stage3/val_loss", "step/A_after",
                      "batch_norm/output", "batch_norm/grad_x", "batch_norm/grad_gamma", "batch_norm/second",
                      "batch_norm/moving_mean", "batch_norm/moving_variance"}
    assert expected_names <= set(results), sorted(expected_names - set(results))
    for name, value in results.items():
        single = [np.asarray(t, np.float64) for t in tf.nest.flatten(value["single"])]
        scale = max(float(np.abs(t).max()) for t in single)
        assert scale > 0, f"{name}: zero on one device, so the comparison would prove nothing"
        assert len(value["replicas"]) >= 1
        for r, replica in enumerate(value["replicas"]):
            got = [np.asarray(t, np.float64) for t in tf.nest.flatten(replica)]
            assert len(got) == len(single), name
            for g, s in zip(got, single):
                # Relative to the quantity's scale: the hypergradients are ~1e-6 and float32 sums
                # over two shards round differently from one sum over the batch.
                np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name}, replica {r}")


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_mirrored_hypergradient_equals_single_device_on_the_same_global_batch():
    """Under MirroredStrategy over two logical CPUs, with the global batch split between them, every
    replica's ∇_A (exact and finite-difference three-stage, soft and straight-through Stage II,
    second-order DARTS) and the metrics of the second of two whole search steps (the cosine of successive ∇A
    among them) and the updated A equal the single-device ones (BN-free toy models); so do the search space's
    BatchNorm's output, gradients, a second derivative and moving statistics, its batch statistics
    all-reduced over the replicas. Run op by op (`--eager`) to keep the default suite fast; the
    traced variant below runs the same check inside tf.function, as the search loop does."""
    results = _run_mirrored_worker("--eager", timeout=600)
    _assert_replicas_equal_single_device(results["comparisons"])
    # XLA over two replicas fails inside TensorFlow (see check_jit_compile); the loop says so first.
    assert results["xla_error"] is not None and "--xla" in results["xla_error"]
    assert "2 replicas" in results["xla_error"] and "MirroredStrategy" in results["xla_error"]


def test_xla_is_refused_over_several_replicas_and_allowed_on_one():
    class TwoReplicas:  # what check_jit_compile reads of a strategy
        num_replicas_in_sync = 2

    with pytest.raises(ValueError, match=r"--xla .* not supported over 2 replicas \(TwoReplicas\)"):
        check_jit_compile(TwoReplicas(), jit_compile=True)
    check_jit_compile(TwoReplicas(), jit_compile=False)
    check_jit_compile(tf.distribute.get_strategy(), jit_compile=True)


@pytest.mark.slow  # traces every estimator twice (one device, two replicas): ~1 minute on 2 idle cores
def test_mirrored_hypergradient_equals_single_device_inside_tf_function():
    _assert_replicas_equal_single_device(_run_mirrored_worker(timeout=1500)["comparisons"])
