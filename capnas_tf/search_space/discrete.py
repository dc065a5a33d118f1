"""The encoder of a derived architecture, and the transfer of a supernet's weights into it.

`DiscreteEncoder(genotype)` stacks DARTS cells in which every node is the sum of the two ops the
genotype chose; it has the supernet's call contract `(images, training) -> (grid, pooled)`, without
op weights. Its ops are the supernet's candidates, pooling followed by BatchNorm included (with γ, β
when the cell's other BNs have them), so that the operation retrained is the one the search scored.
`discrete_from_supernet(supernet, genotype)` builds one of the supernet's size and copies
the chosen ops' weights (and the stem's and the preprocessing's), so that it computes exactly what
the supernet computes at one-hot op weights on the genotype's edges (weight sharing, as in
one-shot NAS).

Reference: Liu et al., DARTS, arXiv:1806.09055 (model.NetworkCIFAR without the classifier head).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.search_space.cells import BackboneStem, DiscreteCell, Stem, cell_plan, edge_index
from capnas_tf.search_space.genotypes import CELL_TYPES, Genotype, derive_genotype, resolve_genotype


@keras.saving.register_keras_serializable(package="capnas_tf")
class DiscreteEncoder(keras.Model):
    """DARTS network of a genotype as an image encoder (no classifier).

    Args:
      genotype: a `Genotype`, a name of `KNOWN_GENOTYPES` ("DARTS_V2"), a JSON file path, or the
        genotype's dict form (as stored in the config).
      channels: C of the first cells (doubled at each reduction, at 1/3 and 2/3 of the depth).
      num_cells: L.
      stem_multiplier: the stem outputs stem_multiplier · C channels.
      drop_path_prob: DARTS' drop-path probability in training (0: off, no random ops). When > 0, it
        is held in a non-trainable variable that `set_drop_path_prob` changes (a schedule) without
        retracing.
      affine: learn BN's γ, β in the cells (True for a network trained from scratch; False to
        match a supernet exactly).
      pool_batchnorm: a BN after each pooling op (with γ, β if `affine`), as the supernet's pooling
        candidates have one (see `DiscreteCell`); False: DARTS' final network, pooling alone.
      backbone: optional layer (images in [0, 1] → feature map) used in place of the conv stem,
        followed by a 1×1 conv-BN to stem_multiplier · C channels.

    Call arguments:
      images: float `[B, S, S, 3]` in [0, 1].
      training: BatchNorm mode and drop-path.

    Returns:
      `(grid [B, h, w, output_channels], pooled [B, output_channels])`.

    Example:

        encoder = DiscreteEncoder("DARTS_V2", channels=8, num_cells=5)
        grid, pooled = encoder(tf.random.uniform([2, 32, 32, 3]))  # (2, 8, 8, 128), (2, 128)
    """

    def __init__(self, genotype, channels: int = 8, num_cells: int = 5, stem_multiplier: int = 3,
                 drop_path_prob: float = 0.0, affine: bool = True, pool_batchnorm: bool = True,
                 backbone=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("channels", channels), ("num_cells", num_cells), ("stem_multiplier", stem_multiplier)):
            if int(value) < 1:
                raise ValueError(f"DiscreteEncoder: {arg} must be >= 1; received {value!r}.")
        if not 0.0 <= float(drop_path_prob) < 1.0:
            raise ValueError(f"DiscreteEncoder: drop_path_prob must be in [0, 1); received {drop_path_prob!r}.")
        self.genotype = resolve_genotype(genotype)
        self.channels = int(channels)
        self.num_cells = int(num_cells)
        self.stem_multiplier = int(stem_multiplier)
        self.affine = bool(affine)
        self.pool_batchnorm = bool(pool_batchnorm)
        self._initial_drop_path_prob = float(drop_path_prob)

        policy = self.dtype_policy
        stem_channels = self.stem_multiplier * self.channels
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone
        self.stem = (Stem(stem_channels, affine=True, dtype=policy) if backbone is None
                     else BackboneStem(backbone, stem_channels, dtype=policy))
        self.cells = []
        for reduction, reduction_prev, c in cell_plan(self.num_cells, self.channels):
            cell = "reduce" if reduction else "normal"
            self.cells.append(DiscreteCell(
                getattr(self.genotype, cell), getattr(self.genotype, f"{cell}_concat"), c, reduction,
                reduction_prev, self.affine, self.pool_batchnorm, dtype=policy))
        self._output_channels = len(self.cells[-1].concat) * self.cells[-1].channels
        self.drop_path_prob = None
        if self._initial_drop_path_prob > 0:
            self.drop_path_prob = self.add_weight(
                name="drop_path_prob", shape=(), dtype="float32", trainable=False, autocast=False,
                initializer=keras.initializers.Constant(self._initial_drop_path_prob))

    @property
    def output_channels(self) -> int:
        return self._output_channels

    def set_drop_path_prob(self, value: float) -> None:
        """Sets the drop-path probability (e.g. DARTS' linear ramp p · epoch / epochs)."""
        if self.drop_path_prob is None:
            raise ValueError("DiscreteEncoder.set_drop_path_prob: the encoder was built with "
                             "drop_path_prob=0 (drop-path off); construct it with the largest "
                             "probability the schedule will use.")
        self.drop_path_prob.assign(float(value))

    def build(self, input_shape):
        self.stem.build(input_shape)
        s0_shape = s1_shape = tuple(self.stem.compute_output_shape(input_shape))
        for cell in self.cells:
            cell.build(s0_shape, s1_shape)
            s0_shape, s1_shape = s1_shape, cell.compute_output_shape(s0_shape, s1_shape)

    def call(self, images, training=False):
        drop_prob = None if self.drop_path_prob is None else tf.convert_to_tensor(self.drop_path_prob)
        s0 = s1 = self.stem(images, training=training)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, training=training, drop_path_prob=drop_prob)
        grid = s1  # (B, h, w, len(concat)·C_last)
        return grid, tf.reduce_mean(grid, axis=[1, 2])

    def get_config(self):
        config = super().get_config()
        config.update(
            genotype=self.genotype.to_dict(), channels=self.channels, num_cells=self.num_cells,
            stem_multiplier=self.stem_multiplier, drop_path_prob=self._initial_drop_path_prob,
            affine=self.affine, pool_batchnorm=self.pool_batchnorm,
            backbone=None if self.backbone is None else keras.saving.serialize_keras_object(self.backbone),
        )
        return config


def _ensure_built(model: keras.Model) -> None:
    if not model.built:
        # Weight shapes depend on channels only, so any spatial size will do.
        model.build((None, None, None, 3))


def discrete_from_supernet(supernet, genotype: Genotype | str | None = None, **kwargs) -> DiscreteEncoder:
    """A `DiscreteEncoder` of the supernet's size holding the supernet's weights for `genotype`.

    The result has the supernet's `affine` and its BN after pooling, so with the same inputs it
    computes what `supernet(images, op_weights=genotype_op_weights(genotype))` computes (up to
    float summation order), in training and inference mode alike. With `affine=True` (the retrained
    cells') it computes the same at γ = 1, β = 0 (`load_supernet_weights`).

    Args:
      supernet: a `SupernetEncoder`.
      genotype: the architecture; default: derived from the supernet's A by DARTS' rule.
      **kwargs: other `DiscreteEncoder` arguments (e.g. `drop_path_prob`, `affine`).

    Returns:
      A built `DiscreteEncoder` with copied weights (stem, cell preprocessing, chosen ops, and
      BatchNorm moving statistics).
    """
    if genotype is None:
        alpha_normal, alpha_reduce = (v.numpy() for v in supernet.arch_variables)
        genotype = derive_genotype(alpha_normal, alpha_reduce, supernet.primitives, supernet.num_nodes)
    genotype = resolve_genotype(genotype)
    _check_genotype_fits(genotype, supernet, "discrete_from_supernet")
    kwargs = {"affine": supernet.affine, "pool_batchnorm": True, **kwargs}
    encoder = DiscreteEncoder(genotype, supernet.channels, supernet.num_cells, supernet.stem_multiplier,
                              dtype=supernet.dtype_policy, **kwargs)
    load_supernet_weights(encoder, supernet)
    return encoder


def load_supernet_weights(encoder: DiscreteEncoder, supernet) -> None:
    """Copies into `encoder` the supernet's weights for the encoder's genotype: the stem, the cells'
    preprocessing, the chosen candidates, and the BatchNorm moving statistics.

    Where the encoder's BN has γ, β and the supernet's has none (an affine encoder, as retrained, from
    DARTS' affine-free supernet), γ = 1 and β = 0: the encoder then computes what the supernet computes
    at the genotype's one-hot op weights, its ops being the supernet's candidates up to BN's γ, β.

    Raises:
      ValueError: if the encoder is not of the supernet's size, its genotype not of the supernet's
        nodes and candidates, or its pooling ops lack the BN of the supernet's (`pool_batchnorm=False`).
    """
    where = "load_supernet_weights"
    sizes = ("channels", "num_cells", "stem_multiplier")
    if any(getattr(encoder, k) != getattr(supernet, k) for k in sizes):
        raise ValueError(f"{where}: the encoder's {[getattr(encoder, k) for k in sizes]} differ from the supernet's "
                         f"{[getattr(supernet, k) for k in sizes]} ({', '.join(sizes)}).")
    _check_genotype_fits(encoder.genotype, supernet, where)
    if not encoder.pool_batchnorm and any("pool" in name for cell in CELL_TYPES
                                          for name, _ in getattr(encoder.genotype, cell)):
        raise ValueError(f"{where}: the encoder was built with pool_batchnorm=False: its pooling ops have no BN, "
                         f"so they are not the supernet's candidates (pooling, then BN).")
    _ensure_built(supernet)
    _ensure_built(encoder)
    _copy_weights(supernet.stem, encoder.stem, "stem")
    for i, (source, target) in enumerate(zip(supernet.cells, encoder.cells)):
        _copy_weights(source.preprocess0, target.preprocess0, f"cell {i} preprocess0")
        _copy_weights(source.preprocess1, target.preprocess1, f"cell {i} preprocess1")
        for slot, (name, index) in enumerate(target.op_list):
            edge = source.edges[edge_index(slot // 2, index)]
            _copy_weights(edge.candidates[supernet.primitives.index(name)], target.node_ops[slot],
                          f"cell {i} op {slot} ({name})")


def _check_genotype_fits(genotype: Genotype, supernet, where: str) -> None:
    for cell in CELL_TYPES:
        if genotype.num_nodes(cell) != supernet.num_nodes:
            raise ValueError(f"{where}: the genotype's {cell} cell has {genotype.num_nodes(cell)} "
                             f"nodes, the supernet {supernet.num_nodes}.")
        for slot, (name, _) in enumerate(getattr(genotype, cell)):
            if name not in supernet.primitives:
                raise ValueError(f"{where}: op {name!r} of {cell}[{slot}] is not among the "
                                 f"supernet's primitives {list(supernet.primitives)}.")


def _weighted_leaves(layer: keras.layers.Layer) -> list:
    """The layers inside `layer` (itself included) that hold variables of their own, in tracking order."""
    return [leaf for leaf in layer._flatten_layers(include_self=True, recursive=True)
            if leaf.weights and not list(leaf._flatten_layers(include_self=False, recursive=False))]


def _copy_weights(source: keras.layers.Layer, target: keras.layers.Layer, what: str) -> None:
    """`source`'s variables into `target`'s, leaf layer by leaf layer; a target BN with γ, β where the
    source's has none gets γ = 1, β = 0 (the same function)."""
    sources, targets = _weighted_leaves(source), _weighted_leaves(target)
    if [type(x) for x in sources] != [type(x) for x in targets]:
        raise ValueError(f"load_supernet_weights: {what} of the encoder ({[type(x).__name__ for x in targets]}) is "
                         f"not the supernet's candidate ({[type(x).__name__ for x in sources]}).")
    for s, t in zip(sources, targets):
        if not isinstance(t, keras.layers.BatchNormalization):
            t.set_weights(s.get_weights())
            continue
        if (s.scale and not t.scale) or (s.center and not t.center):
            raise ValueError(f"load_supernet_weights: a BN of {what} has γ, β in the supernet and none in the "
                             f"encoder.")
        t.moving_mean.assign(s.moving_mean)
        t.moving_variance.assign(s.moving_variance)
        if t.scale:
            t.gamma.assign(s.gamma if s.scale else tf.ones_like(t.gamma))
        if t.center:
            t.beta.assign(s.beta if s.center else tf.zeros_like(t.beta))
