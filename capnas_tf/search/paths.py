"""What the sampling baselines (gdas, random_ws, reinforce) share: one-hot paths through the supernet,
per-step seeds that survive a resume, and the weight step on a sampled path.

A *path* is a pair of op weights `(w_normal [E, K], w_reduce [E, K])` that is one-hot on the edges of
one architecture and zero elsewhere, so `SupernetEncoder.call(op_weights=path)` computes that child on
the shared weights E. With `SearchConfig.one_op_per_edge` (the default) each edge computes only its
selected candidate (`tf.switch_case` on the index, so one trace serves every path) and an edge the path
does not use computes nothing; without it the supernet evaluates every candidate and the zero weights
mask them.

Stateless sampling needs an explicit seed per draw. Each strategy here keeps a step counter in its
checkpoint and draws with `seed = fold_in(fold_in([run_seed, 0], step), purpose)`, so a resumed run
draws exactly the samples an uninterrupted one would have drawn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from capnas_tf.distribute import all_reduce_sum
from capnas_tf.search.captioning import SearchModels, path_loss
from capnas_tf.search.gradients import gradients
from capnas_tf.search.strategies import SearchStrategy, apply_global_gradients
from capnas_tf.search_space.cells import num_edges

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig

# `purpose` of a seed: the architecture step and the weight step of one search step draw apart.
ARCH, WEIGHT = 0, 1


def op_columns(primitives) -> tuple[int, ...]:
    """The columns of A a sampled architecture may use: every primitive but `none`."""
    columns = tuple(k for k, name in enumerate(primitives) if name != "none")
    if not columns:
        raise ValueError(f"the search space needs an op other than 'none'; received primitives {list(primitives)}.")
    return columns


def op_weights_from_choices(inputs, ops, *, num_nodes: int, num_ops: int, dtype=tf.float32) -> tf.Tensor:
    """One cell's one-hot op weights `[E, K]` from its choices.

    Args:
      inputs: int `[N, 2]`, the two states node i reads (0, 1 = previous cells, 2 + j = node j).
      ops: int `[N, 2]`, the column of A (index into the primitives) on each of those edges.
    """
    offsets = tf.constant([num_edges(i) for i in range(num_nodes)], tf.int32)[:, tf.newaxis]
    rows = offsets + tf.cast(inputs, tf.int32)  # (N, 2): edge index of each choice
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(tf.cast(ops, tf.int32), [-1])], axis=1)
    return tf.scatter_nd(indices, tf.ones([2 * num_nodes], dtype), [num_edges(num_nodes), num_ops])


def uniform_path(seed, *, num_nodes: int, primitives) -> tuple[tf.Tensor, tf.Tensor]:
    """A path drawn uniformly from the space of `sample_genotype`, in TensorFlow (stateless, traceable):
    per node two distinct inputs (every unordered pair equally likely: the top 2 of i.i.d. uniform
    scores) and on each an op other than `none`, uniformly."""
    columns = tf.constant(op_columns(primitives), tf.int32)
    cells = []
    for cell_seed in tf.unstack(tf.random.experimental.stateless_split(seed, 2)):
        input_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(cell_seed, 2))
        scores = tf.random.stateless_uniform([num_nodes, num_nodes + 1], seed=input_seed)
        readable = tf.sequence_mask(tf.range(2, num_nodes + 2), num_nodes + 1)  # node i reads i + 2 states
        inputs = tf.math.top_k(tf.where(readable, scores, -1.0), k=2).indices  # (N, 2)
        picks = tf.random.stateless_uniform([num_nodes, 2], seed=op_seed, minval=0,
                                            maxval=int(columns.shape[0]), dtype=tf.int32)
        cells.append(op_weights_from_choices(inputs, tf.gather(columns, picks), num_nodes=num_nodes,
                                             num_ops=len(primitives)))
    return tuple(cells)


def uniform_path_log_probabilities(*, num_nodes: int, primitives, floor: float = 1e-9) -> np.ndarray:
    """log P(op k on edge e) under `uniform_path`, `[E, K]`: node i keeps 2 of its i + 2 edges and
    picks one of K' ops on each, so P = 2 / ((i + 2) K'); `none` (P = 0) gets log(floor) to stay finite
    in JSON."""
    columns = op_columns(primitives)
    p = np.full((num_edges(num_nodes), len(primitives)), floor)
    for i in range(num_nodes):
        p[num_edges(i): num_edges(i + 1), list(columns)] = 2.0 / ((i + 2) * len(columns))
    return np.log(p)


class SampledPathStrategy(SearchStrategy):
    """Base of the sampling strategies: a checkpointed step counter for the seeds, the run's length
    (from `begin_search`), and the weight step E, F ← on D_tr along `training_path(seed)`.

    The run seed is the supernet's `seed` (search_job sets it from --seed), so two runs with different
    --seed draw different architectures.
    """

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        super().__init__(models, config, max_caption_len=max_caption_len)
        self.primitives = tuple(models.encoder.primitives)
        self.num_nodes = int(models.encoder.num_nodes)
        self.run_seed = int(getattr(models.encoder, "seed", 0) or 0)
        # Identical on every replica (each replica runs the same step), so keep the first replica's.
        self.step_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="sampled_path_step",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.total_steps = self.warmup_steps = None

    def checkpoint_items(self) -> dict:
        return dict(super().checkpoint_items(), sampled_path_step=self.step_count)

    def begin_search(self, *, total_steps: int, warmup_steps: int) -> None:
        super().begin_search(total_steps=total_steps, warmup_steps=warmup_steps)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def seed(self, purpose: int) -> tf.Tensor:
        """The stateless seed of this step's draw for `purpose` (ARCH or WEIGHT)."""
        base = tf.constant([self.run_seed, 0], tf.int64)
        step_seed = tf.random.experimental.stateless_fold_in(base, self.step_count)
        return tf.random.experimental.stateless_fold_in(step_seed, purpose)

    def loss_on_path(self, batch: dict, path, *, training_decoder: bool = True) -> tf.Tensor:
        """`path_loss` of `path`, computing one op per edge unless --one_op_per_edge=false."""
        return path_loss(self.models, batch, path, training_decoder=training_decoder,
                         one_op_per_edge=self.config.one_op_per_edge)

    def training_path(self, seed) -> tuple:
        """The path E, F are trained along in this step's weight update."""
        raise NotImplementedError

    def weight_step(self, batches: dict) -> dict:
        """E, F ← one optimizer step on L(E, F; D_tr) of the path sampled for this step."""
        batch = batches["train"]
        path = tuple(tf.stop_gradient(w) for w in self.training_path(self.seed(WEIGHT)))
        variables = self.models.E + self.models.F
        loss, (grads,) = gradients(lambda: self.loss_on_path(batch, path), [variables], all_reduce_sum)
        norm = apply_global_gradients(self.weight_optimizer, grads, variables, self.config.grad_clip)
        return {"stage1/train_loss": loss, "stage1/grad_norm": norm}

    def step(self, batches: dict, *, update_architecture: bool) -> dict:
        metrics = super().step(batches, update_architecture=update_architecture)
        self.step_count.assign_add(1)
        return metrics
