"""The mixed operation of one supernet edge: ō(x) = Σ_k w_k · o_k(x).

The weights w are a call argument, not a variable of the layer: the relaxation (softmax, Gumbel,
uniform) and the architecture A live outside, so the same layer serves every search strategy.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.search_space.ops import PRIMITIVES, check_primitives, make_candidate


@keras.saving.register_keras_serializable(package="capnas_tf")
class MixedOp(keras.layers.Layer):
    """All candidates of one edge, mixed by per-call weights.

    Args:
      channels: C of the edge (input and output).
      stride: 1, or 2 for the edges of a reduction cell that read the previous cells.
      primitives: candidate names (keys of `ops.OPS`), K of them; w is ordered the same way.
      affine: learn BN's γ, β in the candidates (DARTS' supernet: False).

    Call arguments:
      x: `[B, H, W, C]`.
      weights: `[K]` op weights w (cast to the compute dtype).
      training: BatchNorm mode.

    Returns:
      `[B, ⌈H/stride⌉, ⌈W/stride⌉, C]`.

    Example:

        op = MixedOp(channels=4, stride=1)
        y = op(tf.random.uniform([2, 8, 8, 4]), tf.fill([8], 1 / 8))  # (2, 8, 8, 4)
    """

    def __init__(self, channels: int, stride: int = 1, primitives=PRIMITIVES, affine: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.stride = int(stride)
        self.primitives = check_primitives(primitives, "MixedOp")
        self.affine = bool(affine)
        # DARTS adds an affine-free BN after each pooling candidate of the supernet.
        self.candidates = [
            make_candidate(name, self.channels, self.stride, self.affine, pool_batchnorm=True,
                           dtype=self.dtype_policy)
            for name in self.primitives
        ]

    def build(self, input_shape):
        for op in self.candidates:
            op.build(input_shape)

    def call(self, x, weights, training=None):
        if weights.shape.rank is not None and weights.shape.rank != 1:
            raise ValueError(f"MixedOp: weights must have shape [K={len(self.primitives)}]; "
                             f"received shape {weights.shape}.")
        weights = tf.cast(weights, x.dtype)
        return tf.add_n([weights[k] * op(x, training=training) for k, op in enumerate(self.candidates)])

    def compute_output_shape(self, input_shape):
        return self.candidates[0].compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride, primitives=list(self.primitives),
                      affine=self.affine)
        return config
