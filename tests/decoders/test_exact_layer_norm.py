"""ExactLayerNormalization computes Keras' layer norm with the Hessian Keras' TF backend loses."""
import keras
import numpy as np
import tensorflow as tf

from capnas_tf.decoders.exact_layer_norm import ExactLayerNormalization


def _hessian_of_squared_output(layer, x):
    """∂²(Σ y²)/∂x² for one row x, through `layer`."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)) * tf.range(1.0, 5.0, dtype=x.dtype))
        grad = inner.gradient(loss, x)
    return outer.jacobian(grad, x).numpy().reshape(4, 4)


def _finite_difference_hessian(layer, x, eps=1e-5):
    def grad_at(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(tf.square(layer(z)) * tf.range(1.0, 5.0, dtype=z.dtype))
        return tape.gradient(loss, z).numpy().ravel()

    columns = []
    for i in range(4):
        e = np.zeros((1, 4))
        e[0, i] = eps
        columns.append((grad_at(x + e) - grad_at(x - e)) / (2 * eps))
    return np.stack(columns, axis=1)


def test_output_equals_keras_layer_normalization():
    x = tf.random.stateless_normal([3, 5, 8], seed=[0, 0])
    keras_norm = keras.layers.LayerNormalization(epsilon=1e-5)
    exact = ExactLayerNormalization(epsilon=1e-5)
    keras_norm.build(x.shape)
    exact.build(x.shape)
    keras_norm.set_weights([np.linspace(0.5, 1.5, 8), np.linspace(-1, 1, 8)])
    exact.set_weights(keras_norm.get_weights())
    np.testing.assert_allclose(exact(x), keras_norm(x), atol=1e-5)


def test_hessian_matches_finite_differences_where_keras_does_not():
    x = tf.constant([[0.3, -1.2, 2.0, 0.7]], tf.float64)
    exact = ExactLayerNormalization(dtype="float64")
    keras_norm = keras.layers.LayerNormalization(dtype="float64")
    reference = _finite_difference_hessian(exact, x)
    np.testing.assert_allclose(_hessian_of_squared_output(exact, x), reference, atol=1e-6)
    # The pitfall this layer exists for: tf.nn.moments' stop_gradient(μ) corrupts the Hessian.
    assert np.abs(_hessian_of_squared_output(keras_norm, x) - reference).max() > 1e-2


def test_config_round_trip():
    layer = ExactLayerNormalization(epsilon=1e-4, center=False)
    clone = ExactLayerNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
