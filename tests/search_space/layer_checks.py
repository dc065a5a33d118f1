"""The one shared check of a search-space layer: symbolically, eagerly, under tf.function, and
through serialization (get_config → from_config, serialize → deserialize, same outputs at the same
weights)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _symbolic(x):
    if isinstance(x, (tf.Tensor, np.ndarray)):
        return keras.KerasTensor(tuple(x.shape), dtype=tf.as_dtype(x.dtype).name)
    return x


def _shapes(outputs):
    return tf.nest.map_structure(lambda t: tuple(t.shape), outputs)


def _assert_close(a, b, atol):
    tf.nest.map_structure(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5),
                          a, b)


def check_layer(make_layer, args: tuple, *, kwargs: dict | None = None, expected_shapes=None,
                atol: float = 1e-5):
    """Runs the four checks; returns the built layer and its eager outputs.

    Args:
      make_layer: () -> a new, unbuilt layer.
      args: positional call tensors.
      kwargs: keyword call arguments (tensors or nests of tensors are allowed, e.g. op_weights).
      expected_shapes: the output shape, or a tuple of them for a tuple of outputs (concrete batch).
    """
    kwargs = dict(kwargs or {})

    # Symbolic: a fresh layer called on KerasTensors builds itself and infers the output shapes.
    layer = make_layer()
    symbolic = layer(*tf.nest.map_structure(_symbolic, args), **tf.nest.map_structure(_symbolic, kwargs))
    if expected_shapes is not None:
        assert _shapes(symbolic) == expected_shapes, (_shapes(symbolic), expected_shapes)

    # Eager.
    eager = layer(*args, **kwargs)
    if expected_shapes is not None:
        assert _shapes(eager) == expected_shapes
    tf.nest.map_structure(lambda t: np.testing.assert_equal(np.isfinite(np.asarray(t)).all(), True), eager)

    # Traced: the same numbers.
    traced = tf.function(lambda *a: layer(*a, **kwargs))(*args)
    _assert_close(eager, traced, atol)

    # Serialization: same config both ways, same function at the same weights.
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    clone(*args, **kwargs)
    assert len(clone.weights) == len(layer.weights)
    clone.set_weights(layer.get_weights())
    _assert_close(eager, clone(*args, **kwargs), atol)
    return layer, eager

