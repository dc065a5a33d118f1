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


def get_distribution_strategy(name: str) -> tf.distribute.Strategy:
    if name not in DISTRIBUTION_STRATEGIES:
        raise ValueError(f"--strategy must be one of {sorted(DISTRIBUTION_STRATEGIES)}, received {name!r}.")
    return DISTRIBUTION_STRATEGIES[name]()
