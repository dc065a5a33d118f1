"""ENAS-style search: an LSTM controller trained with REINFORCE on shared weights (Pham et al.,
"Efficient Neural Architecture Search via Parameter Sharing", arXiv:1802.03268).

The controller π_θ emits, for the normal cell and then the reduction cell, node by node: input 1, its
op, input 2 (≠ input 1), its op — the space of `sample_genotype`. Per search step:

    θ    ← Adam step on  −(R − b) log π_θ(c) − β H(π_θ),  c ~ π_θ,  R = exp(−L(E, F, c; D_val))
    b    ← δ b + (1 − δ) R            (exponential moving average; the first reward initialises it)
    E, F ← AdamW step on L(E, F, c'; D_tr),  c' ~ π_θ

The reward is exp(−validation caption loss) of the sampled child on the shared weights: the geometric
mean per-token probability of the reference captions. It costs one forward pass (no decoding, no
n-gram scoring), lies in (0, 1] as ENAS' accuracy reward does, and is a monotone function of the very
loss random_ws ranks by and DARTS minimises, so the baselines optimise the same criterion. A
BLEU/CIDEr reward would need greedy decoding and is very noisy on a batch of a few images.

The genotype is the controller's argmax child (greedy decisions; in the normal cell skip_connect is
masked once --max_skip_connect of them are chosen), not the best of N samples: it needs no data and
no extra evaluations. What plays A's role in alpha_history.jsonl: log P(op k on edge e) under π_θ,
estimated from `marginal_samples` children drawn with a fixed seed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from capnas_tf.checkpointing import model_state
from capnas_tf.distribute import all_reduce_sum
from capnas_tf.optimizers import FusedAdam
from capnas_tf.search.captioning import SearchModels
from capnas_tf.search.stateless import densify
from capnas_tf.search.paths import ARCH, SampledPathStrategy, op_columns, op_weights_from_choices
from capnas_tf.search.strategies import apply_global_gradients, register_strategy
from capnas_tf.search_space.cells import num_edges
from capnas_tf.search_space.genotypes import Genotype

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig

_MASKED = -1e9  # logit of a forbidden choice: probability exactly 0 without the NaN of 0 · log 0


class Controller(keras.Model):
    """The ENAS controller: an LSTM cell run over the decisions of both cells.

    Each step feeds the embedding of the previous decision; an input head scores the N + 1 states a
    node can read (masked to the i + 2 that node i can), an op head scores the K' ops other than none.

    Args:
      num_nodes: N, intermediate nodes per cell.
      num_ops: K', the candidate ops (indices into the strategy's op list, not the primitives).
      units: LSTM size (ENAS: 64).

    Example:

        controller = Controller(num_nodes=4, num_ops=7)
        child = controller.rollout(8, seed=tf.constant([0, 1]))  # 8 sampled children
        child["inputs"].shape, child["log_prob"].shape           # (8, 2, 4, 2), (8,)

    Reference: Pham et al., ENAS, arXiv:1802.03268 (micro search space controller).
    """

    def __init__(self, *, num_nodes: int, num_ops: int, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_nodes, self.num_ops, self.units = int(num_nodes), int(num_ops), int(units)
        self.max_inputs = self.num_nodes + 1
        # Tokens: 0, 1 = "start of the normal / reduction cell"; then the input choices; then the ops.
        self.embedding = keras.layers.Embedding(2 + self.max_inputs + self.num_ops, self.units, name="embedding")
        self.lstm = keras.layers.LSTMCell(self.units, name="lstm")
        self.input_head = keras.layers.Dense(self.max_inputs, name="input_head")
        self.op_head = keras.layers.Dense(self.num_ops, name="op_head")

    def build(self, input_shape=None):
        self.embedding.build((None,))
        self.lstm.build((None, self.units))
        self.input_head.build((None, self.units))
        self.op_head.build((None, self.units))
        self.built = True

    def get_config(self):
        return {**super().get_config(), "num_nodes": self.num_nodes, "num_ops": self.num_ops, "units": self.units}

    def rollout(self, batch_size: int, *, seed=None, skip_op: int | None = None, max_skip: int | None = None):
        """Runs the controller over all decisions of `batch_size` children.

        Args:
          seed: stateless seed `[2]` to sample; None: greedy (argmax) decisions.
          skip_op, max_skip: with both set, op `skip_op` is masked in the normal cell once a child has
            chosen it `max_skip` times (the derivation's skip_connect cap).

        Returns:
          dict of `inputs`, `ops` (int `[B, 2, N, 2]`: cell, node, slot), `log_prob` (`[B]`, log π of
          the decisions) and `entropy` (`[B]`, Σ over decisions of each decision's entropy).
        """
        B, N = batch_size, self.num_nodes
        state = [tf.zeros([B, self.units]), tf.zeros([B, self.units])]
        log_prob, entropy = tf.zeros([B]), tf.zeros([B])
        decision = 0
        all_inputs, all_ops = [], []

        def choose(logits, allowed):
            nonlocal decision, log_prob, entropy
            logits = tf.where(allowed, logits, _MASKED)
            logp = tf.nn.log_softmax(logits)
            if seed is None:
                pick = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                step_seed = tf.random.experimental.stateless_fold_in(seed, decision)
                pick = tf.random.stateless_categorical(logits, 1, seed=step_seed, dtype=tf.int32)[:, 0]
            decision += 1
            log_prob += tf.gather(logp, pick, axis=1, batch_dims=1)
            entropy += -tf.reduce_sum(tf.exp(logp) * logp, axis=-1)
            return pick

        def advance(token):
            nonlocal state
            h, state = self.lstm(self.embedding(token), state)
            return h

        for cell in range(2):
            h = advance(tf.fill([B], cell))
            skips = tf.zeros([B], tf.int32)
            cell_inputs, cell_ops = [], []
            for i in range(N):
                readable = tf.broadcast_to(tf.range(self.max_inputs) < i + 2, [B, self.max_inputs])
                node_inputs, node_ops = [], []
                for _ in range(2):
                    allowed = readable
                    if node_inputs:  # the second input differs from the first
                        allowed = allowed & tf.logical_not(tf.one_hot(node_inputs[0], self.max_inputs) > 0)
                    j = choose(self.input_head(h), allowed)
                    h = advance(2 + j)
                    allowed_ops = tf.ones([B, self.num_ops], tf.bool)
                    if cell == 0 and skip_op is not None and max_skip is not None:
                        capped = (skips >= max_skip)[:, tf.newaxis] & (tf.range(self.num_ops) == skip_op)
                        allowed_ops = tf.logical_not(capped)
                    k = choose(self.op_head(h), allowed_ops)
                    if skip_op is not None:
                        skips += tf.cast(tf.equal(k, skip_op), tf.int32)
                    h = advance(2 + self.max_inputs + k)
                    node_inputs.append(j)
                    node_ops.append(k)
                cell_inputs.append(tf.stack(node_inputs, axis=1))
                cell_ops.append(tf.stack(node_ops, axis=1))
            all_inputs.append(tf.stack(cell_inputs, axis=1))
            all_ops.append(tf.stack(cell_ops, axis=1))
        return {"inputs": tf.stack(all_inputs, axis=1), "ops": tf.stack(all_ops, axis=1),
                "log_prob": log_prob, "entropy": entropy}


@register_strategy("reinforce")
class ReinforceStrategy(SampledPathStrategy):
    """ENAS: an LSTM controller trained by REINFORCE (EMA baseline, entropy bonus) on shared weights."""

    marginal_samples = 256

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        super().__init__(models, config, max_caption_len=max_caption_len)
        if config.controller_units < 1:
            raise ValueError(f"--controller_units must be >= 1; received {config.controller_units}.")
        if not 0.0 <= config.reinforce_baseline_decay < 1.0:
            raise ValueError("--reinforce_baseline_decay must be in [0, 1); received "
                             f"{config.reinforce_baseline_decay}.")
        if config.controller_lr <= 0:
            raise ValueError(f"--controller_lr must be > 0; received {config.controller_lr}.")
        self.columns = op_columns(self.primitives)  # controller op index → column of A
        self.controller = Controller(num_nodes=self.num_nodes, num_ops=len(self.columns),
                                     units=config.controller_units, name="controller")
        self.controller.build()
        self.controller_optimizer = FusedAdam(config.controller_lr)
        self.controller_optimizer.build(self.controller.trainable_variables)
        # Every replica samples the same child and sees the same all-reduced reward.
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.baseline = tf.Variable(0.0, trainable=False, name="reinforce_baseline", aggregation=first)
        self.controller_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="controller_steps",
                                            aggregation=first)

    def checkpoint_items(self) -> dict:
        return dict(super().checkpoint_items(), controller=model_state(self.controller),
                    controller_optimizer=self.controller_optimizer, reinforce_baseline=self.baseline,
                    controller_steps=self.controller_steps)

    # -- children -------------------------------------------------------------------------------
    def child_path(self, child: dict, index: int = 0) -> tuple:
        """The op weights of child `index` of a rollout."""
        columns = tf.constant(self.columns, tf.int32)
        return tuple(op_weights_from_choices(child["inputs"][index, cell],
                                             tf.gather(columns, child["ops"][index, cell]),
                                             num_nodes=self.num_nodes, num_ops=len(self.primitives))
                     for cell in range(2))

    def training_path(self, seed) -> tuple:
        return self.child_path(self.controller.rollout(1, seed=seed))

    # -- REINFORCE ------------------------------------------------------------------------------
    def reinforce_step(self, reward_fn) -> dict:
        """One controller update with the reward `reward_fn(child) -> scalar` of a sampled child."""
        variables = self.controller.trainable_variables
        with tf.GradientTape() as tape:
            child = self.controller.rollout(1, seed=self.seed(ARCH))
            with tape.stop_recording():  # the reward is a constant of θ
                reward = tf.cast(reward_fn(child), tf.float32)
            baseline = tf.where(self.controller_steps > 0, self.baseline, reward)
            advantage = reward - baseline
            objective = (-advantage * child["log_prob"][0]
                         - self.config.reinforce_entropy_weight * child["entropy"][0])
        # Identical on every replica (same child, same reward): no all-reduce.
        grads = densify(tape.gradient(objective, variables), variables)  # the embedding's: IndexedSlices
        norm = apply_global_gradients(self.controller_optimizer, grads, variables)
        decay = self.config.reinforce_baseline_decay
        self.baseline.assign(decay * baseline + (1.0 - decay) * reward)
        self.controller_steps.assign_add(1)
        return {"reinforce/reward": reward, "reinforce/advantage": advantage, "reinforce/baseline": baseline,
                "reinforce/entropy": child["entropy"][0], "arch/grad_norm": norm}

    def architecture_step(self, batches: dict) -> dict:
        batch = batches["val"]

        def reward(child):
            loss = self.loss_on_path(batch, self.child_path(child), training_decoder=False)
            return tf.exp(-all_reduce_sum([loss])[0])

        return self.reinforce_step(reward)

    # -- outputs --------------------------------------------------------------------------------
    def A_values(self):
        """log P(op k on edge e) under π_θ, estimated from `marginal_samples` children (fixed seed)."""
        child = self.controller.rollout(self.marginal_samples, seed=tf.constant([self.run_seed, -1], tf.int64))
        inputs, ops = child["inputs"].numpy(), np.asarray(self.columns)[child["ops"].numpy()]
        counts = np.zeros((2, num_edges(self.num_nodes), len(self.primitives)))
        offsets = np.array([num_edges(i) for i in range(self.num_nodes)])[None, None, :, None]
        cells = np.broadcast_to(np.arange(2)[None, :, None, None], inputs.shape)
        np.add.at(counts, (cells, offsets + inputs, ops), 1.0)
        p = np.maximum(counts / self.marginal_samples, 1e-6)  # floor: finite logs for unseen choices
        return [tf.constant(np.log(p[0]), tf.float32), tf.constant(np.log(p[1]), tf.float32)]

    def derive_genotype(self, *, primitives, num_nodes: int, max_skip_connect: int | None):
        if tuple(primitives) != self.primitives or num_nodes != self.num_nodes:
            raise ValueError(f"ReinforceStrategy.derive_genotype: the controller emits {self.num_nodes} nodes over "
                             f"{list(self.primitives)}; asked for {num_nodes} nodes over {list(primitives)}.")
        names = [self.primitives[k] for k in self.columns]
        skip_op = names.index("skip_connect") if "skip_connect" in names else None
        child = self.controller.rollout(1, skip_op=skip_op, max_skip=max_skip_connect)
        cells = []
        for cell in range(2):
            gene = []
            for i in range(num_nodes):
                pairs = zip(child["inputs"][0, cell, i].numpy(), child["ops"][0, cell, i].numpy())
                gene += sorted((int(j), names[int(k)]) for j, k in pairs)
            cells.append([(name, j) for j, name in gene])
        concat = list(range(2, 2 + num_nodes))
        return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat)
