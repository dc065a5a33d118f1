"""Caption losses, written with `log_softmax` so that every second derivative exists.

Both losses are −Σ_v p_v · log softmax(z)_v averaged over the non-masked positions. The fused
`tf.nn.softmax_cross_entropy_with_logits` (and Keras' CategoricalCrossentropy, which calls it) is
avoided on purpose: its registered gradient drops the mixed derivative ∂²L/∂p∂z, so a hypergradient
that flows through soft targets p would silently be zero (docs/design.md, TF_PITFALLS §1).
"""
from __future__ import annotations

import tensorflow as tf


def _masked_mean(per_token: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Σ mask·x / max(Σ mask, 1): a mean over the counted positions, 0 when there are none."""
    mask = tf.cast(mask, per_token.dtype)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def _float_logits(logits: tf.Tensor) -> tf.Tensor:
    # float16 logits (a decoder built outside the mixed policy's float32 head) lose too much
    # precision in log_softmax over a large vocabulary; float64 is kept for the finite-difference tests.
    return tf.cast(logits, tf.float32) if logits.dtype == tf.float16 else logits


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
    logits = _float_logits(logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    vocab_size = tf.shape(logits)[-1]
    q = tf.one_hot(targets, vocab_size, dtype=logits.dtype)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / tf.cast(vocab_size, logits.dtype)
    per_token = -tf.reduce_sum(q * log_probs, axis=-1)
    return _masked_mean(per_token, tf.not_equal(targets, pad_id))


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
    logits = _float_logits(logits)
    target_probs = tf.cast(target_probs, logits.dtype)
    per_token = -tf.reduce_sum(target_probs * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    return _masked_mean(per_token, mask)
