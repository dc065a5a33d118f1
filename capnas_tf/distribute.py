"""The TensorFlow runtime of a run: its seeds and determinism, and its tf.distribute strategy by name
(`--strategy`). Both are set before the run's first TensorFlow op (`jobs.run`: `configure_runtime`, then
`get_distribution_strategy`, then anything else).

Multi-worker runs (`--strategy=multi_worker`, TensorFlow's MultiWorkerMirroredStrategy; the cluster comes
from TF_CONFIG) follow TensorFlow's documented pattern: every worker runs the same program on its share of
each global batch (`distribute_dataset`), and every worker saves its checkpoints (saving may run collective
ops), but only the chief (`is_chief`) writes the workdir; the others write to a temporary directory that is
removed at the end (`worker_workdir`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from capnas_tf.registry import Registry


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
    # Reads the cluster from TF_CONFIG, as every multi-worker TensorFlow job does. A worker that dies is
    # noticed by the coordination service's heartbeats: the collectives of the others are aborted with
    # UnavailableError (`collective_error_message`), instead of waiting forever.
    return tf.distribute.MultiWorkerMirroredStrategy()


def _tpu():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


# name (--strategy) → factory() -> tf.distribute.Strategy
DISTRIBUTION_STRATEGIES = Registry("distribution strategy", register_name="register_distribution_strategy",
                                   lookup_name="get_distribution_strategy",
                                   entries={"default": _default, "mirrored": _mirrored, "multi_worker": _multi_worker,
                                            "tpu": _tpu})


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
    return DISTRIBUTION_STRATEGIES.lookup(
        name, f"--strategy must be one of {sorted(DISTRIBUTION_STRATEGIES)}, received {name!r}.")()


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


# --- multi-worker: the chief, the workdir, the input --------------------------------------------------

def _chief_task(task_type: str | None, task_id: int | None, jobs) -> bool:
    """TensorFlow's rule: the "chief" task if the cluster has one, else worker 0; a process outside any
    cluster (no TF_CONFIG) is its own chief."""
    if not task_type:
        return True
    if task_type == "chief":
        return True
    return "chief" not in jobs and task_type == "worker" and int(task_id or 0) == 0


def is_chief(dist: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the workdir: always, except for the workers of a multi-worker strategy
    other than the chief. Without `dist`, decided from TF_CONFIG (before a strategy exists)."""
    if dist is None:
        try:
            tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        except ValueError:
            return True
        task = tf_config.get("task", {})
        return _chief_task(task.get("type"), task.get("index"), tf_config.get("cluster", {}))
    resolver = getattr(dist, "cluster_resolver", None)
    if resolver is None:
        return True
    return _chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().jobs)


def num_workers(dist: tf.distribute.Strategy) -> int:
    resolver = getattr(dist, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return max(1, sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs))


# What a non-chief worker copies from the chief's workdir into its own before it starts: the state a resume
# reads (checkpoints, retrain/*.json), not the outputs only the chief's copy is for.
_NOT_RESUME_STATE = ("tensorboard", "export", ".lock", "vocab.txt", "*.png", "*.keras", ".tmp-*")


@contextlib.contextmanager
def worker_workdir(workdir: str, dist: tf.distribute.Strategy):
    """The directory this process writes: `workdir` on the chief; on every other worker a new temporary
    directory (removed on exit), into which the chief's resume state (checkpoints, the retrain's records)
    is copied first, so that every worker resumes from the chief's last checkpoint. The workdir must be
    one every worker reads (a shared filesystem) for a resume; on a fresh run it need not exist there."""
    if is_chief(dist):
        yield workdir
        return
    resolver = dist.cluster_resolver
    path = tempfile.mkdtemp(prefix=f"capnas_{resolver.task_type}{resolver.task_id}_")
    try:
        if os.path.isdir(workdir):
            shutil.copytree(workdir, path, ignore=shutil.ignore_patterns(*_NOT_RESUME_STATE), dirs_exist_ok=True)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_workers_agree(dist: tf.distribute.Strategy, value: int, what: str) -> None:
    """Raises ValueError unless every worker holds the same `value` (e.g. the step each resumed from);
    one all-gather, to be called by every worker. A no-op on one worker."""
    if num_workers(dist) == 1:
        return
    local = tf.constant([value], tf.int64)
    values = sorted(set(dist.gather(dist.run(lambda: local), axis=0).numpy().tolist()))
    if values != [value]:
        raise ValueError(
            f"The workers do not agree on {what}: this one has {value}, the workers together {values}. A "
            "multi-worker run resumes from the chief's workdir: it must be on a filesystem "
            "every worker reads, under the same --workdir path.")


def distribute_dataset(dist: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """`dataset` (of global batches) split over the replicas of every worker: sharded by DATA (each worker
    reads the whole stream and keeps its replicas' parts of each batch), since the streams come from one
    file, TFDS or memory, which FILE sharding cannot split."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dist.experimental_distribute_dataset(dataset.with_options(options))


def check_global_batch(dist: tf.distribute.Strategy, batch_size: int, flag: str = "--batch_size") -> None:
    """The global batch is split evenly over all replicas of all workers."""
    replicas = dist.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"{flag}={batch_size} is the global batch and must be divisible by the "
                         f"{replicas} replicas of --strategy ({type(dist).__name__}).")


def collective_error_message(error: BaseException) -> str | None:
    """A one-line explanation when `error` is a multi-worker run losing a peer (its collectives aborted);
    None for any other error."""
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                              tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # "Collective ops is aborted by: …", and the tasks it names on the lines after it
    at = next((i for i, line in enumerate(lines) if "aborted by" in line), 0)
    named = [line for line in lines[at + 1:at + 9] if line.startswith("/job:")]
    first = " ".join([lines[at] if lines else ""] + named)[:400]
    return (f"a worker of this multi-worker run stopped or cannot be reached, so this one stops too "
            f"({type(error).__name__}: {first}). Restart every worker with the same flags: the run resumes from the "
            "chief's last checkpoint.")
