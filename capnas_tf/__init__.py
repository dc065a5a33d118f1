"""capnas_tf: searching an image captioner's encoder by the three-stage method, in TensorFlow/Keras 3."""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

# Registers the `capnas_shapes` TFDS builder (tensorflow_datasets imports TensorFlow lazily, so this stays fast).
from capnas_tf.data import shapes_tfds as _shapes_tfds  # noqa: E402,F401
