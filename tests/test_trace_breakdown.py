"""benchmarks/trace_breakdown.py: Grappler's per-pass log summed by pass; the Python trace split by part."""
import cProfile
import importlib.util
import os
import sys

import keras
import numpy as np
import tensorflow as tf

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, _DIR)
_spec = importlib.util.spec_from_file_location("trace_breakdown", os.path.join(_DIR, "trace_breakdown.py"))
tb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tb)

# Lines as TensorFlow 2.21 writes them with TF_CPP_VMODULE=meta_optimizer=1 (first iteration, second, a tfg pass).
LOG = """\
I0000 00:00:1796636908.838921    1920 meta_optimizer.cc:973] model_pruner: Graph size after: 22948 nodes (-1869), 35436 edges (-1209), time = 1331.43ms.
I0000 00:00:1796636911.624967    1920 meta_optimizer.cc:973] tfg_optimizer{any(tfg-consolidate-attrs,tfg-toposort)}: Graph size after: 22948 nodes (0), 35436 edges (0), time = 2746.88ms.
I0000 00:00:1796636915.734473    1920 meta_optimizer.cc:973] constant_folding: Graph size after: 15042 nodes (-36), 32550 edges (-179), time = 2781.7ms.
I0000 00:00:1796636926.903112    1920 meta_optimizer.cc:973] model_pruner: Graph size after: 14469 nodes (-14), 26273 edges (-14), time = 951.105ms.
I0000 00:00:1796636936.081976    1920 meta_optimizer.cc:1092] Optimized main graph.
"""


def test_grappler_passes_are_summed_over_iterations():
    passes = tb.grappler_passes(LOG)
    assert set(passes) == {"model_pruner", "tfg_optimizer", "constant_folding"}
    np.testing.assert_allclose(passes["model_pruner"], 1.331430 + 0.951105)
    np.testing.assert_allclose(passes["constant_folding"], 2.7817)


def test_profiled_parts_attribute_a_trace_to_forward_gradients_and_optimizer():
    layer = keras.layers.Dense(3)
    layer.build((2, 4))
    optimizer = keras.optimizers.SGD(0.1)

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        optimizer.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)
        return loss

    profile = cProfile.Profile()
    profile.enable()
    tf.function(step, autograph=False).get_concrete_function(tf.TensorSpec([2, 4]))
    profile.disable()
    parts = tb.profiled_parts(profile)
    assert set(parts) == set(tb.PARTS)
    assert all(seconds > 0 for seconds in parts.values()), parts
    share = tb.keras_self_share(profile)
    assert 0.0 < share < 1.0, share  # Keras' own code is part of the trace, not all of it


def test_op_types_counts_the_graph_ops_by_type_most_frequent_first():
    def f(x):
        return tf.nn.relu(x) + tf.nn.relu(2.0 * x) + tf.nn.relu(3.0 * x)

    concrete = tf.function(f, autograph=False).get_concrete_function(tf.TensorSpec([2]))
    types = tb.op_types(concrete, top=2)
    assert list(types)[0] == "Relu" and types["Relu"] == 3
    assert len(types) == 2 and list(types.values())[1] == 2  # then one of Mul, Const, AddV2 (two each)
