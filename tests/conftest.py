"""Test-wide TensorFlow set-up: quiet logs, and two logical CPU devices so tf.distribute tests
can run a real MirroredStrategy on a one-CPU machine. Must run before TensorFlow initialises."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as capnas_tf sets it: the same kernels on every CPU

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
if _cpus:
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # already initialised by an earlier import; tests needing 2 devices skip-check
        pass
