"""The searched encoder E: a DARTS supernet of mixed edges, with the architecture A beside it.

    stem → cell₀ … cell_{L−1} → grid [B, h, w, N·C·2^r],  pooled = mean over (h, w)

Reduction cells sit at L//3 and 2L//3 and double the channels. All normal cells share one matrix of
op weights w_normal [E, K], all reduction cells w_reduce [E, K]. They come in as a call argument
(`op_weights`), computed by a relaxation of A outside the model; without it the model uses
softmax(A) (DARTS).

A = [α_normal, α_reduce] are non-trainable float32 Keras variables of the model, so
`trainable_variables` (the weights E) never contains them and a weight optimizer never updates
them; the architecture optimizer reaches them through `arch_variables`.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.search_space.cells import SearchCell, Stem, cell_plan, num_edges
from capnas_tf.search_space.mixed_op import selected_candidates
from capnas_tf.search_space.ops import PRIMITIVES, check_primitives


@keras.saving.register_keras_serializable(package="capnas_tf")
class SupernetEncoder(keras.Model):
    """DARTS supernet as an image encoder.

    Defaults are small (C = 8, 5 cells, 32×32 images → grid 8×8×128) so that a search runs on a
    CPU; DARTS' CIFAR search used C = 16 and 8 cells.

    Args:
      channels: C, the node channels of the first cells (doubled at each reduction).
      num_cells: L, the number of cells.
      num_nodes: N, intermediate nodes per cell (E = N(N+3)/2 mixed edges).
      stem_multiplier: the stem outputs stem_multiplier · C channels.
      primitives: the K candidate op names (keys of `ops.OPS`); the column order of A.
      affine: learn BN's γ, β inside the cells (DARTS' supernet: False).
      partial_channels: PC-DARTS' K: only C/K channels of each edge go through its candidates (see
        `mixed_op`); must divide `channels`. 1 (default): off.
      alpha_init_scale: A ← alpha_init_scale · N(0, 1) (DARTS: 1e-3).
      seed: seed of A's initialisation.

    Call arguments:
      images: float `[B, S, S, 3]` in [0, 1].
      training: BatchNorm mode.
      op_weights: `(w_normal [E, K], w_reduce [E, K])`; default `softmax(A)`.
      one_op_per_edge: False (default): every edge computes all K candidates, Σ_k w_k · o_k(x).
        True: `op_weights` is a sampled path (rows one-hot, or all zero on edges the path does not
        use) and each edge computes only its selected candidate w_k · o_k(x) (`MixedOp`): the same
        value, about 1/K of the work; the gradient reaches w only through the selected entries.

    Returns:
      `(grid [B, h, w, output_channels], pooled [B, output_channels])` in the compute dtype.

    Example:

        encoder = SupernetEncoder()
        grid, pooled = encoder(tf.random.uniform([2, 32, 32, 3]))  # (2, 8, 8, 128), (2, 128)
        w = [tf.nn.softmax(a) for a in encoder.arch_variables]
        grid, pooled = encoder(images, training=True, op_weights=w)

    Reference: Liu et al., DARTS, arXiv:1806.09055 (model_search.Network).
    """

    def __init__(self, channels: int = 8, num_cells: int = 5, num_nodes: int = 4, stem_multiplier: int = 3,
                 primitives=PRIMITIVES, affine: bool = False, alpha_init_scale: float = 1e-3,
                 seed: int | None = 0, partial_channels: int = 1, **kwargs):
        super().__init__(**kwargs)
        for arg, value, minimum in (("channels", channels, 1), ("num_cells", num_cells, 1),
                                    ("num_nodes", num_nodes, 1), ("stem_multiplier", stem_multiplier, 1)):
            if int(value) < minimum:
                raise ValueError(f"SupernetEncoder: {arg} must be >= {minimum}; received {value!r}.")
        self.channels = int(channels)
        self.num_cells = int(num_cells)
        self.num_nodes = int(num_nodes)
        self.stem_multiplier = int(stem_multiplier)
        self._primitives = check_primitives(primitives, "SupernetEncoder")
        self.affine = bool(affine)
        self.partial_channels = int(partial_channels)
        if self.partial_channels < 1 or self.channels % self.partial_channels:
            raise ValueError(f"SupernetEncoder: partial_channels (--partial_channels) must be >= 1 and divide "
                             f"channels (--supernet_channels) = {self.channels}; received {partial_channels!r}.")
        self.alpha_init_scale = float(alpha_init_scale)
        self.seed = seed

        policy = self.dtype_policy
        self.stem = Stem(self.stem_multiplier * self.channels, affine=True, dtype=policy)
        self.cells = [
            SearchCell(self.num_nodes, c, reduction, reduction_prev, self._primitives, self.affine,
                       partial_channels=self.partial_channels, dtype=policy)
            for reduction, reduction_prev, c in cell_plan(self.num_cells, self.channels)
        ]
        self._output_channels = self.num_nodes * cell_plan(self.num_cells, self.channels)[-1][2]
        # A: created here (its shape does not depend on the images), float32 whatever the policy,
        # and never autocast, so that relaxations see the same numbers under mixed precision.
        shape = (self.num_edges, len(self._primitives))
        self.alpha_normal = self._make_alpha("alpha_normal", shape, seed)
        self.alpha_reduce = self._make_alpha("alpha_reduce", shape, None if seed is None else seed + 1)

    def _make_alpha(self, name: str, shape, seed):
        return self.add_weight(
            name=name, shape=shape, dtype="float32", trainable=False, autocast=False,
            initializer=keras.initializers.RandomNormal(stddev=self.alpha_init_scale, seed=seed),
        )

    # -- accessors --------------------------------------------------------------------------------
    @property
    def arch_variables(self) -> list:
        """A = [α_normal [E, K], α_reduce [E, K]] (non-trainable, float32)."""
        return [self.alpha_normal, self.alpha_reduce]

    @property
    def weight_variables(self) -> list:
        """E, the supernet's weights: exactly `trainable_variables` (A is not among them)."""
        return self.trainable_variables

    @property
    def num_edges(self) -> int:
        return num_edges(self.num_nodes)

    @property
    def primitives(self) -> tuple[str, ...]:
        return self._primitives

    @property
    def output_channels(self) -> int:
        """C of `grid` and `pooled`."""
        return self._output_channels

    def default_op_weights(self):
        """softmax(A) per cell type: DARTS' relaxation."""
        return tuple(tf.nn.softmax(tf.convert_to_tensor(a), axis=-1) for a in self.arch_variables)

    # -- forward ----------------------------------------------------------------------------------
    def _check_op_weights(self, op_weights):
        if not isinstance(op_weights, (tuple, list)) or len(op_weights) != 2:
            raise ValueError("SupernetEncoder: op_weights must be the pair (w_normal [E, K], w_reduce [E, K]); "
                             f"received {type(op_weights).__name__}.")
        expected = [self.num_edges, len(self._primitives)]
        for name, w in zip(("w_normal", "w_reduce"), op_weights):
            if w.shape.rank is not None and w.shape.as_list() != expected:
                raise ValueError(f"SupernetEncoder: op_weights {name} must have shape [E, K] = {expected}; "
                                 f"received {w.shape.as_list()}.")

    def build(self, input_shape):
        # Explicit shape propagation: much faster than letting Keras trace every nested call.
        self.stem.build(input_shape)
        s0_shape = s1_shape = self.stem.compute_output_shape(input_shape)
        for cell in self.cells:
            cell.build(s0_shape, s1_shape)
            s0_shape, s1_shape = s1_shape, cell.compute_output_shape(s0_shape, s1_shape)

    def call(self, images, training=False, op_weights=None, one_op_per_edge=False):
        if op_weights is None:
            op_weights = self.default_op_weights()
        self._check_op_weights(op_weights)
        w_normal, w_reduce = op_weights
        # The choice is data (int32 [E] per cell type), so one trace serves every sampled path.
        selected = tuple(selected_candidates(w) for w in op_weights) if one_op_per_edge else (None, None)
        s0 = s1 = self.stem(images, training=training)  # (B, S, S, stem_multiplier·C)
        for cell in self.cells:
            weights, choice = (w_reduce, selected[1]) if cell.reduction else (w_normal, selected[0])
            s0, s1 = s1, cell(s0, s1, weights, training=training, selected=choice)
        grid = s1  # (B, h, w, N·C_last)
        return grid, tf.reduce_mean(grid, axis=[1, 2])

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_cells=self.num_cells, num_nodes=self.num_nodes,
                      stem_multiplier=self.stem_multiplier, primitives=list(self._primitives),
                      affine=self.affine, alpha_init_scale=self.alpha_init_scale, seed=self.seed,
                      partial_channels=self.partial_channels)
        return config
