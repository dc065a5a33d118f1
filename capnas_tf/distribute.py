"""Choosing a tf.distribute strategy by name (`--strategy`)."""
from __future__ import annotations

import tensorflow as tf


def _default():
    return tf.distribute.get_strategy()


def _mirrored():
    return tf.distribute.MirroredStrategy()


def _multi_worker():
    # Reads the cluster from TF_CONFIG, as every multi-worker TensorFlow job does.
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


DISTRIBUTION_STRATEGIES = {"default": _default, "mirrored": _mirrored, "multi_worker": _multi_worker,
                           "tpu": _tpu}


def replicas_in_sync() -> int:
    """How many replicas the current replica context sums over: 1 on one device and outside any
    replica context (cross-replica code), where a per-replica value is already the global one."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def all_reduce_sum(values: list) -> list:
    """Σ over replicas of per-replica values (gradients, token counts); the identity on one device."""
    if replicas_in_sync() == 1:
        return list(values)
    return list(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, list(values)))


def get_distribution_strategy(name: str) -> tf.distribute.Strategy:
    if name not in DISTRIBUTION_STRATEGIES:
        raise ValueError(f"--strategy must be one of {sorted(DISTRIBUTION_STRATEGIES)}, received {name!r}.")
    return DISTRIBUTION_STRATEGIES[name]()


def check_jit_compile(dist: tf.distribute.Strategy, jit_compile: bool) -> None:
    """Rejects `--xla` where TensorFlow cannot compile the search step, before anything is traced.

    Over more than one replica (MirroredStrategy, MultiWorkerMirroredStrategy) XLA places the whole step
    on one device and TensorFlow 2.21 fails with "Trying to access resource …/replica_1/… located in
    device …:1 from device …:0"; compiling the per-replica function instead fails the same way
    (BUILD_NOTES.md). TPUStrategy compiles with XLA whatever the flag says.
    """
    if not jit_compile or dist.num_replicas_in_sync == 1 or isinstance(dist, tf.distribute.TPUStrategy):
        return
    raise ValueError(
        f"--xla (jit_compile=True) is not supported over {dist.num_replicas_in_sync} replicas "
        f"({type(dist).__name__}): XLA compiles the step for one device, and the replicas' variables live on "
        "others. Use --noxla with this --strategy, or --xla with --strategy=default.")
