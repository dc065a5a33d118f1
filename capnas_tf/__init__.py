"""capnas_tf: searching an image captioner's encoder by the three-stage method, in TensorFlow/Keras 3."""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
