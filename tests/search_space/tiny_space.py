"""Tiny supernet configurations for fast tests, and a genotype of that size that uses every op."""
import numpy as np
import tensorflow as tf

from capnas_tf.search_space.genotypes import Genotype
from capnas_tf.search_space.ops import PRIMITIVES

SIDE = 16
BATCH = 2

# Three cells (normal, reduce, reduce), two nodes (5 edges), every DARTS candidate: 16×16 → 4×4×32.
TINY = dict(channels=4, num_cells=3, num_nodes=2, stem_multiplier=2, primitives=PRIMITIVES)
TINY_GRID = (BATCH, 4, 4, 2 * 4 * 4)

# Fewer candidates, for the heavier checks (XLA, second order, distribution).
FEW_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
SMALL = dict(TINY, primitives=FEW_OPS)
# One node per cell, for what compiles slowly (XLA, MirroredStrategy); still every kind of op.
ONE_NODE = dict(TINY, num_nodes=1, primitives=("none", "max_pool_3x3", "skip_connect", "dil_conv_3x3"))

# Every op at least once; in the reduction cell the input edges cover the stride-2 variants.
ALL_OPS_GENOTYPE = Genotype(
    normal=[("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("avg_pool_3x3", 2)],
    normal_concat=[2, 3],
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_5x5", 0), ("dil_conv_3x3", 2)],
    reduce_concat=[2, 3],
)


def images(batch=BATCH, side=SIDE, seed=0, dtype=tf.float32):
    return tf.random.stateless_uniform([batch, side, side, 3], seed=[seed, 7], dtype=dtype)


def supernet_with_random_statistics(**overrides):
    """A built `SupernetEncoder` of `TINY` (with `overrides`) whose BN moving statistics are away from their
    (0, 1) initial values, so that inference-mode comparisons see them."""
    from capnas_tf.search_space.supernet import SupernetEncoder

    supernet = SupernetEncoder(**{**TINY, **overrides})
    supernet.build((None, SIDE, SIDE, 3))
    rng = np.random.default_rng(0)
    for v in supernet.non_trainable_variables:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape))
        elif "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.2, v.shape))
    return supernet
