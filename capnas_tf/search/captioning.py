"""The three losses of the method, on captioning models, as functions of explicit weights.

    L_tr(E, F, A)          caption loss of the supernet captioner (E with architecture A, decoder F) on D_tr
    L_u(W, E', F', A)      the student W's loss on the teacher's (E', F') captions of the unlabeled images U
    L_val(W)               the student's caption loss on D_val

Stage II needs L_u to be differentiable in E' and F' although the teacher's captions are discrete.
Two ways, chosen by name (`STAGE2_LOSSES`):

* `soft` (default): the teacher greedily decodes ŷ (no gradient); then, teacher-forced on ŷ, it gives a
  distribution p_t = softmax(F'(E'(u; A), ŷ_{<t})) at every position, and W is trained against it:
  L_u = −Σ_t Σ_v p_t(v) log W(v | u, ŷ_{<t}). p depends smoothly on E', F', A. Default because its
  gradient is the exact gradient of a well-defined loss, which the finite-difference checks can verify.
* `straight_through`: y_t = onehot(argmax p_t) + p_t − stop_gradient(p_t). The forward pass is the hard
  pseudo-caption; the backward pass is that of p. W embeds the rows y_t (a matrix product with its
  embedding table) and is trained against them, as in the public re-implementation of the method.
  Its gradient is biased (that of a surrogate), so it is offered, not preferred.

Losses are sums over tokens divided by the *global* token count: under tf.distribute each replica
holds a shard, and Σ_replicas(local sum) / global count is the single-device loss on the global batch.
Every cross-entropy here is −Σ p·log_softmax, never the fused op, whose second derivative in its
labels is silently zero (BUILD_NOTES.md).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from capnas_tf.data.text import END_ID, PAD_ID, START_ID
from capnas_tf.decoders.decoding import greedy_decode, never_generated
from capnas_tf.decoders.losses import caption_loss, float_logits, mean_over_tokens, soft_token_nll_sum, token_mask
from capnas_tf.registry import Registry
from capnas_tf.search.hypergradient import ThreeStageProblem
from capnas_tf.search.stateless import bind



# --- Stage II losses --------------------------------------------------------------------------------

def soft_pseudo_caption_loss(student_logits_fn: Callable, teacher_logits: tf.Tensor,
                             tokens: tf.Tensor) -> tf.Tensor:
    """W against the teacher's teacher-forced distributions p_t (see module docstring)."""
    targets = tokens[:, 1:]
    p = tf.nn.softmax(float_logits(teacher_logits))
    logits = student_logits_fn(tokens[:, :-1])
    return mean_over_tokens(soft_token_nll_sum(logits, p, token_mask(targets)), targets)


def straight_through_pseudo_caption_loss(student_logits_fn: Callable, teacher_logits: tf.Tensor,
                                         tokens: tf.Tensor) -> tf.Tensor:
    """W on straight-through one-hot rows y = onehot(argmax p) + p − sg(p), as input and as target (argmax
    over the words greedy decoding may choose)."""
    targets = tokens[:, 1:]
    p = tf.nn.softmax(float_logits(teacher_logits))
    # The same choice as the teacher's greedy decode, which never picks <start> or <pad>.
    allowed = p + tf.cast(never_generated(tf.shape(p)[-1]), p.dtype)
    hard = tf.one_hot(tf.argmax(allowed, axis=-1, output_type=tf.int32), tf.shape(p)[-1], dtype=p.dtype)
    rows = hard + p - tf.stop_gradient(p)  # [B, T, V]: forward hard, backward soft
    # The decoder input at t is the token predicted at t − 1; position 0 is <start>.
    start = tf.one_hot(tokens[:, :1], tf.shape(p)[-1], dtype=p.dtype)
    inputs = tf.concat([start, rows[:, :-1]], axis=1)
    logits = student_logits_fn(inputs)
    return mean_over_tokens(soft_token_nll_sum(logits, rows, token_mask(targets)), targets)


STAGE2_LOSSES = Registry("Stage II loss", register_name="register_stage2_loss", lookup_name="get_stage2_loss",
                         entries={"soft": soft_pseudo_caption_loss,
                                  "straight_through": straight_through_pseudo_caption_loss})


def register_stage2_loss(name: str, fn: Callable | None = None):
    """Adds a Stage II loss `fn(student_logits_fn, teacher_logits, tokens) -> scalar`; usable as a
    decorator; another function under a taken name is an error."""
    return STAGE2_LOSSES.register(name, fn)


def get_stage2_loss(name: str) -> Callable:
    return STAGE2_LOSSES.lookup(name, f"Unknown stage2 loss {name!r}; expected one of {sorted(STAGE2_LOSSES)}.")


# --- The problem ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SearchModels:
    """The models of the search. E = encoder.trainable_variables, A = encoder.arch_variables,
    F = decoder.trainable_variables, W = student.trainable_variables (None without a student: only
    the strategies that train one have it, `SearchStrategy.uses_student`)."""

    encoder: keras.Model
    decoder: keras.layers.Layer
    student: keras.Model | None
    relax: Callable  # A (list of two tensors) -> op_weights (w_normal, w_reduce)

    @property
    def E(self):
        return self.encoder.trainable_variables

    @property
    def F(self):
        return self.decoder.trainable_variables

    @property
    def W(self):
        if self.student is None:
            raise ValueError("SearchModels: these models have no student W; they were built for a search strategy "
                             "that trains none (SearchStrategy.uses_student).")
        return self.student.trainable_variables

    @property
    def A(self):
        return self.encoder.arch_variables

    def all(self) -> list:
        """E's, F's and (if there is one) W's models."""
        return [self.encoder, self.decoder] + ([] if self.student is None else [self.student])


def path_logits(models: SearchModels, images, tokens_in, op_weights, *, training_decoder=True,
                one_op_per_edge: bool = False):
    """F(E(images; op_weights), tokens_in) at whatever weights are bound: the supernet captioner at
    explicit op weights (a relaxed A, or a one-hot path). BatchNorm uses batch statistics, as everywhere
    in the search. `one_op_per_edge`: `op_weights` is a one-hot path and each edge computes only its
    selected op (`SupernetEncoder`)."""
    extra = {"one_op_per_edge": True} if one_op_per_edge else {}  # encoders without the option work as before
    features = models.encoder(images, training=True, op_weights=tuple(op_weights), **extra)
    return models.decoder(features, tokens_in, training=training_decoder)


def path_greedy_ids(models: SearchModels, images, op_weights, max_caption_len: int) -> tf.Tensor:
    """Greedy decode by E (at `op_weights`) and F at the bound weights: `w1 … <end> <pad> …`,
    int32 [B, max_caption_len − 1]."""
    features = models.encoder(images, training=True, op_weights=tuple(op_weights))
    ids, _ = greedy_decode(models.decoder, features, max_len=max_caption_len - 1,
                           start_id=START_ID, end_id=END_ID, pad_id=PAD_ID)
    return ids


def supernet_logits(models: SearchModels, images, tokens_in, A, *, training_decoder=True):
    """F(E(images; A), tokens_in) at whatever weights are bound."""
    return path_logits(models, images, tokens_in, models.relax(A), training_decoder=training_decoder)


def path_loss(models: SearchModels, batch: dict, op_weights, *, training_decoder: bool = True,
              one_op_per_edge: bool = False) -> tf.Tensor:
    """The caption loss of the supernet captioner at `op_weights` (a relaxed A, or a one-hot path) on
    `batch` ({"image", "tokens"}, teacher-forced on tokens[:, :-1]), at whatever weights are bound;
    `one_op_per_edge`: `op_weights` is a one-hot path and each edge computes only the op it selects."""
    logits = path_logits(models, batch["image"], batch["tokens"][:, :-1], op_weights,
                         training_decoder=training_decoder, one_op_per_edge=one_op_per_edge)
    return caption_loss(logits, batch["tokens"])


def supernet_loss(models: SearchModels, batch: dict, A) -> tf.Tensor:
    """L(E, F, A; batch): the caption loss of the supernet captioner at architecture A (relaxed by
    `models.relax`) on `batch`, at whatever weights are bound."""
    return path_loss(models, batch, models.relax(A))


def teacher_greedy_captions(models: SearchModels, images, A, max_caption_len: int) -> tf.Tensor:
    """ŷ: `<start>` + greedy decode by E, F at the bound weights. int32 [B, max_caption_len]."""
    ids = path_greedy_ids(models, images, models.relax(A), max_caption_len)
    start = tf.fill([tf.shape(ids)[0], 1], tf.constant(START_ID, ids.dtype))
    return tf.cast(tf.concat([start, ids], axis=1), tf.int32)


def make_three_stage_problem(models: SearchModels, batches: dict, *, stage2: str = "soft",
                             max_caption_len: int, reduce_gradients: Callable | None = None,
                             loss_scale: float = 1.0) -> ThreeStageProblem:
    """L_tr, pseudo-captions, L_u, L_val on one batch each of D_tr, U, D_val (and the tapes' loss
    scale S, `precision.py`).

    `batches` has "train" {"image", "tokens"}, "unlabeled" {"image"}, "val" {"image", "tokens"}.
    """
    stage2_loss = get_stage2_loss(stage2)
    train, unlabeled, val = batches["train"], batches["unlabeled"], batches["val"]

    def train_loss(E, F, A):
        with bind((models.E, E), (models.F, F)):
            return supernet_loss(models, train, A)

    def pseudo_captions(E1, F1, A):
        with bind((models.E, E1), (models.F, F1)):
            return teacher_greedy_captions(models, unlabeled["image"], A, max_caption_len)

    def pseudo_caption_loss(W, E1, F1, A, tokens):
        # The teacher is evaluated without dropout so that its targets are the captions it would give.
        with bind((models.E, E1), (models.F, F1), (models.W, W)):
            teacher_logits = supernet_logits(models, unlabeled["image"], tokens[:, :-1], A,
                                             training_decoder=False)
            student = lambda tokens_in: models.student(unlabeled["image"], tokens_in, training=True)  # noqa: E731
            return stage2_loss(student, teacher_logits, tokens)

    def val_loss(W1):
        with bind((models.W, W1)):
            logits = models.student(val["image"], val["tokens"][:, :-1], training=False)
        return caption_loss(logits, val["tokens"])

    kwargs = {} if reduce_gradients is None else {"reduce_gradients": reduce_gradients}
    return ThreeStageProblem(train_loss, pseudo_captions, pseudo_caption_loss, val_loss, loss_scale=loss_scale,
                             **kwargs)
