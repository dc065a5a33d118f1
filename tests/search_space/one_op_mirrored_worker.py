"""The tf.distribute half of `test_one_op_per_edge.py`'s MirroredStrategy check, run in a fresh process
(`python -m tests.search_space.one_op_mirrored_worker`): it sets up two logical CPUs before TensorFlow
starts, and a MirroredStrategy whose collectives have run can abort those of a later one in the same
process (BUILD_NOTES.md), so the main test process never creates one.

One GDAS-style step of the supernet computing one operation per edge (`tf.switch_case` on the sampled
index, every replica drawing the same path from the same seed) inside `tf.function`: the loss, the
all-reduced gradients of E and of A, and the BatchNorm moving statistics after the step, once on one
device and once under MirroredStrategy over /cpu:0 and /cpu:1 with the global batch split in two. Prints
one JSON object {"comparisons": {name: {"single": value, "replicas": [value on replica 0, on replica 1]}},
"initial_moving_statistics": [the statistics before the step]}.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from capnas_tf.distribute import all_reduce_sum  # noqa: E402
from capnas_tf.search_space.relaxations import relax_architecture  # noqa: E402
from capnas_tf.search_space.supernet import SupernetEncoder  # noqa: E402
from tests.search_space.tiny_space import ONE_NODE, images  # noqa: E402

BATCH = 4
PATH_SEED = (5, 9)


def built_supernet() -> SupernetEncoder:
    model = SupernetEncoder(**ONE_NODE)
    model.build((None, 16, 16, 3))
    return model


def step_values(model: SupernetEncoder, x: tf.Tensor, global_batch: int) -> dict:
    """One replica's part of a GDAS step on the one-operation path: L = Σ_local ‖pooled‖² / B_global,
    its gradients w.r.t. E and A summed over the replicas, and the moving statistics after it."""
    A = [tf.convert_to_tensor(a) for a in model.arch_variables]
    with tf.GradientTape() as tape:
        tape.watch(A)
        path = relax_architecture("gumbel", A, seed=tf.constant(PATH_SEED))  # the same on every replica
        _, pooled = model(x, training=True, op_weights=path, one_op_per_edge=True)
        loss = tf.reduce_sum(pooled ** 2) / global_batch
    grads = all_reduce_sum([tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                            for g, v in zip(tape.gradient(loss, model.trainable_variables + A),
                                            model.trainable_variables + A)])
    moving = [tf.convert_to_tensor(v) for v in model.non_trainable_variables if "moving" in v.path]
    return {"loss": all_reduce_sum([loss])[0], "grad_E": grads[:-2], "grad_A": grads[-2:],
            "moving_statistics": moving, "path": [tf.argmax(w, axis=-1) for w in path]}


def to_json(value):
    return tf.nest.map_structure(lambda t: np.asarray(t).tolist(), value)


def main() -> None:
    x = images(batch=BATCH)
    dist = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single = built_supernet()
    with dist.scope():
        replicated = built_supernet()
    for target, source in zip(replicated.variables, single.variables):  # the same E, A and statistics
        target.assign(source.value)
    initial = [v.numpy().tolist() for v in single.non_trainable_variables if "moving" in v.path]
    expected = tf.function(lambda x: step_values(single, x, BATCH))(x)

    def shard(ctx):
        return tf.split(x, ctx.num_replicas_in_sync)[ctx.replica_id_in_sync_group]

    got = dist.run(tf.function(lambda x: step_values(replicated, x, BATCH)),
                   args=(dist.experimental_distribute_values_from_function(shard),))
    replicas = [tf.nest.map_structure(lambda t: dist.experimental_local_results(t)[r], got)
                for r in range(dist.num_replicas_in_sync)]
    results = {name: {"single": to_json(expected[name]), "replicas": [to_json(v[name]) for v in replicas]}
               for name in expected}
    print(json.dumps({"comparisons": results, "initial_moving_statistics": initial}))


if __name__ == "__main__":
    main()
