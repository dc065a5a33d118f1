"""The TensorFlow runtime of a run: its seeds and determinism, and its tf.distribute strategy by name
(`--strategy`). Both are set before the run's first TensorFlow op."""
from __future__ import annotations

import keras
import tensorflow as tf


def configure_runtime(seed: int, deterministic: bool) -> str | None:
    """Seeds Python, NumPy, TensorFlow and Keras with `seed`; with `deterministic`, makes a run's results
    bit-identical from one process to the next.

    Deterministic kernels alone (`enable_op_determinism`) are not enough: with several inter-op threads,
    two fresh runs of the three-stage search differ in the last bits of the hypergradient (and, through
    Adam's normalisation of tiny gradients, in the third digit of A) — results depend on the order in
    which independent ops run. One inter-op thread fixes that order. The thread pools can only be sized
    before TensorFlow runs its first op, so this is called first by `jobs.run`.

    Returns:
      None, or a warning to log when the inter-op thread pool was already started with more than one thread
      (library use after other TensorFlow work): the run is then deterministic per process only.
    """
    keras.utils.set_random_seed(seed)
    if not deterministic:
        return None
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # "Inter op parallelism cannot be modified after initialization."
        threads = tf.config.threading.get_inter_op_parallelism_threads()
        if threads != 1:
            return ("--deterministic: TensorFlow was already running with "
                    f"{threads or 'automatic'} inter-op threads; results may differ in the last bits "
                    "between processes (start the run in a fresh process for bit-identical results).")
    return None


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
