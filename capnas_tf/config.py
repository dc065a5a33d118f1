"""Typed run configuration. Library code takes these as arguments and never reads flags;
`capnas_tf.flags` turns absl flags into them."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """The searched encoder E (a DARTS supernet) and its relaxation of A."""

    channels: int = 8
    num_cells: int = 5
    num_nodes: int = 4
    stem_multiplier: int = 3
    primitives: tuple = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3",
                         "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # the DARTS candidate set
    relaxation: str = "softmax"
    max_skip_connect: int | None = 2  # cap on skip_connect in the derived normal cell (DARTS collapse)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The three-stage search (and its baselines)."""

    strategy: str = "three_stage"
    hypergradient: str = "exact"  # exact | finite_difference
    stage2: str = "soft"  # soft | straight_through
    darts_order: int = 2
    epochs: int = 4
    steps_per_epoch: int = 0  # 0: one pass over D_tr
    warmup_epochs: int = 1
    decoder: str = "lstm"
    student_encoder: str = "conv"
    student_decoder: str = "lstm"
    eta_e: float = 0.1  # η_e, η_f, η_w: virtual step sizes of the unrolled steps
    eta_f: float = 0.1
    eta_w: float = 0.1
    weight_lr: float = 2e-3
    student_lr: float = 2e-3
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3  # η_a
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    fd_epsilon: float = 0.01
    xla: bool = False
    log_every: int = 10
    checkpoint_every: int = 50
    supernet: SupernetConfig = dataclasses.field(default_factory=SupernetConfig)
