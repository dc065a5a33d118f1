"""The DARTS search space: candidate ops, mixed op, cells, the supernet E with its architecture A,
relaxations of A, genotypes (derived architectures) and the discrete encoder of a genotype.

    ops.PRIMITIVES, ops.OPS, ops.register_op      the candidates (data, extensible)
    relaxations.get_relaxation(name)              A → op weights (softmax, gumbel)
    SupernetEncoder                               E; arch_variables = A, weight_variables = E
    genotypes.derive_genotype(α_normal, α_reduce) A → Genotype (pure numpy)
    DiscreteEncoder(genotype)                     the derived encoder; discrete_from_supernet

`plots` (matplotlib) is imported on demand: `from capnas_tf.search_space import plots`.
"""
from capnas_tf.search_space.discrete import DiscreteEncoder, discrete_from_supernet
from capnas_tf.search_space.genotypes import (
    DARTS_V1,
    DARTS_V2,
    KNOWN_GENOTYPES,
    Genotype,
    GenotypeError,
    derive_genotype,
    genotype_op_weights,
    resolve_genotype,
)
from capnas_tf.search_space.mixed_op import MixedOp
from capnas_tf.search_space.ops import OPS, PRIMITIVES, register_op
from capnas_tf.search_space.relaxations import (
    RELAXATIONS,
    get_relaxation,
    gumbel_temperature,
    register_relaxation,
    relax_architecture,
)
from capnas_tf.search_space.supernet import SupernetEncoder

__all__ = [
    "DARTS_V1", "DARTS_V2", "KNOWN_GENOTYPES", "OPS", "PRIMITIVES", "RELAXATIONS", "DiscreteEncoder",
    "Genotype", "GenotypeError", "MixedOp", "SupernetEncoder", "derive_genotype", "discrete_from_supernet",
    "genotype_op_weights", "get_relaxation", "gumbel_temperature", "register_op", "register_relaxation",
    "relax_architecture", "resolve_genotype",
]
