"""Caption losses: values against hand-written formulas, masking, and the second derivative in the
soft targets that fused softmax cross-entropy loses."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.decoders.losses import masked_cross_entropy, soft_cross_entropy


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


LOGITS = np.random.default_rng(0).normal(size=(2, 4, 5))
TARGETS = np.array([[3, 4, 2, 0], [1, 2, 0, 0]])  # 0 = <pad>


def test_masked_cross_entropy_is_the_mean_over_non_pad_tokens():
    log_p = _log_softmax(LOGITS)
    picked = [-log_p[b, t, TARGETS[b, t]] for b in range(2) for t in range(4) if TARGETS[b, t] != 0]
    loss = masked_cross_entropy(tf.constant(LOGITS), tf.constant(TARGETS))
    np.testing.assert_allclose(loss, np.mean(picked), rtol=1e-12)


def test_masked_cross_entropy_agrees_with_keras_on_the_non_pad_tokens():
    keep = TARGETS != 0
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        TARGETS[keep], LOGITS[keep].astype("float32")
    )
    loss = masked_cross_entropy(tf.constant(LOGITS, tf.float32), tf.constant(TARGETS))
    np.testing.assert_allclose(loss, reference, rtol=1e-5)


def test_logits_at_pad_targets_do_not_matter():
    changed = LOGITS.copy()
    changed[TARGETS == 0] += 100.0
    a = masked_cross_entropy(tf.constant(LOGITS), tf.constant(TARGETS))
    b = masked_cross_entropy(tf.constant(changed), tf.constant(TARGETS))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_label_smoothing_mixes_in_the_uniform_distribution():
    eps, V = 0.1, LOGITS.shape[-1]
    log_p = _log_softmax(LOGITS)
    q = (1 - eps) * np.eye(V)[TARGETS] + eps / V
    per_token = -(q * log_p).sum(-1)
    expected = per_token[TARGETS != 0].mean()
    loss = masked_cross_entropy(tf.constant(LOGITS), tf.constant(TARGETS), label_smoothing=eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_label_smoothing_outside_zero_one_is_rejected():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        masked_cross_entropy(tf.constant(LOGITS), tf.constant(TARGETS), label_smoothing=1.0)


def test_all_pad_targets_give_zero_not_nan():
    loss = masked_cross_entropy(tf.constant(LOGITS), tf.zeros([2, 4], tf.int32))
    assert float(loss) == 0.0


def test_float16_logits_give_a_float32_loss():
    loss = masked_cross_entropy(tf.constant(LOGITS, tf.float16), tf.constant(TARGETS))
    assert loss.dtype == tf.float32


def test_soft_cross_entropy_with_one_hot_targets_equals_masked_cross_entropy():
    one_hot = tf.one_hot(TARGETS, LOGITS.shape[-1], dtype=tf.float64)
    soft = soft_cross_entropy(tf.constant(LOGITS), one_hot, TARGETS != 0)
    hard = masked_cross_entropy(tf.constant(LOGITS), tf.constant(TARGETS))
    np.testing.assert_allclose(soft, hard, rtol=1e-12)


def test_soft_cross_entropy_counts_only_masked_positions():
    p = tf.nn.softmax(tf.constant(LOGITS[::-1].copy()))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    per_token = -(p.numpy() * _log_softmax(LOGITS)).sum(-1)
    np.testing.assert_allclose(
        soft_cross_entropy(tf.constant(LOGITS), p, mask), per_token[mask].mean(), rtol=1e-12
    )


def _mixed_second_derivative(loss_fn, logits, probs, direction):
    """d/dp ⟨∂L/∂z, u⟩: how the logits' gradient moves when the soft targets move."""
    with tf.GradientTape() as outer:
        outer.watch(probs)
        with tf.GradientTape() as inner:
            inner.watch(logits)
            loss = loss_fn(logits, probs)
        directional = tf.reduce_sum(inner.gradient(loss, logits) * direction)
    return outer.gradient(directional, probs)


def test_mixed_second_derivative_in_the_targets_is_nonzero_and_matches_finite_differences():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(2, 3, 5)))
    probs = tf.nn.softmax(tf.constant(rng.normal(size=(2, 3, 5))))
    mask = tf.constant([[1, 1, 0], [1, 1, 1]], tf.float64)
    u = tf.constant(rng.normal(size=(2, 3, 5)))

    def loss_fn(z, p):
        return soft_cross_entropy(z, p, mask)

    analytic = _mixed_second_derivative(loss_fn, logits, probs, u).numpy()

    def directional_at(p):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = loss_fn(logits, p)
        return float(tf.reduce_sum(tape.gradient(loss, logits) * u))

    eps, numeric = 1e-6, np.zeros(probs.shape)
    for index in np.ndindex(*probs.shape):
        e = np.zeros(probs.shape)
        e[index] = eps
        numeric[index] = (directional_at(probs + e) - directional_at(probs - e)) / (2 * eps)
    assert np.abs(analytic).max() > 1e-2
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)


def test_the_fused_op_loses_that_derivative_which_is_why_it_is_not_used():
    rng = np.random.default_rng(2)
    logits = tf.constant(rng.normal(size=(1, 4)))
    probs = tf.nn.softmax(tf.constant(rng.normal(size=(1, 4))))
    u = tf.constant(rng.normal(size=(1, 4)))

    def fused(z, p):
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=p, logits=z))

    def ours(z, p):
        return soft_cross_entropy(z[None], p[None], tf.ones([1, 1]))

    fused_grad = _mixed_second_derivative(fused, logits, probs, u)
    ours_grad = _mixed_second_derivative(ours, logits, probs, u)
    assert fused_grad is None or np.abs(fused_grad.numpy()).max() == 0.0
    assert np.abs(ours_grad.numpy()).max() > 1e-2
