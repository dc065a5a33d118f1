"""GDAS: differentiable search with one sampled op per edge (Dong & Yang, "Searching for a Robust
Neural Architecture in Four GPU Hours", arXiv:1910.04465).

Every forward pass of the search uses a hard path h, one op per edge drawn from the Gumbel-softmax of
A; the backward pass is that of the soft sample y = softmax((log softmax(α) + g) / τ) (straight-through,
`relaxations.gumbel`). Per step, as in GDAS:

    A    ← Adam step on  L(E, F, h(A, g₁, τ); D_val)   (gradient ∂y/∂A)
    E, F ← AdamW step on L(E, F, h(A, g₂, τ); D_tr)    (A fixed)

τ decays linearly from τ_max = 10 to τ_min = 0.1 over the architecture steps (after the warm-up);
τ changes only the gradient, not the sample. The genotype is DARTS' rule on A, as in GDAS.

Each edge computes only its sampled op, h_k · o_k(x) with h_k = 1 carrying ∂y_k/∂A (`--one_op_per_edge`,
the default; GDAS' own speed-up), so ∇A flows through the selected entry of each row. With every op
computed (`--one_op_per_edge=false`) the same forward pass also sends ∂L/∂y_j = ⟨∂L/∂ō, o_j(x)⟩ of the
unselected ops into ∇A. (GDAS' code also adds the unselected h_j, each 0, to the edge's output, which gives
them the gradient Σ ∂L/∂ō; not done here.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from capnas_tf.distribute import all_reduce_sum
from capnas_tf.search.captioning import SearchModels
from capnas_tf.search.paths import ARCH, SampledPathStrategy
from capnas_tf.search.stateless import densify
from capnas_tf.search.strategies import SUCCESSIVE_COSINE, register_strategy
from capnas_tf.search_space.relaxations import gumbel_temperature, relax_architecture

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig


@register_strategy("gdas")
class GdasStrategy(SampledPathStrategy):
    """GDAS on captions: hard Gumbel-softmax paths, A on D_val, E and F on D_tr."""

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        super().__init__(models, config, max_caption_len=max_caption_len)
        if not 0 < config.gdas_tau_min <= config.gdas_tau_max:
            raise ValueError(f"--gdas_tau_min and --gdas_tau_max must satisfy 0 < τ_min <= τ_max; received "
                             f"τ_min={config.gdas_tau_min}, τ_max={config.gdas_tau_max}.")

    def temperature(self) -> tf.Tensor:
        """τ of this step: linear from τ_max at the first architecture step to τ_min at the last."""
        if self.total_steps is None:
            raise RuntimeError("GdasStrategy: call begin_search(total_steps=…, warmup_steps=…) before stepping; "
                               "the temperature schedule spans the run.")
        return gumbel_temperature(self.step_count - self.warmup_steps, self.total_steps - self.warmup_steps,
                                  self.config.gdas_tau_max, self.config.gdas_tau_min)

    def sample_path(self, A, seed) -> tuple:
        """h − sg(y) + y per cell: one-hot forward, soft gradient."""
        return relax_architecture("gumbel", A, temperature=self.temperature(), seed=seed)

    def training_path(self, seed) -> tuple:
        return self.sample_path(self.A_values(), seed)

    def architecture_gradient(self, batch: dict):
        """(L(E, F, h; D_val), ∇_A of it through the straight-through sample, the path h)."""
        A = self.A_values()
        with tf.GradientTape() as tape:
            tape.watch(A)  # A is non-trainable: the tape does not watch it by itself
            path = self.sample_path(A, self.seed(ARCH))
            loss = self.loss_on_path(batch, path)
        return loss, all_reduce_sum(densify(tape.gradient(loss, A), A)), path

    def architecture_step(self, batches: dict) -> dict:
        loss, grad_A, _ = self.architecture_gradient(batches["val"])
        cosine = self.successive_cosine(grad_A)
        norm = self.apply_architecture_gradients(grad_A)
        return {"gdas/val_loss": loss, "gdas/tau": self.temperature(), "arch/grad_norm": norm,
                SUCCESSIVE_COSINE: cosine}
