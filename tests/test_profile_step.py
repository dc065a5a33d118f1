"""benchmarks/profile_step.py: a real tf.profiler trace of a traced function with the library's name
scopes, read back from its XPlane, puts each op's self time under the right part and op type."""
import importlib.util
import os
import sys

import pytest
import tensorflow as tf

_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
sys.path.insert(0, _DIR)
_spec = importlib.util.spec_from_file_location("profile_step", os.path.join(_DIR, "profile_step.py"))
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)


def test_profile_attributes_op_time_to_the_step_parts_name_scopes(tmp_path):
    x = tf.random.normal((384, 384))

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.name_scope("stage1"):  # heavy: 8 chained matmuls
                y = x
                for _ in range(8):
                    y = tf.matmul(y, x) / 384.0
            with tf.name_scope("stage3"):  # light: one add of a scalar
                z = tf.reduce_sum(y) + 1.0
        return z, tape.gradient(z, x)  # the backward through stage1: "stage1 ∇"

    step(x)[1].numpy()
    # Several steps under the profiler: on a shared 2-core machine one preempted thread can stretch a
    # single op's interval by milliseconds (CI once saw stage1's 8 Muls outweigh its 8 matmuls in a
    # one-step profile); summed over steps, a stall no longer outweighs the matmuls' work.
    steps = 5
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(steps):
        step(x)[1].numpy()
    tf.profiler.experimental.stop()
    profile = ps.op_times(ps.load_xspace(str(tmp_path)))

    rows = {scope: (seconds, heavy) for scope, seconds, heavy in ps.by_scope(profile["ops"])}
    assert ps.by_scope(profile["ops"])[0][0] in ("stage1", "stage1 ∇")  # 8 matmuls forward, 16 backward
    assert rows["stage1"][1][0][0].endswith("MatMul")  # its costliest op type
    assert "stage3" in rows and rows["stage3"][0] < rows["stage1"][0]
    assert 0 < profile["wall"]["stage3"] < profile["wall"]["stage1"] <= profile["span_s"]
    forward = {t: n for (scope, t), (_, n) in profile["ops"].items() if scope == "stage1"}
    assert forward.get("MatMul", 0) + forward.get("_MklMatMul", 0) == 8 * steps  # oneDNN renames it on x86
    backward = {t for (scope, t), _ in profile["ops"].items() if scope == "stage1 ∇"}
    assert backward & {"MatMul", "_MklMatMul"}
    assert 0 < sum(s for s, _ in profile["ops"].values()) <= 2 * profile["span_s"] * os.cpu_count()
    text = ps.render(profile, steps=steps, top=5)
    assert "| stage1 |" in text and "MatMul |" in text


def test_self_time_subtracts_nested_events_on_a_thread():
    class E:  # an XPlane event's two fields self_times reads
        def __init__(self, offset, duration):
            self.offset_ps, self.duration_ps = offset, duration

    outer, inner, after = E(0, 100), E(10, 30), E(200, 5)
    got = {id(e): s for e, s in ps.self_times([after, inner, outer])}
    assert (got[id(outer)], got[id(inner)], got[id(after)]) == (70, 30, 5)


def test_union_length_counts_overlapping_intervals_once():
    assert ps.union_length([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert ps.union_length([]) == 0


def test_op_names_and_scopes():
    assert ps.split_op("hypergradient_reverse/gradient_tape/stage1/conv/Conv2D:Conv2DBackpropInput") == (
        "hypergradient_reverse/gradient_tape/stage1/conv/Conv2D", "Conv2DBackpropInput")
    assert ps.split_op("stage1/MatMul:_MklMatMul") == ("stage1/MatMul", "_MklMatMul")
    assert ps.split_op("ExecutorState::Process") is None
    assert ps.split_op("ThreadpoolListener::Record") is None
    assert ps.split_op("EagerLocalExecute: __inference_step_38") is None
    assert ps.scope_of("hypergradient_reverse/AddN_3") == "hypergradient_reverse"
    assert ps.scope_of("gradient_tape/stage1/conv/Conv2D") == "stage1 ∇"
    assert ps.scope_of("gradient_tape/gradient_tape/stage1/lstm_cell_31/mul_1") == "stage1 ∇∇"
    assert ps.scope_of("darts_val_1/AddN_5") == "darts_val"
    assert ps.scope_of("dense/MatMul") == ps.UNSCOPED
    assert ps.layer_of("fd_stage2_plus/gradient_tape/fd_stage2_plus/supernet/mixed_op_3/conv/Conv2D") == (
        "supernet/mixed_op/conv")


def test_xla_thunks_are_counted_as_the_tensorflow_ops_their_hlo_came_from(tmp_path):
    x = tf.random.normal((8, 16, 16, 8))
    k = tf.random.normal((3, 3, 8, 1))

    @tf.function(jit_compile=True, autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.name_scope("stage1"):
                y = tf.nn.max_pool2d(tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME"), 3, 1, "SAME")
            with tf.name_scope("stage3"):
                z = tf.reduce_sum(y * y)
        return tape.gradient(z, x)

    step(x).numpy()
    # The same optimised module the dump of `profile_step.py --xla=on` holds (compilation is deterministic).
    xla_ops = ps.hlo_instructions(step.experimental_get_compiler_ir(x)(stage="optimized_hlo"))
    assert xla_ops["depthwise.3"] == ("stage1/depthwise", "DepthwiseConv2dNative")  # its own metadata
    # XLA lowers MaxPoolGrad to an arg-max reduce-window that carries no metadata, feeding a scatter fusion
    # whose computation does: the one is named by its opcode, the other by the computation's op.
    assert ("", "HLO reduce-window") in xla_ops.values()
    assert [n for n, op in xla_ops.items() if op == ("gradient_tape/stage1/MaxPool2d/MaxPoolGrad", "MaxPoolGrad")
            and n.startswith("wrapped_scatter")]

    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        step(x).numpy()
    tf.profiler.experimental.stop()
    space = ps.load_xspace(str(tmp_path))
    assert ps.op_times(space)["ops"] == {}  # no TensorFlow op runs: the step is one compiled cluster
    profile = ps.op_times(space, xla_ops)

    ops = profile["ops"]
    assert {("stage1", "DepthwiseConv2dNative"), ("stage1", "MaxPool"), ("stage1 ∇", "MaxPoolGrad"),
            ("stage1 ∇", "DepthwiseConv2dNativeBackpropInput"), (ps.UNSCOPED, "HLO reduce-window")} <= set(ops)
    assert all(n % 3 == 0 for _, n in ops.values())  # each thunk once per step
    assert 0 < sum(s for s, _ in ops.values()) <= 2 * profile["span_s"] * os.cpu_count()
    assert 0 < profile["wall"]["stage1 ∇"] <= profile["span_s"]


def test_memory_at_peak_names_the_parts_whose_buffers_are_held(tmp_path):
    x = tf.random.normal((512, 512))
    w = [tf.random.normal((512, 512)) / 512**0.5 for _ in range(8)]  # constants: no gradient sums pile up

    @tf.function(autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            with tf.name_scope("stage1"):  # 8 tanh outputs of 1 MB, each kept for the backward pass
                y = x
                for w_i in w:
                    y = tf.tanh(tf.matmul(y, w_i))
            with tf.name_scope("stage3"):
                z = tf.reduce_sum(y)
        return tape.gradient(z, x)

    step(x).numpy()
    tf.profiler.experimental.start(str(tmp_path))
    step(x).numpy()
    tf.profiler.experimental.stop()
    memory = ps.memory_at_peak(ps.load_xspace(str(tmp_path)))

    held = {scope: mb for scope, (mb, _) in memory["by_part"].items()}
    # The backward frees them one by one while its gradient stays ~1 MB: the peak is where it starts.
    assert held.get("stage1", 0) >= 6.0
    assert sum(held.values()) + memory["before_mb"] == pytest.approx(memory["peak_mb"])
    assert memory["before_mb"] >= 9.0  # x and the 8 w, allocated before the profiler started
    assert "| stage1 |" in ps.render_memory(memory)
