"""Search strategies behind one interface: each updates A from one batch of each stream and then takes
the weight steps. The loop (`loop.py`) drives any of them the same way; it never branches on a name.

Gradients across replicas: every gradient here is first summed over replicas (`all_reduce_sum`),
because the virtual steps E', F', W' must be the single-device ones on the global batch, and clipping
must see the global norm. Keras optimizers sum gradients over replicas again when they apply them,
so `apply_global_gradients` hands each replica 1/N of the global gradient.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from capnas_tf.checkpointing import model_state
from capnas_tf.distribute import all_reduce_sum, replicas_in_sync
from capnas_tf.optimizers import FusedAdam, FusedAdamW
from capnas_tf.registry import Registry
from capnas_tf.search import hypergradient as hg
from capnas_tf.search import precision
from capnas_tf.search.captioning import (
    SearchModels,
    get_stage2_loss,
    make_three_stage_problem,
    supernet_logits,
    supernet_loss,
    teacher_greedy_captions,
)
from capnas_tf.search.gradients import gradients
from capnas_tf.search.stateless import bind, collect_state_updates, dot, global_norm, values_of
from capnas_tf.search_space.ops import second_order_batch_norm

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig


def apply_global_gradients(optimizer: keras.optimizers.Optimizer, grads: list, variables: list,
                           clip_norm: float | None = None) -> tf.Tensor:
    """Applies already-reduced gradients (clipped to `clip_norm` by global norm); returns their norm."""
    norm = global_norm(grads)
    if clip_norm:  # tf.clip_by_global_norm's scale, without its identity op per gradient
        scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)
        grads = [g * tf.cast(scale, g.dtype) for g in grads]
    replicas = replicas_in_sync()
    if replicas > 1:
        grads = [g / replicas for g in grads]
    optimizer.apply_gradients(zip(grads, variables))
    return norm


def _scoped(name: str):
    """Method decorator: the method's ops in name scope `name`, which is how a profile
    (benchmarks/profile_step.py) attributes their time; values are unchanged."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            with tf.name_scope(name):
                return method(*args, **kwargs)
        return wrapper
    return decorate


# The hypergradients that differentiate the supernet twice (nested tapes, or a JVP of its gradient): their
# passes take BatchNorm's `_moments` path (`second_order_batch_norm`), faster there than the fused kernel,
# whose second derivative re-derives its gradient, and the same function in both, so that they agree to rounding.
SECOND_ORDER_HYPERGRADIENTS = ("exact", "forward_over_reverse")

# The metric of an A step's `successive_cosine`, averaged per epoch into A's history by the loop.
SUCCESSIVE_COSINE = "arch/successive_cosine"

# How the weight decay λ of A enters its optimizer (`SearchConfig.arch_weight_decay_mode`).
ARCH_WEIGHT_DECAY_MODES = ("coupled", "decoupled")


class CoupledWeightDecayAdam(FusedAdam):
    """Adam on ∇A + λA: the L2 term is added to the gradient before the moment estimates, as
    torch.optim.Adam's `weight_decay` does (DARTS' optimizer of A). Unlike AdamW's decoupled decay
    (A ← A − η_a λ A beside the Adam step), λA is then normalised by Adam's √v like the gradient.

    λ is added after any clipping of the gradient (which `apply_global_gradients` does before the
    optimizer sees it), so that the clip bounds the hypergradient, not the regulariser.

    With `beta_decay` = λ_β > 0 it also adds β-DARTS' Beta-Decay gradient λ_t softmax(A_e) / #edges to each
    edge's row (the gradient of λ_t · mean over edges of logsumexp(A_e)), λ_t = λ_β · t / (T − 1) at A's step
    t of T (`beta_decay_steps`, set before the first step is traced)."""

    def __init__(self, learning_rate=0.001, l2: float = 0.0, beta_decay: float = 0.0, edges: int = 1, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.l2 = l2
        self.beta_decay = beta_decay
        self.edges = edges
        self.beta_decay_steps = 1

    def beta_decay_weight(self) -> tf.Tensor:
        """λ_t: 0 at A's first step, λ_β at its last (`iterations` counts the steps already taken)."""
        done = tf.cast(self.iterations, tf.float32)
        return self.beta_decay * tf.minimum(1.0, done / max(1, self.beta_decay_steps - 1))

    def update_step(self, gradient, variable, learning_rate):
        gradient = tf.cast(gradient, variable.dtype)
        if self.l2:  # λ = 0: plain Adam, without the extra ops
            # λ straight to the variable's dtype (tf.cast of a Python float rounds it to float32 first)
            gradient = gradient + tf.constant(self.l2, variable.dtype) * variable
        if self.beta_decay:
            weight = tf.cast(self.beta_decay_weight(), variable.dtype) / self.edges
            gradient = gradient + weight * tf.nn.softmax(tf.convert_to_tensor(variable), axis=-1)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return dict(super().get_config(), l2=self.l2, beta_decay=self.beta_decay, edges=self.edges)


def _arch_optimizer(config: SearchConfig, edges: int = 1) -> keras.optimizers.Optimizer:
    """DARTS' optimizer of A: Adam with β = (0.5, 0.999) and weight decay λ = arch_weight_decay, as L2 on
    the gradient ("coupled", torch.optim.Adam's weight_decay, DARTS' own) or decoupled (AdamW); with
    β-DARTS' Beta-Decay over the `edges` rows of A when `arch_beta_decay` > 0 (coupled only)."""
    if config.arch_weight_decay_mode == "coupled":
        return CoupledWeightDecayAdam(config.arch_lr, l2=config.arch_weight_decay, beta_decay=config.arch_beta_decay,
                                      edges=edges, beta_1=0.5, beta_2=0.999)
    return FusedAdamW(config.arch_lr, beta_1=0.5, beta_2=0.999,
                                  weight_decay=config.arch_weight_decay)


class SuccessiveCosines:
    """The cosine of each A step's gradient with the previous A step's, cos(∇A_t, ∇A_{t−1}), and their sum
    and count since the last `take_mean`: mostly noise when the mean is near 0 (successive batches
    disagree), a consistent direction when it is near 1. The first A step of a search has no previous one
    and is not counted.

    Checkpointed with the search (a resumed run continues the same sums). Every replica computes the same
    all-reduced gradient, so the first replica's update is every replica's."""

    def __init__(self, A: list):
        state = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.previous = [tf.Variable(tf.zeros(a.shape, tf.float32), name=f"previous_grad_A_{i}", **state)
                         for i, a in enumerate(A)]
        self.total = tf.Variable(0.0, name="successive_cosine_sum", **state)
        self.count = tf.Variable(0.0, name="successive_cosine_count", **state)

    def variables(self) -> list:
        return [*self.previous, self.total, self.count]

    def update(self, grads: list) -> tf.Tensor:
        """Returns cos(∇A_t, ∇A_{t−1}) (0 at the first A step), adds it to the sums, remembers ∇A_t."""
        grads = [tf.cast(g, tf.float32) for g in grads]
        previous = [tf.convert_to_tensor(p) for p in self.previous]
        norms = global_norm(grads) * global_norm(previous)
        cosine = tf.math.divide_no_nan(dot(grads, previous), norms)
        compared = tf.cast(norms > 0, tf.float32)
        with tf.control_dependencies([cosine]):
            updates = [p.assign(g) for p, g in zip(self.previous, grads)]
            updates += [self.total.assign_add(compared * cosine), self.count.assign_add(compared)]
        with tf.control_dependencies(updates):
            return tf.identity(cosine)

    def take_mean(self) -> float | None:
        """The mean cosine since the last call (None: no A step compared), and starts the sums over."""
        count, total = float(self.count.read_value()), float(self.total.read_value())
        self.total.assign(0.0)
        self.count.assign(0.0)
        return total / count if count else None


class SearchStrategy:
    """Base: holds the models and optimizers; `step` = architecture update, then weight updates.

    Subclasses implement `architecture_step(batches) -> metrics` and may extend `weight_step`. What a
    strategy needs it declares in the class attributes and class methods below, which the model building
    (`models.build_search_models`) and the precision checks (`precision.check_precision`) ask before
    a strategy exists.
    """

    # Whether it trains a Stage II student W (only then are W's variables created).
    uses_student = False
    # Whether every tape of its steps applies the loss scale S, so that it may compute in mixed precision.
    supports_mixed_precision = False

    @classmethod
    def is_second_order(cls, config: SearchConfig) -> bool:
        """Whether A's gradient under `config` goes through a virtual weight step (a Hessian-vector
        product: by nested tapes, or by finite differences that perturb the weights)."""
        return False

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        self.models = models
        self.config = config
        self.max_caption_len = max_caption_len
        precision.check_precision(config, type(self))
        self.loss_scale = precision.loss_scale(config)  # S of every tape (1 unless mixed_float16)
        self.weight_optimizer = FusedAdamW(config.weight_lr, weight_decay=config.weight_decay)
        self.arch_optimizer = _arch_optimizer(config, edges=sum(int(a.shape[0]) for a in models.A))
        self.weight_optimizer.build(models.E + models.F)
        self.arch_optimizer.build(models.A)
        self.successive_cosines = SuccessiveCosines(models.A)

    # -- values ---------------------------------------------------------------------------------
    def A_values(self):
        """A, or for a strategy without A what plays its role (written to alpha_history.jsonl and
        shown as the heatmap): two `[E, K]` tensors whose row-wise softmax is a distribution over ops."""
        return values_of(self.models.A)

    def derive_genotype(self, *, primitives, num_nodes: int, max_skip_connect: int | None):
        """The architecture found so far (the loop writes it to genotype.json every epoch).
        Default: DARTS' rule on A; strategies whose answer is not argmax(A) override it."""
        from capnas_tf.search_space.genotypes import derive_genotype

        alpha_normal, alpha_reduce = (tf.convert_to_tensor(a).numpy() for a in self.A_values())
        return derive_genotype(alpha_normal, alpha_reduce, primitives=primitives, num_nodes=num_nodes,
                               max_skip_connect=max_skip_connect)

    def describe(self) -> str:
        """The settings that matter for this strategy, for the run's first log line."""
        return self.config.strategy

    def begin_search(self, *, total_steps: int, warmup_steps: int) -> None:
        """Called by the loop before the first (or first resumed) step with the run's length, for
        schedules that depend on it (Beta-Decay's weight, GDAS' temperature, random_ws' final ranking)."""
        if isinstance(self.arch_optimizer, CoupledWeightDecayAdam):
            self.arch_optimizer.beta_decay_steps = int(total_steps) - int(warmup_steps)

    def checkpoint_items(self) -> dict:
        return dict(encoder=model_state(self.models.encoder), decoder=model_state(self.models.decoder),
                    weight_optimizer=self.weight_optimizer, arch_optimizer=self.arch_optimizer,
                    successive_cosines=self.successive_cosines.variables())

    # -- steps ----------------------------------------------------------------------------------
    def architecture_step(self, batches: dict) -> dict:
        raise NotImplementedError

    @_scoped("supernet_weight_step")
    def supernet_weight_step(self, batch: dict) -> dict:
        """E, F ← one optimizer step on L(E, F, A; D_tr) at the current A."""
        A = self.A_values()
        variables = self.models.E + self.models.F
        loss, (grads,) = gradients(lambda: supernet_loss(self.models, batch, A), [variables], all_reduce_sum,
                                   self.loss_scale)
        return self.apply_supernet_gradients(loss, grads)

    def weight_step(self, batches: dict) -> dict:
        return self.supernet_weight_step(batches["train"])

    def step(self, batches: dict, *, update_architecture: bool) -> dict:
        metrics = self.architecture_step(batches) if update_architecture else {}
        # Only reads of A order the weight step after the architecture step, and everything before a
        # cell's first mixing weight (the stem, the first cell's candidates) reads none: in a traced step
        # the executor would start it beside the hypergradient and hold its activations through the
        # hypergradient's memory peak (profile_step.py's memory table). The architecture step's metrics
        # are its last values (|∇_A| for the hypergradient strategies).
        with tf.control_dependencies([t for t in tf.nest.flatten(metrics) if tf.is_tensor(t)]):
            metrics.update(self.weight_step(batches))
        return metrics

    def successive_cosine(self, grads: list) -> tf.Tensor:
        """cos(∇A_t, ∇A_{t−1}) of this A step's already-reduced, unclipped gradient (`SuccessiveCosines`)."""
        return self.successive_cosines.update(grads)

    def apply_architecture_gradients(self, grads: list) -> tf.Tensor:
        """A ← one step of its optimizer on already-reduced ∇A, clipped to `arch_grad_clip` by global
        norm (0: not clipped); returns ‖∇A‖ before clipping."""
        return apply_global_gradients(self.arch_optimizer, grads, self.models.A, self.config.arch_grad_clip)

    @_scoped("supernet_update")
    def apply_supernet_gradients(self, loss: tf.Tensor, grads: list) -> dict:
        """E, F ← one optimizer step on already-reduced gradients ∇_{E,F} L_tr (E's part, then F's)."""
        norm = apply_global_gradients(self.weight_optimizer, grads, self.models.E + self.models.F,
                                      self.config.grad_clip)
        return {"stage1/train_loss": loss, "stage1/grad_norm": norm}


class UnrolledStrategy(SearchStrategy):
    """Base of the strategies whose A follows a hypergradient through virtual weight steps (three_stage,
    darts): `hypergradient(batches)` computes it with the unrolled state, `apply_hypergradient` takes A's
    step, and with `reuse_unrolled_gradients` the weight steps reuse the gradients the virtual steps took
    (`step`)."""

    supports_mixed_precision = True

    @classmethod
    def is_second_order(cls, config: SearchConfig) -> bool:
        return True

    def nested_tapes(self) -> bool:
        """Whether the hypergradient differentiates a gradient again (second order by nested tapes), which
        is when BatchNorm must take its `_moments` path (`second_order_batch_norm`)."""
        return self.is_second_order(self.config) and self.config.hypergradient in SECOND_ORDER_HYPERGRADIENTS

    @property
    def reuses_unrolled_gradients(self) -> bool:
        return self.config.reuse_unrolled_gradients and self.is_second_order(self.config)

    def hypergradient(self, batches: dict):
        """∇_A at the current weights and A (no update), with the state of the virtual steps."""
        raise NotImplementedError

    def apply_hypergradient(self, result) -> dict:
        """A ← one step on `result.grad_A`; returns the metrics."""
        raise NotImplementedError

    def apply_unrolled_weight_gradients(self, result) -> dict:
        """The weight steps on the gradients the virtual steps of `result` took; returns the metrics."""
        raise NotImplementedError

    def architecture_step(self, batches: dict) -> dict:
        return self.apply_hypergradient(self.hypergradient(batches))

    def step(self, batches: dict, *, update_architecture: bool) -> dict:
        """With `reuse_unrolled_gradients`, every update of the step comes from the state at its start
        (A_t and the weights), simultaneously instead of alternating: A ← opt(∇_A), and the weights ←
        opt(the gradients their virtual steps already took; `apply_unrolled_weight_gradients`), which
        saves the weight steps' own passes."""
        if not (update_architecture and self.reuses_unrolled_gradients):
            return super().step(batches, update_architecture=update_architecture)
        # No pass of this step runs on the variables themselves, so the state the weight steps would have
        # updated (BatchNorm's moving statistics, dropout's seed generators) is taken from the passes whose
        # gradients they reuse (`StateUpdates`).
        with collect_state_updates() as state_updates:
            result = self.hypergradient(batches)
        metrics = self.apply_hypergradient(result)
        metrics.update(self.apply_unrolled_weight_gradients(result))
        state_updates.assign()
        return metrics


class ThreeStageStrategy(UnrolledStrategy):
    """The three-stage method: A by the hypergradient through E', F', W' (exact or finite differences);
    then E, F on D_tr, and W on the pseudo-captions of the updated E, F."""

    uses_student = True

    def __init__(self, models: SearchModels, config: SearchConfig, *, max_caption_len: int):
        super().__init__(models, config, max_caption_len=max_caption_len)
        self.student_optimizer = FusedAdamW(config.student_lr, weight_decay=config.weight_decay)
        self.student_optimizer.build(models.W)
        self.eta = hg.InnerLearningRates(config.eta_e, config.eta_f, config.eta_w)
        self.estimate = functools.partial(hg.get_hypergradient(config.hypergradient),
                                          terms=config.hypergradient_terms, epsilon=config.fd_epsilon)
        self.stage2_loss = get_stage2_loss(config.stage2)

    def checkpoint_items(self) -> dict:
        return dict(super().checkpoint_items(), student=model_state(self.models.student),
                    student_optimizer=self.student_optimizer)

    def hypergradient(self, batches: dict) -> hg.Hypergradient:
        """∇_A L(W'; D_val) at the current E, F, W, A (no update)."""
        problem = make_three_stage_problem(self.models, batches, stage2=self.config.stage2,
                                           max_caption_len=self.max_caption_len,
                                           reduce_gradients=all_reduce_sum, loss_scale=self.loss_scale)
        m = self.models
        # Second-order estimators take BatchNorm's `_moments` path, the finite differences its fused kernel.
        with second_order_batch_norm(m.all(), self.nested_tapes()):
            return self.estimate(problem, self.A_values(), values_of(m.E), values_of(m.F), values_of(m.W),
                                 self.eta)

    def describe(self) -> str:
        reuse = ", weight steps reuse the unrolled gradients" if self.config.reuse_unrolled_gradients else ""
        terms = ", paper's terms" if self.config.hypergradient_terms == "paper" else ""
        return (f"three_stage ({self.config.hypergradient} hypergradient{terms}, stage2={self.config.stage2}"
                f"{reuse})")

    @_scoped("architecture_update")
    def apply_hypergradient(self, result: hg.Hypergradient) -> dict:
        cosine = self.successive_cosine(result.grad_A)
        norm = self.apply_architecture_gradients(result.grad_A)
        s = result.state
        return {"stage1/virtual_train_loss": s.train_loss, "stage2/virtual_loss": s.pseudo_caption_loss,
                "stage3/val_loss": s.val_loss, "arch/hypergradient_norm": norm, SUCCESSIVE_COSINE: cosine}

    def apply_unrolled_weight_gradients(self, result: hg.Hypergradient) -> dict:
        """E, F ← opt(∇_{E,F} L_tr(E, F, A_t)) and W ← opt(∇_W L(W, U, E', F')), the gradients the virtual
        steps E', F', W' took. That saves a Stage I forward and backward, the teacher's greedy decode of
        U, and the student's step. W then learns from the virtual teacher E', F' (one SGD step of size
        η_e, η_f from E, F) rather than from the teacher after its optimizer step. The state updates of
        E, F come from Stage I's pass, W's from Stage II's."""
        s = result.state
        metrics = self.apply_supernet_gradients(s.train_loss, s.train_grads)
        with tf.name_scope("student_update"):
            norm = apply_global_gradients(self.student_optimizer, s.student_grads, self.models.W,
                                          self.config.grad_clip)
        metrics.update({"stage2/student_loss": s.pseudo_caption_loss, "stage2/grad_norm": norm})
        return metrics

    @_scoped("student_weight_step")
    def student_weight_step(self, images: tf.Tensor) -> dict:
        """W ← one optimizer step on L(W, U, E, F) against the current teacher's captions of U."""
        m = self.models
        A = self.A_values()
        tokens = tf.stop_gradient(teacher_greedy_captions(m, images, A, self.max_caption_len))
        teacher_logits = tf.stop_gradient(
            supernet_logits(m, images, tokens[:, :-1], A, training_decoder=False))

        def loss_fn():
            student = lambda t: m.student(images, t, training=True)  # noqa: E731
            return self.stage2_loss(student, teacher_logits, tokens)

        loss, (grads,) = gradients(loss_fn, [m.W], all_reduce_sum, self.loss_scale)
        norm = apply_global_gradients(self.student_optimizer, grads, m.W, self.config.grad_clip)
        return {"stage2/student_loss": loss, "stage2/grad_norm": norm}

    def weight_step(self, batches: dict) -> dict:
        metrics = self.supernet_weight_step(batches["train"])
        metrics.update(self.student_weight_step(batches["unlabeled"]["image"]))
        return metrics


class DartsStrategy(UnrolledStrategy):
    """Plain DARTS bilevel search on captions: A minimises the validation caption loss of E, F itself,
    first order or second order (the latter by nested tapes, forward-over-reverse or DARTS' finite difference)."""

    @classmethod
    def is_second_order(cls, config: SearchConfig) -> bool:
        return config.darts_order == 2

    def describe(self) -> str:
        c = self.config
        reuse = ", weight step reuses the unrolled gradient" if self.reuses_unrolled_gradients else ""
        return f"darts (order {c.darts_order}" + (f", {c.hypergradient}{reuse})" if c.darts_order == 2 else ")")

    def _loss_on(self, batch):
        def loss(w, A):
            n = len(self.models.E)
            with bind((self.models.E, w[:n]), (self.models.F, w[n:])):
                return supernet_loss(self.models, batch, A)
        return loss

    def hypergradient(self, batches: dict) -> hg.DartsHypergradient:
        m = self.models
        w = values_of(m.E) + values_of(m.F)
        method = self.config.hypergradient
        with second_order_batch_norm(m.all(), self.nested_tapes()):
            return hg.darts_hypergradient_with_state(
                self._loss_on(batches["train"]), self._loss_on(batches["val"]), self.A_values(), w,
                self.config.eta_e, order=self.config.darts_order, method=method,
                epsilon=self.config.fd_epsilon, reduce_gradients=all_reduce_sum, loss_scale=self.loss_scale)

    @_scoped("architecture_update")
    def apply_hypergradient(self, result: hg.DartsHypergradient) -> dict:
        cosine = self.successive_cosine(result.grad_A)
        norm = self.apply_architecture_gradients(result.grad_A)
        return {"darts/val_loss": result.val_loss, "arch/hypergradient_norm": norm, SUCCESSIVE_COSINE: cosine}

    def apply_unrolled_weight_gradients(self, result: hg.DartsHypergradient) -> dict:
        """w ← opt(∇_w L_train(w, A_t)), the gradient the virtual step w' = w − η ∇_w L_train took (order 2
        only: order 1 takes no virtual step): one forward and backward of the supernet fewer than DARTS'
        alternation, which recomputes ∇_w L_train at the updated A. The state updates of E, F come from
        the L_train pass."""
        return self.apply_supernet_gradients(result.train_loss, result.train_grads)


STRATEGIES = Registry("search strategy", register_name="register_strategy", lookup_name="get_strategy",
                      entries={"three_stage": ThreeStageStrategy, "darts": DartsStrategy})


def register_strategy(name: str):
    """Class decorator: makes a `SearchStrategy` subclass available as `--search_strategy=name`."""
    return STRATEGIES.register(name)


def get_strategy(name: str) -> type[SearchStrategy]:
    """The strategy class registered as `name`. The baselines (gdas, random_ws, reinforce) live in
    modules of their own, which `capnas_tf/search/__init__.py` imports so that they register."""
    return STRATEGIES.lookup(name, f"--search_strategy must be one of {sorted(STRATEGIES)}, received {name!r}.")
