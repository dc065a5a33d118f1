"""The three-stage objective on real caption decoders (the LSTM and the search's default transformer, for F
and W): the exact hypergradient is the derivative of the whole unrolled objective
f(A) = L(W'(E'(A), F'(A), A); D_val), checked in float64 along random directions, for both Stage II losses."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.captioner import Captioner
from capnas_tf.decoders.show_and_tell import ShowAndTellDecoder
from capnas_tf.decoders.transformer import TransformerCaptionDecoder
from capnas_tf.search import hypergradient as hg
from capnas_tf.decoders.losses import caption_loss
from capnas_tf.search.captioning import SearchModels, make_three_stage_problem
from capnas_tf.search.stateless import bind, values_of
from tests.search.toy_models import ToyConvEncoder, ToyMixedEncoder

V, L = 9, 6  # vocabulary size, caption length (<start> … <end> <pad>)


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.config.set_floatx("float32")


def toy_batches(seed=0):
    rng = np.random.default_rng(seed)
    images = lambda n: tf.constant(rng.uniform(size=(n, 8, 8, 3)), tf.float64)  # noqa: E731
    tokens = np.zeros((3, L), np.int32)
    tokens[:, 0] = 1
    for i, n in enumerate([3, 4, 2]):
        tokens[i, 1 : n + 1] = rng.integers(3, V, size=n)
        tokens[i, n + 1] = 2
    return {"train": {"image": images(3), "tokens": tf.constant(tokens)},
            "unlabeled": {"image": images(3)},
            "val": {"image": images(3), "tokens": tf.constant(tokens[::-1].copy())}}


def tiny_decoder(kind):
    if kind == "transformer":  # pre-LN, global token, coordinates: the search's default F and W, in miniature
        return TransformerCaptionDecoder(V, L - 1, model_dim=4, num_layers=1, num_heads=2, intermediate_dim=6,
                                         dropout=0.0)
    return ShowAndTellDecoder(V, L - 1, embedding_dim=5, units=6, dropout=0.0)


def build_models(kind="lstm"):
    keras.utils.set_random_seed(1)
    encoder, decoder = ToyMixedEncoder(), tiny_decoder(kind)
    student = Captioner(ToyConvEncoder(), tiny_decoder(kind))
    images = tf.zeros((1, 8, 8, 3), tf.float64)
    decoder(encoder(images), tf.ones((1, L - 1), tf.int32))
    student(images, tf.ones((1, L - 1), tf.int32))
    relax = lambda A: (tf.nn.softmax(A[0]), tf.nn.softmax(A[1]))  # noqa: E731
    return SearchModels(encoder, decoder, student, relax)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_exact_hypergradient_is_directional_derivative_of_unrolled_objective(float64, decoder):
    models = build_models(decoder)
    problem = make_three_stage_problem(models, toy_batches(), stage2="soft", max_caption_len=L)
    A, E, F, W = (values_of(v) for v in (models.A, models.E, models.F, models.W))
    eta = hg.InnerLearningRates(0.5, 0.5, 0.5)
    grad = hg.exact_hypergradient(problem, A, E, F, W, eta).grad_A
    f = lambda A_: float(hg.unroll(problem, A_, E, F, W, eta).val_loss)  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = [tf.constant(rng.normal(size=a.shape)) for a in A]
        h = 1e-5
        numeric = (f([a + h * x for a, x in zip(A, d)]) - f([a - h * x for a, x in zip(A, d)])) / (2 * h)
        analytic = float(sum(tf.reduce_sum(g * x) for g, x in zip(grad, d)))
        assert abs(analytic) > 1e-7
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_paper_terms_are_the_directional_derivative_with_the_teachers_architecture_held_fixed(float64):
    """terms="paper" on the captioning models: the derivative of f with the teacher (L_u and its captions)
    evaluated at the current A, so that A acts through E', F' only; and not the full gradient, since the
    teacher is the supernet at A (the direct Stage II term is not zero)."""
    import dataclasses

    models = build_models()
    problem = make_three_stage_problem(models, toy_batches(), stage2="soft", max_caption_len=L)
    A, E, F, W = (values_of(v) for v in (models.A, models.E, models.F, models.W))
    eta = hg.InnerLearningRates(0.5, 0.5, 0.5)
    paper = hg.exact_hypergradient(problem, A, E, F, W, eta, terms="paper").grad_A
    full = hg.exact_hypergradient(problem, A, E, F, W, eta).grad_A
    fixed = dataclasses.replace(
        problem, pseudo_captions=lambda E1, F1, A_: problem.pseudo_captions(E1, F1, A),
        pseudo_caption_loss=lambda W_, E1, F1, A_, t: problem.pseudo_caption_loss(W_, E1, F1, A, t))
    f = lambda A_: float(hg.unroll(fixed, A_, E, F, W, eta).val_loss)  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(2):
        d = [tf.constant(rng.normal(size=a.shape)) for a in A]
        h = 1e-3  # the E', F' terms are small here (~1e-7): a smaller h leaves f's rounding in the quotient
        numeric = (f([a + h * x for a, x in zip(A, d)]) - f([a - h * x for a, x in zip(A, d)])) / (2 * h)
        analytic = float(sum(tf.reduce_sum(g * x) for g, x in zip(paper, d)))
        assert abs(analytic) > 1e-7
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5)
    difference = max(float(tf.reduce_max(tf.abs(g - p))) for g, p in zip(full, paper))
    assert difference > 1e-3 * max(float(tf.reduce_max(tf.abs(g))) for g in full)


def test_finite_difference_hypergradient_agrees_with_exact_on_captioning_models(float64):
    models = build_models()
    problem = make_three_stage_problem(models, toy_batches(), stage2="soft", max_caption_len=L)
    A, E, F, W = (values_of(v) for v in (models.A, models.E, models.F, models.W))
    eta = hg.InnerLearningRates(0.5, 0.5, 0.5)
    exact = np.concatenate([g.numpy().ravel() for g in hg.exact_hypergradient(problem, A, E, F, W, eta).grad_A])
    fd = np.concatenate([g.numpy().ravel() for g in
                         hg.finite_difference_hypergradient(problem, A, E, F, W, eta, epsilon=1e-4).grad_A])
    assert exact @ fd / (np.linalg.norm(exact) * np.linalg.norm(fd)) > 0.99


def test_straight_through_is_hard_forward_and_carries_a_surrogate_hypergradient(float64):
    """Forward, the straight-through loss is the loss on the hard pseudo-captions, so f(A) is piecewise
    constant in A; its gradient is that of the soft surrogate, hence nonzero (and biased, by design)."""
    models = build_models()
    batches = toy_batches()
    st = make_three_stage_problem(models, batches, stage2="straight_through", max_caption_len=L)
    A, E, F, W = (values_of(v) for v in (models.A, models.E, models.F, models.W))
    tokens = st.pseudo_captions(E, F, A)
    hard_rows = tf.one_hot(tokens, V, dtype=tf.float64)
    with bind((models.W, W)):
        student = models.student(batches["unlabeled"]["image"], hard_rows[:, :-1], training=True)
    hard_loss = caption_loss(student, tokens)
    np.testing.assert_allclose(float(st.pseudo_caption_loss(W, E, F, A, tokens)), float(hard_loss), rtol=1e-12)
    grad = hg.exact_hypergradient(st, A, E, F, W, hg.InnerLearningRates(0.5, 0.5, 0.5)).grad_A
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grad) > 1e-8
