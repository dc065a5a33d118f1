"""The mixed operation of one supernet edge: ō(x) = Σ_k w_k · o_k(x).

The weights w are a call argument, not a variable of the layer: the relaxation (softmax, Gumbel),
a sampled path and the architecture A live outside, so the same layer serves every search strategy.

Partial channels (PC-DARTS, Xu et al. 2020, arXiv 1907.05737): with K > 1 only the first C/K channels
go through the candidates, the others bypass them (max-pooled 2×2 on a stride-2 edge), and a channel
shuffle with K groups interleaves the two so that the next edge samples other channels. The candidates'
activations, their memory and most of their compute shrink by K. PC-DARTS' edge normalisation (β) is
not implemented.

One operation per edge: when the weights of an edge are a one-hot row (a sampled path: GDAS,
random search, ENAS), `selected` = the index of its 1 makes the edge compute only that candidate,
w_k · o_k(x), by `tf.switch_case`. The index is a tensor, so one trace serves every path; the other
candidates do not run (their BatchNorm moving statistics stay put, their weights get zero gradients),
and the gradient reaches w only through w_k. `selected` = K (one past the last candidate) marks an
edge that the path does not use: its candidates' output is zero.

Over several replicas (MirroredStrategy, MultiWorkerMirroredStrategy) BatchNorm all-reduces its batch
statistics, and TensorFlow refuses a cross-replica all-reduce inside `tf.switch_case` (merge_call in
control flow). There every candidate runs, mixed by the one-hot row with the gradient masked to the
selected entry: the same values and gradients as one operation, but not its speed, and the unselected
candidates' moving statistics move as in the all-operations path.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.search_space.ops import PRIMITIVES, _cross_replica_context, check_primitives, make_candidate


@keras.saving.register_keras_serializable(package="capnas_tf")
class MixedOp(keras.layers.Layer):
    """All candidates of one edge, mixed by per-call weights.

    Args:
      channels: C of the edge (input and output).
      stride: 1, or 2 for the edges of a reduction cell that read the previous cells.
      primitives: candidate names (keys of `ops.OPS`), K of them; w is ordered the same way.
      affine: learn BN's γ, β in the candidates (DARTS' supernet: False).
      partial_channels: K of PC-DARTS; 1 (default): every channel through every candidate.

    Call arguments:
      x: `[B, H, W, C]`.
      weights: `[K]` op weights w (cast to the compute dtype).
      training: BatchNorm mode.
      selected: None (default): every candidate, Σ_k w_k · o_k(x). An int32 scalar tensor k in [0, K]:
        only w_k · o_k(x), or zeros for k = K; for one-hot (or zero) weights the same value as the sum.

    Returns:
      `[B, ⌈H/stride⌉, ⌈W/stride⌉, C]`.

    Example:

        op = MixedOp(channels=4, stride=1)
        y = op(tf.random.uniform([2, 8, 8, 4]), tf.fill([8], 1 / 8))  # (2, 8, 8, 4)
    """

    def __init__(self, channels: int, stride: int = 1, primitives=PRIMITIVES, affine: bool = False,
                 partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.stride = int(stride)
        self.primitives = check_primitives(primitives, "MixedOp")
        self.affine = bool(affine)
        self.partial_channels = int(partial_channels)
        if self.partial_channels < 1 or self.channels % self.partial_channels:
            raise ValueError(f"MixedOp: partial_channels must be >= 1 and divide the edge's channels "
                             f"C={self.channels}; received partial_channels={partial_channels!r}.")
        self.op_channels = self.channels // self.partial_channels
        # DARTS adds an affine-free BN after each pooling candidate of the supernet, whatever `affine`.
        self.candidates = [
            make_candidate(name, self.op_channels, self.stride, self.affine, pool_batchnorm=True,
                           pool_affine=False, dtype=self.dtype_policy)
            for name in self.primitives
        ]

    def build(self, input_shape):
        for op in self.candidates:
            op.build(tuple(input_shape[:-1]) + (self.op_channels,))

    def call(self, x, weights, training=None, selected=None):
        if weights.shape.rank is not None and weights.shape.rank != 1:
            raise ValueError(f"MixedOp: weights must have shape [K={len(self.primitives)}]; "
                             f"received shape {weights.shape}.")
        weights = tf.cast(weights, x.dtype)
        x_ops = x if self.partial_channels == 1 else x[..., : self.op_channels]
        if selected is None:
            # one Unpack for the K weights, not K strided slices with three constants each (graph size)
            w = tf.unstack(weights, num=len(self.candidates))
            mixed = tf.add_n([w[k] * op(x_ops, training=training) for k, op in enumerate(self.candidates)])
        elif _cross_replica_context() is not None:
            mixed = self.masked_candidates(x_ops, weights, selected, training)
        else:
            mixed = self.selected_candidate(x_ops, weights, selected, training)
        if self.partial_channels == 1:
            return mixed
        x_bypass = x[..., self.op_channels:]
        if self.stride == 2:
            x_bypass = tf.nn.max_pool2d(x_bypass, 2, 2, "SAME")
        return channel_shuffle(tf.concat([mixed, x_bypass], axis=-1), self.partial_channels)

    def selected_candidate(self, x, weights, selected, training=None):
        """w_k · o_k(x) for k = `selected` alone (zeros for k = K), one trace for every k."""
        def weighted(k):
            return lambda: weights[k] * self.candidates[k](x, training=training)

        def unused():  # the shape of every candidate's output, [B, ⌈H/s⌉, ⌈W/s⌉, C/K_pc]
            return tf.zeros_like(x[:, :: self.stride, :: self.stride, :])

        branches = [weighted(k) for k in range(len(self.candidates))] + [unused]
        return tf.switch_case(tf.cast(selected, tf.int32), branches)

    def masked_candidates(self, x, weights, selected, training=None):
        """Σ_k m_k w_k · o_k(x), m = one_hot(selected) as a constant: the value and gradients of
        `selected_candidate`, computing every candidate (for where control flow cannot hold them)."""
        mask = tf.stop_gradient(tf.one_hot(tf.cast(selected, tf.int32), len(self.candidates), dtype=weights.dtype))
        return tf.add_n([(mask[k] * weights[k]) * op(x, training=training) for k, op in enumerate(self.candidates)])

    def compute_output_shape(self, input_shape):
        out = self.candidates[0].compute_output_shape(tuple(input_shape[:-1]) + (self.op_channels,))
        return tuple(out[:-1]) + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride, primitives=list(self.primitives),
                      affine=self.affine, partial_channels=self.partial_channels)
        return config


def selected_candidates(weights) -> tf.Tensor:
    """The candidate each edge of a path selects: `[E, K]` one-hot (or all-zero) rows → int32 `[E]`,
    the column of the row's non-zero entry, K for an all-zero row (an edge the path does not use).

    The rows of GDAS' straight-through sample h − sg(y) + y qualify: their unselected entries are
    (0 − y) + y = 0 exactly in floating point, the selected one ≈ 1."""
    weights = tf.convert_to_tensor(weights)
    num_ops = weights.shape[-1] if weights.shape[-1] is not None else tf.shape(weights)[-1]
    index = tf.argmax(tf.abs(weights), axis=-1, output_type=tf.int32)
    used = tf.reduce_any(tf.not_equal(weights, 0), axis=-1)
    return tf.where(used, index, num_ops)


def channel_shuffle(x: tf.Tensor, groups: int) -> tf.Tensor:
    """[B, H, W, C] with channels in `groups` consecutive blocks → channel c·groups + g holds block g's
    c-th channel (ShuffleNet's shuffle, channels last), e.g. [a0 a1 b0 b1] → [a0 b0 a1 b1]."""
    b, h, w, c = tf.unstack(tf.shape(x))
    y = tf.reshape(x, tf.stack([b, h, w, groups, c // groups]))
    y = tf.transpose(y, [0, 1, 2, 4, 3])
    return tf.reshape(y, tf.shape(x))
