"""One operation per sampled edge (`SupernetEncoder(..., one_op_per_edge=True)`): each edge computes only
the candidate its one-hot row selects, by `tf.switch_case` on the index. Checked against the
all-operations supernet under the same selection (float64, every DARTS candidate: BatchNorm, ReLU,
max-pooling, `none`), for one trace across sampled paths, and under MirroredStrategy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search.paths import uniform_path
from capnas_tf.search_space.mixed_op import selected_candidates
from capnas_tf.search_space.relaxations import relax_architecture
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.search_space.tiny_space import SMALL, TINY, images


def built(dtype="float32", **config):
    model = SupernetEncoder(**config, dtype=dtype)
    model.build((None, 16, 16, 3))
    return model


def moving_statistics(model):
    return [v for v in model.non_trainable_variables if "moving" in v.path]


def gdas_path(A, seed):
    """GDAS' straight-through sample h − sg(y) + y: forward one-hot, gradient ∂y/∂A."""
    return relax_architecture("gumbel", A, seed=tf.constant(seed))


def masked_to_selection(path):
    """The same path with its gradient kept on the selected entries only: h ⊙ w, h a constant."""
    return tuple(tf.stop_gradient(tf.cast(tf.not_equal(w, 0), w.dtype)) * w for w in path)


def loss_and_gradients(model, x, make_path, *, one_op_per_edge):
    """L = ‖pooled‖² on the path make_path(A), its gradients w.r.t. E and A (zeros where none reach),
    and the moving statistics after the pass (then restored, so that each call starts alike). The
    one-operation pass runs in tf.function (the switch as the search traces it), the all-operations
    reference eagerly (its code is the unchanged sum; eager saves a trace)."""
    before = [v.numpy() for v in moving_statistics(model)]
    A = [tf.convert_to_tensor(a) for a in model.arch_variables]

    def run(A):
        with tf.GradientTape() as tape:
            tape.watch(A)
            _, pooled = model(x, training=True, op_weights=make_path(A), one_op_per_edge=one_op_per_edge)
            loss = tf.reduce_sum(pooled ** 2)
        variables = model.trainable_variables + A
        grads = tape.gradient(loss, variables)
        return loss, [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]

    loss, grads = (tf.function(run) if one_op_per_edge else run)(A)
    after = [v.numpy() for v in moving_statistics(model)]
    for v, value in zip(moving_statistics(model), before):
        v.assign(value)
    return {"loss": loss.numpy(), "grad_E": [g.numpy() for g in grads[:-2]],
            "grad_A": [g.numpy() for g in grads[-2:]], "moving": after, "moving_before": before}


# gdas: every DARTS candidate on 3 cells of one node (normal and reduction edges); uniform: two nodes, so
# that the path leaves edges unused, with fewer candidates to keep it fast.
@pytest.mark.parametrize("path_kind, space", [("gdas", dict(TINY, num_nodes=1)),
                                              ("uniform", dict(SMALL, partial_channels=2))])
def test_one_op_path_equals_all_ops_under_the_same_one_hot_selection(path_kind, space):
    """Values, gradients of E and of A, and the selected candidates' BatchNorm statistics equal those of
    the all-operations supernet on the same path (float64); the unselected candidates' statistics stay
    put. "gdas": every edge used, ∇A through the straight-through sample; "uniform": random search's
    path, which leaves most edges unused (all-zero rows), with PC-DARTS' partial channels."""
    model = built("float64", **space)
    x = images(dtype=tf.float64)
    if path_kind == "gdas":
        make_path = lambda A: gdas_path(A, [3, 4])  # noqa: E731
    else:
        fixed = uniform_path(tf.constant([3, 4]), num_nodes=2, primitives=space["primitives"])
        assert np.any(selected_candidates(fixed[0]).numpy() == len(space["primitives"]))  # an unused edge
        make_path = lambda A: tuple(a * 0 + w for a, w in zip(A, fixed))  # noqa: E731  (a path A can see)
    one = loss_and_gradients(model, x, make_path, one_op_per_edge=True)
    every = loss_and_gradients(model, x, lambda A: masked_to_selection(make_path(A)), one_op_per_edge=False)

    np.testing.assert_allclose(one["loss"], every["loss"], rtol=1e-13)
    for got, want in zip(one["grad_E"] + one["grad_A"], every["grad_E"] + every["grad_A"]):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13 * max(1.0, np.abs(want).max()))
    assert np.abs(one["grad_A"][0]).sum() > 0 or path_kind == "uniform"  # GDAS' ∇A reaches A

    # BatchNorm: the selected candidates (and stem, preprocessing) move as in the all-operations pass;
    # the unselected ones do not run, while the all-operations pass moves them.
    unmoved = 0
    for got, want, start in zip(one["moving"], every["moving"], one["moving_before"]):
        if np.array_equal(got, start):
            unmoved += not np.array_equal(want, start)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12)
    assert unmoved > 0


def test_selected_candidates_reads_one_hot_rows_and_marks_unused_edges():
    path = gdas_path([tf.random.stateless_normal([5, 4], seed=[1, i]) for i in range(2)], [0, 1])[0]
    assert np.array_equal(selected_candidates(path).numpy(), np.argmax(path.numpy(), axis=-1))
    rows = tf.constant([[0.0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert selected_candidates(rows).numpy().tolist() == [2, 4, 0]  # 4 = K: the edge is not used


def test_one_trace_serves_every_sampled_path():
    """A tf.function step called with different sampled paths traces once, and its graph holds the
    switch (so the paths really select different computations rather than masking one)."""
    model = built(**SMALL)
    x = images()
    traces = []

    @tf.function
    def step(seed):
        traces.append(1)
        A = [tf.convert_to_tensor(a) for a in model.arch_variables]
        with tf.GradientTape() as tape:
            tape.watch(A)
            path = relax_architecture("gumbel", A, seed=seed)
            _, pooled = model(x, training=True, op_weights=path, one_op_per_edge=True)
            loss = tf.reduce_sum(pooled ** 2)
        return loss, tape.gradient(loss, A), [selected_candidates(w) for w in path]

    results = [step(tf.constant([7, s])) for s in range(4)]
    assert len(traces) == 1
    paths = {tuple(np.concatenate([c.numpy() for c in r[2]])) for r in results}
    assert len(paths) == 4  # four different architectures …
    assert len({float(r[0]) for r in results}) == 4  # … four different losses
    graph_ops = {op.type for op in step.get_concrete_function(tf.constant([7, 0])).graph.get_operations()}
    assert graph_ops & {"Case", "StatelessCase"}


@pytest.mark.slow  # a minute of processes or tracing; CI runs it after the default suite (.ci/run)
def test_one_op_path_under_mirrored_strategy_equals_one_device():
    """Over two logical CPUs (a fresh Python: tests/search_space/one_op_mirrored_worker.py), with the global
    batch split in two, the loss, the gradients of E and A and the moving statistics of every candidate
    the path ran equal the single-device values. (Over replicas the edges compute every candidate, masked:
    BatchNorm's all-reduce cannot sit inside tf.switch_case; so the unselected candidates' statistics
    move there and are not compared.)"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "tests.search_space.one_op_mirrored_worker"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    results, initial = out["comparisons"], out["initial_moving_statistics"]
    assert set(results) == {"loss", "grad_E", "grad_A", "moving_statistics", "path"}
    def arrays(v):  # a list of tensors (gradients, statistics, the path's two cells) or one scalar
        return [np.asarray(t, np.float64) for t in v] if isinstance(v, list) else [np.asarray(v, np.float64)]

    for name, value in results.items():
        single = arrays(value["single"])
        assert len(value["replicas"]) == 2
        for replica in value["replicas"]:
            got = arrays(replica)
            assert len(got) == len(single), name
            moved = 0
            for i, (g, s) in enumerate(zip(got, single)):
                if name == "moving_statistics":
                    start = np.asarray(initial[i])
                    if np.array_equal(s, start):
                        continue  # an unselected candidate's: untouched on one device
                    moved += 1
                scale = max(1.0, float(np.abs(s).max()))
                np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
            if name == "moving_statistics":
                assert moved > 0
    assert float(np.abs(np.asarray(results["grad_A"]["single"][0])).sum()) > 0
