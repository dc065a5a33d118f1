"""Relaxations of A: softmax (DARTS), hard Gumbel-softmax with straight-through gradient (GDAS),
their registry and GDAS' temperature schedule."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search_space.relaxations import (
    RELAXATIONS,
    get_relaxation,
    gumbel,
    gumbel_temperature,
    register_relaxation,
    relax_architecture,
    softmax,
)

SEED = tf.constant([3, 7])


def alpha(e=14, k=8, seed=0):
    return tf.random.stateless_normal([e, k], seed=[seed, 1])


def test_softmax_rows_sum_to_one_and_match_tf_softmax_at_temperature():
    a = alpha()
    w = softmax(a, temperature=2.0)
    np.testing.assert_allclose(tf.reduce_sum(w, -1), np.ones(14), atol=1e-6)
    np.testing.assert_allclose(w, tf.nn.softmax(a / 2.0), atol=1e-7)


def test_gumbel_forward_is_one_hot_per_edge():
    w = gumbel(alpha(), temperature=0.7, seed=SEED).numpy()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sort(w, -1)[:, :-1], 0.0, atol=1e-6)
    np.testing.assert_allclose(w.max(-1), 1.0, atol=1e-6)


def test_gumbel_gradient_is_the_soft_sample_gradient_and_nonzero():
    """Straight-through: forward one_hot(argmax y), backward ∂y/∂α of the soft sample y."""
    a = tf.Variable(alpha(e=3, k=5))
    probe = tf.random.stateless_normal([3, 5], seed=[5, 5])
    with tf.GradientTape(persistent=True) as tape:
        hard = gumbel(a, temperature=0.5, seed=SEED)
        soft = _soft_sample(a, 0.5, SEED)
        hard_loss, soft_loss = tf.reduce_sum(hard * probe), tf.reduce_sum(soft * probe)
    np.testing.assert_allclose(hard, tf.one_hot(tf.argmax(soft, -1), 5), atol=1e-6)
    grad = tape.gradient(hard_loss, a)
    assert np.abs(grad.numpy()).sum() > 1e-4
    np.testing.assert_allclose(grad, tape.gradient(soft_loss, a), atol=1e-6)


def _soft_sample(a, tau, seed):
    tiny = 1e-10
    u = tf.random.stateless_uniform(tf.shape(a), seed=seed, minval=tiny, maxval=1.0 - tiny)
    return tf.nn.softmax((tf.nn.log_softmax(a) - tf.math.log(-tf.math.log(u))) / tau)


def test_gumbel_samples_follow_softmax_of_alpha():
    """The Gumbel-max trick: argmax frequencies over many edges approach softmax(α)."""
    row = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
    samples = gumbel(tf.tile(row, [4000, 1]), temperature=1.0, seed=SEED).numpy()
    np.testing.assert_allclose(samples.mean(0), [0.1, 0.2, 0.3, 0.4], atol=0.03)


def test_gumbel_is_deterministic_per_seed_and_varies_with_it():
    a = alpha()
    np.testing.assert_array_equal(gumbel(a, seed=SEED), gumbel(a, seed=SEED))
    draws = {tuple(np.argmax(gumbel(a, seed=[s, 0]).numpy(), -1)) for s in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", ["softmax", "gumbel"])
def test_relaxations_are_deterministic_when_traced_and_under_xla(name, jit_compile):
    fn = tf.function(lambda x, s: get_relaxation(name)(x, temperature=0.5, seed=s), jit_compile=jit_compile)
    a = alpha()
    first, again = fn(a, SEED).numpy(), fn(a, SEED).numpy()
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first.sum(-1), 1.0, atol=1e-6)
    if name == "softmax":
        np.testing.assert_allclose(first, softmax(a, temperature=0.5), atol=1e-6)
    else:
        # XLA draws a different (but equally valid) stream than the TF kernels for the same seed.
        np.testing.assert_allclose(first.max(-1), 1.0, atol=1e-6)


def test_gumbel_samples_under_xla_also_follow_softmax_of_alpha():
    row = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
    sample = tf.function(lambda a: gumbel(a, seed=SEED), jit_compile=True)
    np.testing.assert_allclose(sample(tf.tile(row, [4000, 1])).numpy().mean(0), [0.1, 0.2, 0.3, 0.4], atol=0.03)


def test_the_sampling_relaxation_demands_a_seed():
    with pytest.raises(ValueError, match="needs seed"):
        gumbel(alpha())
    with pytest.raises(ValueError, match=r"seed must have shape \[2\]"):
        gumbel(alpha(), seed=tf.constant([1, 2, 3]))


def test_alpha_of_wrong_rank_is_rejected():
    with pytest.raises(ValueError, match=r"alpha must have shape \[E, K\]"):
        softmax(tf.ones([8]))


def test_relax_architecture_gives_independent_samples_per_cell():
    a = alpha()
    w_normal, w_reduce = relax_architecture("gumbel", (a, a), seed=SEED)
    assert not np.array_equal(w_normal, w_reduce)
    w_normal, w_reduce = relax_architecture("softmax", (a, a))
    np.testing.assert_array_equal(w_normal, w_reduce)


def test_registry():
    assert {"softmax", "gumbel"} <= set(RELAXATIONS)
    with pytest.raises(ValueError, match="unknown relaxation 'sparsemax'.*'gumbel'"):
        get_relaxation("sparsemax")
    register_relaxation("hardmax", lambda a, *, temperature=1.0, seed=None: tf.one_hot(tf.argmax(a, -1), a.shape[-1]))
    try:
        w = get_relaxation("hardmax")(tf.constant([[0.0, 2.0, 1.0]]))
        np.testing.assert_array_equal(w, [[0, 1, 0]])
        with pytest.raises(ValueError, match="already taken"):
            register_relaxation("hardmax", softmax)
    finally:
        del RELAXATIONS["hardmax"]


def test_gumbel_temperature_decays_linearly_from_max_to_min():
    assert gumbel_temperature(0, 101) == pytest.approx(10.0)
    assert gumbel_temperature(50, 101) == pytest.approx(5.05)
    assert gumbel_temperature(100, 101) == pytest.approx(0.1)
    assert gumbel_temperature(500, 101) == pytest.approx(0.1)
    tensor = gumbel_temperature(tf.constant(50, tf.int64), 101)
    assert tensor.dtype == tf.float32 and float(tensor) == pytest.approx(5.05)
