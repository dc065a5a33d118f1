"""Layer normalisation with exact second derivatives.

Keras' `LayerNormalization` on the TensorFlow backend gets its statistics from `tf.nn.moments`,
which computes the variance as mean((x − stop_gradient(μ))²). The first derivative is unaffected
(∂var/∂μ = 0 at the mean), but the Hessian of the variance loses its −1/n coupling term:

    ∂²var/∂x_i∂x_j = 2(δ_ij − 1/n)/n   (true)      2δ_ij/n   (tf.nn.moments)

so any second derivative that passes through a normalised input — a hypergradient differentiating
through a gradient step of the decoder — is wrong, silently (measured: 5–15 % off against float64
finite differences on a two-layer keras-hub decoder). `ExactLayerNormalization` computes the same
function without the `stop_gradient`.
"""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="capnas_tf")
class ExactLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis, differentiable to any order.

    y = (x − μ) / sqrt(σ² + ε) · γ + β with μ, σ² the mean and (biased) variance over the last
    axis, computed in at least float32 like the Keras layer. Same constructor arguments and
    weights as `keras.layers.LayerNormalization`; `rms_scaling` and axes other than the last are
    not supported.
    """

    def build(self, input_shape):
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        rank = len(input_shape)
        if [a % rank for a in axes] != [rank - 1] or self.rms_scaling:
            raise ValueError(
                "ExactLayerNormalization: only axis=-1 without rms_scaling is supported; "
                f"received axis={self.axis}, rms_scaling={self.rms_scaling}."
            )
        super().build(input_shape)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if x.dtype in (tf.float16, tf.bfloat16):  # statistics in float32, as Keras does
            x = tf.cast(x, tf.float32)
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centered = x - mean
        variance = tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True)
        outputs = centered * tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * tf.cast(self.gamma, outputs.dtype)
        if self.center:
            outputs = outputs + tf.cast(self.beta, outputs.dtype)
        return tf.cast(outputs, self.compute_dtype)
