"""Caption losses, written with `log_softmax` so that every second derivative exists.

Both losses are −Σ_v p_v · log softmax(z)_v averaged over the non-masked positions. The fused
`tf.nn.softmax_cross_entropy_with_logits` (and Keras' CategoricalCrossentropy, which calls it) is
avoided on purpose: its registered gradient drops the mixed derivative ∂²L/∂p∂z, so a hypergradient
that flows through soft targets p would silently be zero (docs/design.md; BUILD_NOTES.md, "Second-order pitfalls").

The token sums (`token_nll_sum`, `soft_token_nll_sum`) are the one home of the cross-entropy.
`caption_loss` (the loss of the search's L_tr, L_val and of retraining) and `mean_over_tokens` (the
Stage II losses of `search/captioning.py`) divide them by the token count over all replicas, so that
under tf.distribute Σ_replicas(local loss) is the single-device loss on the global batch;
`masked_cross_entropy` and `soft_cross_entropy` by the local count.
"""
from __future__ import annotations

import tensorflow as tf

from capnas_tf.distribute import all_reduce_sum


def float_logits(logits: tf.Tensor) -> tf.Tensor:
    """Logits in float32, or float64 if they already are (the float64 gradient checks need it):
    float16 / bfloat16 logits lose too much precision in log_softmax over a large vocabulary."""
    return logits if logits.dtype in (tf.float32, tf.float64) else tf.cast(logits, tf.float32)


def token_mask(targets: tf.Tensor, pad_id: int = 0, dtype=tf.float32) -> tf.Tensor:
    """1.0 where a target token is real, 0.0 on padding. [B, T]"""
    return tf.cast(tf.not_equal(targets, pad_id), dtype)


def soft_token_nll_sum(logits: tf.Tensor, target_rows: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Σ_{b,t} m_{b,t} · (−Σ_v p_{b,t,v} log softmax(z_{b,t})_v). logits z, target_rows p: [B, T, V]."""
    logits = float_logits(logits)
    nll = -tf.reduce_sum(tf.cast(target_rows, logits.dtype) * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return tf.reduce_sum(nll * tf.cast(mask, nll.dtype))


def token_nll_sum(logits: tf.Tensor, targets: tf.Tensor, pad_id: int = 0) -> tf.Tensor:
    """Σ over real tokens of −log softmax(z)_y. targets y: int [B, T]."""
    logp = tf.nn.log_softmax(float_logits(logits), axis=-1)
    picked = tf.gather(logp, targets, axis=-1, batch_dims=targets.shape.rank)
    return -tf.reduce_sum(picked * token_mask(targets, pad_id, picked.dtype))


def global_token_count(targets: tf.Tensor, pad_id: int = 0) -> tf.Tensor:
    """Number of real target tokens over all replicas (at least 1)."""
    count = tf.reduce_sum(token_mask(targets, pad_id))
    count = all_reduce_sum([count])[0]
    return tf.maximum(count, 1.0)


def mean_over_tokens(total: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """A token sum divided by the global number of real target tokens."""
    return total / tf.cast(global_token_count(targets), total.dtype)


def caption_loss(logits: tf.Tensor, tokens: tf.Tensor) -> tf.Tensor:
    """Mean token NLL of `tokens[:, 1:]` under `logits` (the global mean under tf.distribute)."""
    targets = tokens[:, 1:]
    return mean_over_tokens(token_nll_sum(logits, targets), targets)


def _count(mask, dtype) -> tf.Tensor:
    return tf.maximum(tf.reduce_sum(tf.cast(mask, dtype)), 1.0)


def masked_cross_entropy(logits, targets, *, pad_id: int = 0, label_smoothing: float = 0.0):
    """Mean token cross-entropy over the positions whose target is not <pad>.

    L = (1/|M|) Σ_{(b,t)∈M} −Σ_v q_{b,t,v} log softmax(z_{b,t})_v,
    q = (1 − ε)·onehot(y) + ε/V,   M = {(b, t) : y_{b,t} ≠ pad_id}.

    Args:
      logits: z, float `[B, T, V]` (or `[N, V]`).
      targets: y, int `[B, T]` (or `[N]`), typically `tokens[:, 1:]`.
      pad_id: the id not counted in the mean.
      label_smoothing: ε in [0, 1).

    Returns:
      A scalar in the logits' float dtype (float32 for float16 logits).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"masked_cross_entropy: label_smoothing must be in [0, 1); received {label_smoothing}."
        )
    logits = float_logits(logits)
    mask = token_mask(targets, pad_id, logits.dtype)
    if not label_smoothing:
        return token_nll_sum(logits, targets, pad_id) / _count(mask, logits.dtype)
    vocab_size = tf.shape(logits)[-1]
    q = tf.one_hot(targets, vocab_size, dtype=logits.dtype)
    q = (1.0 - label_smoothing) * q + label_smoothing / tf.cast(vocab_size, logits.dtype)
    return soft_token_nll_sum(logits, q, mask) / _count(mask, logits.dtype)


def soft_cross_entropy(logits, target_probs, mask):
    """Mean cross-entropy against soft targets, differentiable in both arguments to second order.

    L = (1/Σ m) Σ_{b,t} m_{b,t} · (−Σ_v p_{b,t,v} log softmax(z_{b,t})_v)

    Args:
      logits: z, float `[B, T, V]`.
      target_probs: p, float `[B, T, V]` (each row a distribution, e.g. a teacher's softmax).
      mask: m, bool or float `[B, T]`; 0/False positions are not counted.

    Returns:
      A scalar in the logits' float dtype (float32 for float16 logits).
    """
    logits = float_logits(logits)
    return soft_token_nll_sum(logits, target_probs, mask) / _count(mask, logits.dtype)
