"""The tf.distribute half of `test_distributed.py`'s MirroredStrategy checks, run in a fresh process
(`python -m tests.search.mirrored_worker`): it sets up two logical CPUs before TensorFlow starts, and a
MirroredStrategy whose collectives have run can abort the collectives of a later one in the same
process (BUILD_NOTES.md), so the main test process never creates one.

It computes each quantity twice on the same global batch — once on one device, once under
MirroredStrategy over /cpu:0 and /cpu:1 with the batch split in two — and prints one JSON object
{"comparisons": {name: {"single": value, "replicas": [value on replica 0, value on replica 1]}},
 "xla_error": the message with which the loop refuses `--xla` over two replicas}; the test compares.

  replica_sum/*           closed forms: a replica-sum inside one tape, and the unrolled steps of nested
                          tapes (one and two levels) with gradients all-reduced in between
  three_stage/exact       ∇_A L(W'; D_val) through E', F', W' (ThreeStageStrategy.hypergradient)
  three_stage/finite_difference, three_stage/exact_straight_through (the other Stage II loss)
  darts/exact, darts/finite_difference   the second-order DARTS hypergradient on captions
  step/*                  two whole search steps (A, then E, F, W): the second's metrics and A after it
  batch_norm/*            the search space's BatchNorm in training mode (statistics of the global batch)
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from capnas_tf.config import SearchConfig  # noqa: E402
from capnas_tf.search import hypergradient as hg  # noqa: E402
from capnas_tf.decoders.losses import caption_loss  # noqa: E402
from capnas_tf.search.captioning import SearchModels, supernet_logits  # noqa: E402
from capnas_tf.search.loop import make_step_function  # noqa: E402
from capnas_tf.search.stateless import bind, values_of  # noqa: E402
from capnas_tf.distribute import all_reduce_sum  # noqa: E402
from capnas_tf.search.strategies import ThreeStageStrategy  # noqa: E402
from tests.search.toy_models import toy_search_models  # noqa: E402

L, VOCAB, BATCH = 8, 12, 4
START_ID, END_ID = 1, 2


def synthetic_batches(seed: int = 0) -> dict:
    """One global batch of each stream: random 16×16 images, captions `<start> w… <end> <pad>…` of
    different lengths (so the token counts of the two replicas' shards differ)."""
    rng = np.random.default_rng(seed)

    def captions():
        tokens = np.zeros([BATCH, L], np.int32)
        for i, n in enumerate(rng.integers(1, L - 1, BATCH)):
            tokens[i, 0], tokens[i, 1:n + 1], tokens[i, n + 1] = START_ID, rng.integers(3, VOCAB, n), END_ID
        return tf.constant(tokens)

    image = lambda: tf.constant(rng.uniform(size=[BATCH, 16, 16, 3]).astype(np.float32))  # noqa: E731
    return {"train": {"image": image(), "tokens": captions()}, "unlabeled": {"image": image()},
            "val": {"image": image(), "tokens": captions()}}


def split_over_replicas(dist: tf.distribute.Strategy, batches: dict):
    """Replica r gets rows [r·B/N, (r+1)·B/N) of every tensor: the same global batch as one device."""
    def shard(ctx):
        n, r = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
        return tf.nest.map_structure(lambda t: tf.split(t, n)[r], batches)
    return dist.experimental_distribute_values_from_function(shard)


def to_json(value):
    return tf.nest.map_structure(lambda t: np.asarray(t).tolist(), value)


# -- closed forms ---------------------------------------------------------------------------------
# Replica r holds scalars x_r, y_r, z_r; X, Y, Z are their sums. Every function returns the all-reduced
# ∂/∂a of Σ_r f_r, which must equal the closed form on every replica.
X_R, Y_R, Z_R = [1.0, 2.0], [3.0, 5.0], [0.5, 1.5]
ETA1, ETA2, A0, W0, V0 = 0.1, 0.2, 0.7, 1.3, 0.4


def _local(values):
    return tf.gather(values, tf.distribute.get_replica_context().replica_id_in_sync_group)


def one_replica_sum():
    """f_r = S²·x_r with S = Σ_r a·x_r, so Σ_r f_r = a²X³."""
    a, x = tf.constant(A0), _local(X_R)
    with tf.GradientTape() as tape:
        tape.watch(a)
        S = all_reduce_sum([a * x])[0]
        f = S * S * x
    return all_reduce_sum([tape.gradient(f, a)])[0]


def one_unrolled_step():
    """w' = w − η₁ Σ_r ∂_w(a·w·x_r) = w − η₁aX;  Σ_r f_r = w'²Y."""
    a, w, x, y = tf.constant(A0), tf.constant(W0), _local(X_R), _local(Y_R)
    with tf.GradientTape() as tape_a:
        tape_a.watch(a)
        with tf.GradientTape() as tape_w:
            tape_w.watch(w)
            inner = a * w * x
        w1 = w - ETA1 * all_reduce_sum([tape_w.gradient(inner, w)])[0]
        f = w1 * w1 * y
    return all_reduce_sum([tape_a.gradient(f, a)])[0]


def two_unrolled_steps():
    """w' as above, v' = v − η₂ Σ_r ∂_v(v·w'·z_r) = v − η₂w'Z;  Σ_r f_r = v'²Y."""
    a, w, v = tf.constant(A0), tf.constant(W0), tf.constant(V0)
    x, y, z = _local(X_R), _local(Y_R), _local(Z_R)
    with tf.GradientTape() as tape_a:
        tape_a.watch(a)
        with tf.GradientTape() as tape_w:
            tape_w.watch(w)
            inner_w = a * w * x
        w1 = w - ETA1 * all_reduce_sum([tape_w.gradient(inner_w, w)])[0]
        with tf.GradientTape() as tape_v:
            tape_v.watch(v)
            inner_v = v * w1 * z
        v1 = v - ETA2 * all_reduce_sum([tape_v.gradient(inner_v, v)])[0]
        f = v1 * v1 * y
    return all_reduce_sum([tape_a.gradient(f, a)])[0]


def closed_forms() -> dict:
    X, Y, Z = sum(X_R), sum(Y_R), sum(Z_R)
    w1 = W0 - ETA1 * A0 * X
    v1 = V0 - ETA2 * w1 * Z
    return {"replica_sum/one_tape": 2 * A0 * X ** 3,
            "replica_sum/one_unrolled_step": 2 * w1 * (-ETA1 * X) * Y,
            "replica_sum/two_unrolled_steps": 2 * v1 * (-ETA2 * Z) * (-ETA1 * X) * Y}


# -- the search -----------------------------------------------------------------------------------

def darts_hypergradient(m: SearchModels, batches: dict, method: str):
    """Second-order DARTS on the supernet captioner E (architecture A), F of `m`."""

    def loss_on(batch):
        def loss(w, A):
            with bind((m.E, w[:len(m.E)]), (m.F, w[len(m.E):])):
                logits = supernet_logits(m, batch["image"], batch["tokens"][:, :-1], A)
            return caption_loss(logits, batch["tokens"])
        return loss

    grad_A, _ = hg.darts_hypergradient(loss_on(batches["train"]), loss_on(batches["val"]), values_of(m.A),
                                       values_of(m.E) + values_of(m.F), 0.1, order=2, method=method,
                                       reduce_gradients=all_reduce_sum)
    return grad_A


def replica_values(dist: tf.distribute.Strategy, value) -> list:
    """[value on replica r for each r] of a (nested) result of `dist.run`."""
    return [to_json(tf.nest.map_structure(lambda v: dist.experimental_local_results(v)[r], value))
            for r in range(dist.num_replicas_in_sync)]


def search_quantities(single_models, replicated_models, dist, batches) -> dict:
    """name -> (single-device value, per-replica values) of the hypergradients and of one search step.
    `replicated_models` were built under `dist.scope()`, with the same initial weights."""
    dist_batches = split_over_replicas(dist, batches)

    def strategies(**config):
        config = SearchConfig(**config)
        single = ThreeStageStrategy(single_models, config, max_caption_len=L)
        with dist.scope():
            return single, ThreeStageStrategy(replicated_models, config, max_caption_len=L)

    out = {}
    for name, config in (("three_stage/exact", dict(hypergradient="exact")),
                         ("three_stage/finite_difference", dict(hypergradient="finite_difference")),
                         ("three_stage/exact_straight_through", dict(hypergradient="exact",
                                                                      stage2="straight_through"))):
        single, replicated = strategies(**config)
        out[name] = (to_json(tf.function(lambda b: single.hypergradient(b).grad_A)(batches)),
                     replica_values(dist, dist.run(tf.function(lambda b: replicated.hypergradient(b).grad_A),
                                                   args=(dist_batches,))))
    for mode in ("exact", "finite_difference"):
        out[f"darts/{mode}"] = (
            to_json(tf.function(lambda b: darts_hypergradient(single_models, b, mode))(batches)),
            replica_values(dist, dist.run(tf.function(lambda b: darts_hypergradient(replicated_models, b, mode)),
                                          args=(dist_batches,))))

    # Whole steps as the loop runs them: A, then E, F on D_tr and W on the pseudo-captions; two, so that the
    # second's metrics include the cosine of its ∇A with the first's. Last, because they update the models.
    single, replicated = strategies(hypergradient="exact")
    single_step = make_step_function(single, tf.distribute.get_strategy(), update_architecture=True,
                                     jit_compile=False)
    dist_step = make_step_function(replicated, dist, update_architecture=True, jit_compile=False)
    single_step(batches), dist_step(dist_batches)
    single_metrics, dist_metrics = single_step(batches), dist_step(dist_batches)
    for key in sorted(single_metrics):  # the loop's metrics are already reduced over replicas
        out[f"step/{key}"] = (to_json(single_metrics[key]), [to_json(dist_metrics[key])])
    out["step/A_after"] = (to_json(single.A_values()),
                           replica_values(dist, dist.run(tf.function(replicated.A_values))))
    return out


def batch_norm_quantities(dist) -> dict:
    """name -> (single-device value, per-replica values) of the search space's BatchNorm in training mode on
    one global batch, each replica holding half of it: the output and the input gradient (gathered over the
    replicas), the gradients of γ and β (all-reduced), a second derivative (∂/∂γ of ‖∂L/∂x‖²), and the
    moving statistics after the step. Over replicas the batch statistics are all-reduced, so all equal the
    one-device values."""
    from capnas_tf.search_space.ops import batch_norm

    rng = np.random.default_rng(1)
    batch = {"x": tf.constant(rng.normal(1.0, 2.0, size=[BATCH, 4, 4, 3]).astype(np.float32)),
             "w": tf.constant(rng.normal(size=[BATCH, 4, 4, 3]).astype(np.float32))}

    def layer():
        bn = batch_norm(True, "float32")
        bn.build(batch["x"].shape)
        bn.gamma.assign([0.5, 1.0, 2.0])
        return bn

    def values(bn, x, w, gather, reduce):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = bn(x, training=True)
                loss = tf.reduce_sum(tf.sin(y) * w)  # this replica's part of the global loss
            grad_x, grad_gamma, grad_beta = inner.gradient(loss, [x, bn.gamma, bn.beta])
            curvature = tf.reduce_sum(tf.square(grad_x))  # this replica's part
        second = outer.gradient(curvature, bn.gamma)
        return {"output": gather(y), "grad_x": gather(grad_x), "grad_gamma": reduce(grad_gamma),
                "grad_beta": reduce(grad_beta), "second": reduce(second),
                "moving_mean": tf.convert_to_tensor(bn.moving_mean),
                "moving_variance": tf.convert_to_tensor(bn.moving_variance)}

    layer_single = layer()
    expected = tf.function(lambda b: values(layer_single, b["x"], b["w"], lambda t: t, lambda t: t))(batch)
    with dist.scope():
        layer_replicated = layer()

    def gather(t):  # the replicas' rows in order (all_gather has no eager mode): each padded, then summed
        ctx = tf.distribute.get_replica_context()
        r, n = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
        rows = tf.shape(t)[0]
        padding = tf.concat([[[r * rows, (n - 1 - r) * rows]], tf.zeros([len(t.shape) - 1, 2], tf.int32)], 0)
        return all_reduce_sum([tf.pad(t, padding)])[0]

    def replica(b):
        return values(layer_replicated, b["x"], b["w"], gather, lambda t: all_reduce_sum([t])[0])

    got = dist.run(tf.function(replica), args=(split_over_replicas(dist, batch),))
    return {f"batch_norm/{name}": (to_json(expected[name]),
                                   replica_values(dist, got[name])) for name in expected}


def main(argv: list[str]) -> None:
    if "--eager" in argv:
        # Every tf.function below (the loop's step included) then runs op by op: the same code and the
        # same collectives, without the graph building and optimisation that a single call cannot repay
        # (10–15× faster here), so the default test suite can afford the check.
        tf.config.run_functions_eagerly(True)
    dist = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for name, fn in (("replica_sum/one_tape", one_replica_sum),
                     ("replica_sum/one_unrolled_step", one_unrolled_step),
                     ("replica_sum/two_unrolled_steps", two_unrolled_steps)):
        results[name] = {"single": closed_forms()[name],
                         "replicas": [float(v) for v in dist.experimental_local_results(dist.run(tf.function(fn)))]}

    single_models = toy_search_models(VOCAB, L)
    with dist.scope():
        replicated_models = toy_search_models(VOCAB, L)
    for name, (s_value, r_values) in search_quantities(single_models, replicated_models, dist,
                                                       synthetic_batches()).items():
        results[name] = {"single": s_value, "replicas": r_values}

    for name, (s_value, r_values) in batch_norm_quantities(dist).items():
        results[name] = {"single": s_value, "replicas": r_values}

    with dist.scope():
        replicated = ThreeStageStrategy(replicated_models, SearchConfig(), max_caption_len=L)
    try:  # --xla over two replicas must be refused up front, not fail inside TensorFlow
        make_step_function(replicated, dist, update_architecture=True, jit_compile=True)
        xla_error = None
    except ValueError as e:
        xla_error = str(e)
    json.dump({"comparisons": results, "xla_error": xla_error}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
