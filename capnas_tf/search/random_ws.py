"""Random search with weight sharing (Li & Talwalkar, "Random Search and Reproducibility for Neural
Architecture Search", arXiv:1902.07638).

    every step      E, F ← AdamW step on L(E, F, h; D_tr), h a path drawn uniformly from the space
    last R steps    each of N candidates c (drawn uniformly once, up front, by `sample_genotype`) is
                    scored by its caption loss on that step's D_val batch at the current shared
                    weights; all N see the same weights and the same batch, so the sums compare fairly
    genotype        the candidate with the lowest summed validation loss

Before the ranking has run, genotype.json holds candidate 0 (the first one drawn). The other steps'
`random_ws/val_loss` is the validation loss of one uniformly drawn path, to watch the shared weights.
Nothing learns A; what plays its role in alpha_history.jsonl is the sampling distribution's
log P(op k on edge e), which is constant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from capnas_tf.search.captioning import SearchModels
from capnas_tf.search.paths import ARCH, SampledPathStrategy, uniform_path, uniform_path_log_probabilities
from capnas_tf.search.strategies import register_strategy
from capnas_tf.search_space.genotypes import genotype_op_weights, sample_genotype

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig


@register_strategy("random_ws")
class RandomWSStrategy(SampledPathStrategy):
    """Uniform paths on D_tr; rank N sampled architectures by validation caption loss at the end."""

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        super().__init__(models, config, max_caption_len=max_caption_len)
        if config.random_ws_candidates < 1:
            raise ValueError(f"--random_ws_candidates must be >= 1; received {config.random_ws_candidates}.")
        if config.random_ws_rank_batches < 1:
            raise ValueError(f"--random_ws_rank_batches must be >= 1; received {config.random_ws_rank_batches}.")
        rng = np.random.default_rng(self.run_seed)
        self.candidates = [sample_genotype(rng, primitives=self.primitives, num_nodes=self.num_nodes,
                                          max_skip_connect=config.supernet.max_skip_connect)
                           for _ in range(config.random_ws_candidates)]
        weights = [genotype_op_weights(g, self.primitives) for g in self.candidates]
        # (normal, reduce), each (N, E, K): candidate c's one-hot op weights at [c]
        self.candidate_paths = tuple(tf.constant(np.stack([w[cell] for w in weights])) for cell in (0, 1))
        n = len(self.candidates)
        # Replicas hold parts of each global loss (local sum / global token count): they add up.
        self.score_sum = tf.Variable(tf.zeros([n]), trainable=False, name="random_ws_score_sum",
                                     aggregation=tf.VariableAggregation.SUM)
        self.scored_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="random_ws_scored_batches",
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.rank_from = None

    def checkpoint_items(self) -> dict:
        return dict(super().checkpoint_items(), random_ws_score_sum=self.score_sum,
                    random_ws_scored_batches=self.scored_batches)

    def begin_search(self, *, total_steps: int, warmup_steps: int) -> None:
        super().begin_search(total_steps=total_steps, warmup_steps=warmup_steps)
        rank_batches = self.config.random_ws_rank_batches
        if rank_batches > total_steps - warmup_steps:
            raise ValueError(f"--random_ws_rank_batches={rank_batches} exceeds the {total_steps - warmup_steps} "
                             "steps after the warm-up, so the ranking would not finish; lower it or "
                             "--warmup_epochs, or search longer.")
        self.rank_from = total_steps - rank_batches

    def A_values(self):
        logp = tf.constant(uniform_path_log_probabilities(num_nodes=self.num_nodes, primitives=self.primitives),
                           tf.float32)
        return [logp, logp]

    def training_path(self, seed) -> tuple:
        return uniform_path(seed, num_nodes=self.num_nodes, primitives=self.primitives)

    def candidate_losses(self, batch: dict) -> tf.Tensor:
        """The validation caption loss of every candidate on `batch` at the current weights, `[N]`.
        A while loop, so the supernet is traced once rather than N times."""
        n = len(self.candidates)

        def body(c, losses):
            path = (self.candidate_paths[0][c], self.candidate_paths[1][c])
            return c + 1, losses.write(c, self.loss_on_path(batch, path, training_decoder=False))

        _, losses = tf.while_loop(lambda c, _: c < n, body, (tf.constant(0), tf.TensorArray(tf.float32, size=n)))
        return losses.stack()

    def architecture_step(self, batches: dict) -> dict:
        if self.rank_from is None:
            raise RuntimeError("RandomWSStrategy: call begin_search(total_steps=…, warmup_steps=…) before "
                               "stepping; the ranking runs in the last steps of the run.")
        batch = batches["val"]

        def rank():
            losses = self.candidate_losses(batch)
            self.score_sum.assign_add(losses)
            self.scored_batches.assign_add(1)
            return tf.reduce_mean(losses)

        def probe():
            return self.loss_on_path(batch, self.training_path(self.seed(ARCH)), training_decoder=False)

        loss = tf.cond(self.step_count >= self.rank_from, rank, probe)
        return {"random_ws/val_loss": loss}

    def ranking(self) -> list[tuple[float, int]]:
        """(mean validation loss, candidate index), best first; empty before the ranking has run."""
        batches = int(self.scored_batches.numpy())
        if batches == 0:
            return []
        scores = self.score_sum.numpy() / batches
        return sorted((float(s), c) for c, s in enumerate(scores))

    def derive_genotype(self, *, primitives, num_nodes: int, max_skip_connect: int | None):
        if tuple(primitives) != self.primitives or num_nodes != self.num_nodes:
            raise ValueError(f"RandomWSStrategy.derive_genotype: its candidates were drawn for primitives "
                             f"{list(self.primitives)} and {self.num_nodes} nodes; asked for {list(primitives)} "
                             f"and {num_nodes}.")
        ranking = self.ranking()
        return self.candidates[ranking[0][1] if ranking else 0]
