"""DARTS cells and the network scaffolding shared by the supernet and the discrete encoder.

A cell reads the outputs of the previous two cells, s₀ (cell k−2) and s₁ (cell k−1), maps both to C
channels (1×1 ReLU-conv-BN, or FactorizedReduce when cell k−1 halved the resolution), then computes
N intermediate nodes, each a sum over edges from earlier states:

    x_i = Σ_{j < i} ō^{(j,i)}(x_j),   states x_0 = s₀', x_1 = s₁', nodes x_2 … x_{N+1}

and outputs the concatenation of the nodes along channels (multiplier = N in the supernet). In a
reduction cell, the edges that read s₀', s₁' have stride 2. With N nodes a search cell has
N(N+3)/2 mixed edges (14 for N = 4), ordered node by node, inputs in increasing order.

Reference: Liu et al., DARTS, arXiv:1806.09055 (model_search.py, model.py).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.search_space.mixed_op import MixedOp
from capnas_tf.search_space.ops import (
    PRIMITIVES,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    batch_norm,
    check_primitives,
    make_candidate,
)


def num_edges(num_nodes: int) -> int:
    """E = Σ_{i<N} (2 + i) = N(N+3)/2 mixed edges in a cell of N intermediate nodes."""
    return num_nodes * (num_nodes + 3) // 2


def edge_index(node: int, input_index: int) -> int:
    """The row of A for the edge from state `input_index` into intermediate node `node` (0-based)."""
    if not 0 <= input_index < node + 2:
        raise ValueError(f"edge_index: node {node} reads inputs 0..{node + 1}; received {input_index}.")
    return num_edges(node) + input_index


def reduction_indices(num_cells: int) -> tuple[int, ...]:
    """Cells that halve the resolution and double the channels: at 1/3 and 2/3 of the depth."""
    if num_cells < 1:
        raise ValueError(f"num_cells must be >= 1; received {num_cells}.")
    return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


def cell_plan(num_cells: int, channels: int):
    """[(reduction, reduction_prev, C)] for each cell: C doubles at every reduction."""
    plan, reduction_prev, c = [], False, channels
    reductions = reduction_indices(num_cells)
    for i in range(num_cells):
        reduction = i in reductions
        if reduction:
            c *= 2
        plan.append((reduction, reduction_prev, c))
        reduction_prev = reduction
    return plan


def drop_path(x, drop_prob):
    """Zeroes whole examples of x with probability p and rescales the rest by 1/(1 − p).

    x: `[B, H, W, C]`; drop_prob: scalar p in [0, 1). At p = 0 it is exactly the identity.
    """
    keep = 1.0 - tf.cast(drop_prob, x.dtype)
    noise = tf.random.uniform(tf.stack([tf.shape(x)[0], 1, 1, 1]), dtype=x.dtype)
    return x / keep * tf.floor(keep + noise)  # mask is 1 with probability keep


@keras.saving.register_keras_serializable(package="capnas_tf")
class Stem(keras.layers.Layer):
    """Images in [0, 1] → centred (x − 0.5) → 3×3 conv → BN (DARTS' CIFAR stem).

    Args:
      channels: output channels (stem_multiplier · C).
      affine: learn BN's γ, β (DARTS: True, also in the supernet).
    """

    def __init__(self, channels: int, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.affine = bool(affine)
        self.conv = keras.layers.Conv2D(self.channels, 3, padding="same", use_bias=False, dtype=self.dtype_policy)
        self.bn = batch_norm(self.affine, self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.channels,))

    def call(self, images, training=None):
        return self.bn(self.conv(images - tf.constant(0.5, images.dtype)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "affine": self.affine}


@keras.saving.register_keras_serializable(package="capnas_tf")
class BackboneStem(keras.layers.Layer):
    """A pretrained feature extractor in place of the conv stem: images → backbone → 1×1 conv → BN.

    Args:
      backbone: a layer mapping images `[B, S, S, 3]` in [0, 1] to a feature map `[B, h, w, C']`
        (e.g. `capnas_tf.encoders.ApplicationBackbone`).
      channels: output channels (stem_multiplier · C).
    """

    def __init__(self, backbone, channels: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone
        self.channels = int(channels)
        self.conv = keras.layers.Conv2D(self.channels, 1, use_bias=False, dtype=self.dtype_policy)
        self.bn = batch_norm(True, self.dtype_policy)

    def build(self, input_shape):
        self.backbone.build(input_shape)
        features = tuple(self.backbone.compute_output_shape(input_shape))
        self.conv.build(features)
        self.bn.build(features[:-1] + (self.channels,))

    def call(self, images, training=None):
        return self.bn(self.conv(self.backbone(images, training=training)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(self.backbone.compute_output_shape(input_shape))[:-1] + (self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(backbone=keras.saving.serialize_keras_object(self.backbone), channels=self.channels)
        return config


def _preprocessing(channels: int, reduction_prev: bool, affine: bool, dtype):
    """(preprocess0, preprocess1): s₀ may be at twice s₁'s resolution after a reduction cell."""
    pre0 = (FactorizedReduce(channels, 2, affine, dtype=dtype) if reduction_prev
            else ReLUConvBN(channels, 1, affine, kernel_size=1, dtype=dtype))
    pre1 = ReLUConvBN(channels, 1, affine, kernel_size=1, dtype=dtype)
    return pre0, pre1


def _state_shapes(s1_shape, channels: int, reduction: bool):
    """(shape of the preprocessed inputs, shape of the intermediate nodes) of a cell."""
    batch, height, width = tuple(s1_shape)[:3]
    stride = 2 if reduction else 1
    ceil = lambda n: None if n is None else -(-n // stride)  # noqa: E731
    return (batch, height, width, channels), (batch, ceil(height), ceil(width), channels)


class _Cell(keras.layers.Layer):
    """Shared fields of the search and discrete cells."""

    def __init__(self, channels: int, reduction: bool, reduction_prev: bool, affine: bool, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.reduction = bool(reduction)
        self.reduction_prev = bool(reduction_prev)
        self.affine = bool(affine)
        self.preprocess0, self.preprocess1 = _preprocessing(self.channels, self.reduction_prev,
                                                            self.affine, self.dtype_policy)

    def stride_of(self, input_index: int) -> int:
        return 2 if self.reduction and input_index < 2 else 1

    def build(self, s0_shape, s1_shape):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        input_shape, node_shape = _state_shapes(s1_shape, self.channels, self.reduction)
        self.build_ops(input_shape, node_shape)

    def build_ops(self, input_shape, node_shape):
        """Builds the edge ops, given the shapes of the preprocessed inputs and of the nodes."""
        raise NotImplementedError

    def compute_output_shape(self, s0_shape, s1_shape):
        _, node_shape = _state_shapes(s1_shape, self.channels, self.reduction)
        return node_shape[:3] + (self.num_outputs * self.channels,)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, reduction=self.reduction,
                      reduction_prev=self.reduction_prev, affine=self.affine)
        return config


@keras.saving.register_keras_serializable(package="capnas_tf")
class SearchCell(_Cell):
    """A supernet cell: every node reads every earlier state through a `MixedOp`.

    Args:
      num_nodes: N intermediate nodes.
      channels: C per node.
      reduction: halve the resolution (stride-2 edges from the two inputs).
      reduction_prev: the previous cell was a reduction (s₀ is at twice s₁'s resolution).
      primitives: the K candidates of every edge.
      affine: learn BN's γ, β (DARTS' supernet: False).
      partial_channels: PC-DARTS' K for every edge (`MixedOp`); 1: off.

    Call arguments:
      s0, s1: outputs of cells k−2 and k−1, `[B, H₀, W₀, C₀]`, `[B, H, W, C₁]`.
      weights: `[E, K]` op weights of this cell type.
      training: BatchNorm mode.
      selected: None: every edge mixes all its candidates. int32 `[E]`: edge e computes only
        candidate `selected[e]` (K: none), for one-hot `weights` (`mixed_op.selected_candidates`).

    Returns:
      `[B, H', W', N·C]`, H' = ⌈H/2⌉ in a reduction cell.
    """

    def __init__(self, num_nodes: int = 4, channels: int = 8, reduction: bool = False,
                 reduction_prev: bool = False, primitives=PRIMITIVES, affine: bool = False,
                 partial_channels: int = 1, **kwargs):
        super().__init__(channels, reduction, reduction_prev, affine, **kwargs)
        self.num_nodes = int(num_nodes)
        self.primitives = check_primitives(primitives, "SearchCell")
        self.partial_channels = int(partial_channels)
        self.edges = [
            MixedOp(self.channels, self.stride_of(j), self.primitives, self.affine,
                    partial_channels=self.partial_channels, dtype=self.dtype_policy)
            for i in range(self.num_nodes) for j in range(i + 2)
        ]

    @property
    def num_outputs(self) -> int:
        return self.num_nodes

    def build_ops(self, input_shape, node_shape):
        for i in range(self.num_nodes):
            for j in range(i + 2):
                self.edges[num_edges(i) + j].build(input_shape if j < 2 else node_shape)

    def call(self, s0, s1, weights, training=None, selected=None):
        expected = (len(self.edges), len(self.primitives))
        if weights.shape.rank is not None and tuple(weights.shape) != expected:
            raise ValueError(f"SearchCell: op weights must have shape [E, K] = {list(expected)}; "
                             f"received {weights.shape}.")
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        # each edge's row by one Unpack (a strided slice per edge would add four ops to the graph)
        rows = tf.unstack(weights, num=len(self.edges))
        chosen = [None] * len(self.edges) if selected is None else tf.unstack(selected, num=len(self.edges))
        for i in range(self.num_nodes):
            offset = num_edges(i)
            states.append(tf.add_n([
                self.edges[offset + j](h, rows[offset + j], training=training, selected=chosen[offset + j])
                for j, h in enumerate(states)
            ]))
        return tf.concat(states[2:], axis=-1)  # (B, H', W', N·C)

    def get_config(self):
        return {**super().get_config(), "num_nodes": self.num_nodes, "primitives": list(self.primitives),
                "partial_channels": self.partial_channels}


@keras.saving.register_keras_serializable(package="capnas_tf")
class DiscreteCell(_Cell):
    """A cell of a derived architecture: node i = o₁(x_{j₁}) + o₂(x_{j₂}).

    Args:
      ops: the cell's genotype list, `[(op_name, input_index), …]`, two per node.
      concat: the states concatenated into the output (DARTS: the intermediate nodes 2 … N+1).
      channels: C per node.
      reduction, reduction_prev: as in `SearchCell`.
      affine: learn BN's γ, β (DARTS' final network: True).
      pool_batchnorm: put a BN after each pooling op, with γ, β if `affine`, so that a pooling op is
        the supernet's candidate (pooling, then DARTS' affine-free BN) up to BN's γ, β: the op the
        search chose is the op retrained. False: no BN after pooling (DARTS' final network).

    Call arguments:
      s0, s1: outputs of cells k−2 and k−1.
      training: BatchNorm mode and drop-path.
      drop_path_prob: a scalar; in training, each non-identity op output is zeroed per example with
        this probability and rescaled by 1/(1 − p) (DARTS' drop-path). None: no drop-path.

    Returns:
      `[B, H', W', len(concat)·C]`.
    """

    def __init__(self, ops, concat, channels: int = 8, reduction: bool = False, reduction_prev: bool = False,
                 affine: bool = True, pool_batchnorm: bool = True, **kwargs):
        super().__init__(channels, reduction, reduction_prev, affine, **kwargs)
        self.op_list = [(str(name), int(index)) for name, index in ops]
        self.concat = [int(i) for i in concat]
        self.pool_batchnorm = bool(pool_batchnorm)
        self.num_nodes = len(self.op_list) // 2
        self.node_ops = [
            make_candidate(name, self.channels, self.stride_of(index), self.affine,
                           pool_batchnorm=self.pool_batchnorm, pool_affine=self.affine, dtype=self.dtype_policy)
            for name, index in self.op_list
        ]

    @property
    def num_outputs(self) -> int:
        return len(self.concat)

    def build_ops(self, input_shape, node_shape):
        for op, (_, index) in zip(self.node_ops, self.op_list):
            op.build(input_shape if index < 2 else node_shape)

    def call(self, s0, s1, training=None, drop_path_prob=None):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for i in range(self.num_nodes):
            node = []
            for slot in (2 * i, 2 * i + 1):
                _, index = self.op_list[slot]
                h = self.node_ops[slot](states[index], training=training)
                # DARTS never drops the identity: it carries the signal through deep stacks.
                if training and drop_path_prob is not None and not isinstance(self.node_ops[slot], Identity):
                    h = drop_path(h, drop_path_prob)
                node.append(h)
            states.append(node[0] + node[1])
        return tf.concat([states[i] for i in self.concat], axis=-1)  # (B, H', W', len(concat)·C)

    def get_config(self):
        config = super().get_config()
        config.update(ops=[list(p) for p in self.op_list], concat=list(self.concat),
                      pool_batchnorm=self.pool_batchnorm)
        return config

