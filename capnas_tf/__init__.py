"""capnas_tf: searching an image captioner's encoder by the three-stage method, in TensorFlow/Keras 3."""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512; on an AVX2 CPU they make the
# retrain step 0.65× as long, and with them the CPU profiler records memory events and bfloat16 matmuls
# accumulate in float32 (BUILD_NOTES.md). Read when TensorFlow loads: a program that imported TensorFlow
# first keeps its own setting; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# `python -m capnas_tf.<module>` imports this package first: quiet TensorFlow's start-up lines before
# anything below imports it (only there; a program importing capnas_tf keeps TensorFlow's defaults).
from capnas_tf import _startup  # noqa: E402

if _startup.entry_point_module() is not None:
    _startup.quiet_tensorflow_startup()

# Registers the `capnas_shapes` TFDS builder.
from capnas_tf.data import shapes_tfds as _shapes_tfds  # noqa: E402,F401

# Every class the toolkit registers with `keras.saving.register_keras_serializable`, so that
# `import capnas_tf` is all `keras.saving.load_model` needs for a saved captioner: Captioner, the
# encoders (DiscreteEncoder and its cells and ops, the fixed encoders), the decoders, the supernet
# and its mixed ops, the TokenAccuracy metric and the fused optimizers. These import TensorFlow and Keras
# (and keras-hub, for the transformer decoder); nothing else (no data pipeline, search, plotting or export).
# tests/test_package_import.py checks that no module registers a class outside this list.
from capnas_tf import captioner, decoders, encoders, metrics, optimizers, search_space  # noqa: E402,F401
