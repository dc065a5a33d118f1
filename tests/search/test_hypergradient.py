"""The hypergradient estimators against finite differences of the whole unrolled objective, in float64,
on small analytic losses that couple A, E, F and W the way the captioning losses do."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search.hypergradient import (
    InnerLearningRates,
    ThreeStageProblem,
    darts_hypergradient,
    exact_hypergradient,
    finite_difference_hypergradient,
    unroll,
)

f64 = lambda x: tf.constant(np.asarray(x, dtype=np.float64))  # noqa: E731


def _soft_ce(p, logits):
    # -Σ p·log_softmax: the form with a full second derivative in p (never the fused op).
    return -tf.reduce_sum(p * tf.nn.log_softmax(logits))


def toy_problem(direct_a_term=True):
    target = f64([0.5, -0.2, 0.1, 0.3, -0.4])

    def train_loss(E, F, A):
        (e,), (f,), (a, b) = E, F, A
        return (tf.reduce_sum((tf.tanh(a * e) - 0.3) ** 2) + tf.reduce_sum(f**2) * (1.0 + tf.reduce_sum(tf.sin(b)))
                + tf.reduce_sum(e) * f[0])

    def teacher_probs(E1, F1, A):
        (e,), (f,), (a, b) = E1, F1, A
        logits = tf.concat([tf.tanh(a * e), f * (1.0 + b[0])], 0)
        if direct_a_term:
            logits = logits + 0.5 * tf.concat([a, b], 0)
        return tf.nn.softmax(logits)

    def pseudo_caption_loss(W, E1, F1, A, tokens):
        (w,) = W
        return _soft_ce(teacher_probs(E1, F1, A), w) + 0.01 * tf.reduce_sum(w**2)

    def val_loss(W):
        (w,) = W
        return tf.reduce_sum((w - target) ** 2) + tf.reduce_sum(tf.sin(w))

    return ThreeStageProblem(
        train_loss=train_loss,
        pseudo_captions=lambda E1, F1, A: tf.zeros([1], tf.int32),
        pseudo_caption_loss=pseudo_caption_loss,
        val_loss=val_loss,
    )


A0 = [f64([0.3, -0.5, 0.8]), f64([0.2, -0.1])]
E0, F0, W0 = [f64([0.4, 0.9, -0.7])], [f64([0.6, -0.3])], [f64([0.1, 0.2, -0.3, 0.4, 0.0])]
ETA = InnerLearningRates(eta_e=0.3, eta_f=0.2, eta_w=0.5)


def central_difference_of_objective(problem, h=1e-6):
    """∂f/∂A_i by (f(A + h e_i) − f(A − h e_i)) / 2h, with f(A) = L(W'(E'(A), F'(A), A); D_val)."""
    f = lambda A: unroll(problem, A, E0, F0, W0, ETA).val_loss.numpy()  # noqa: E731
    grads = []
    for k, a in enumerate(A0):
        g = np.zeros(a.shape)
        for i in range(a.shape[0]):
            e = np.zeros(a.shape); e[i] = h
            plus = [x + (f64(e) if j == k else 0) for j, x in enumerate(A0)]
            minus = [x - (f64(e) if j == k else 0) for j, x in enumerate(A0)]
            g[i] = (f(plus) - f(minus)) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("direct_a_term", [True, False])
def test_exact_hypergradient_matches_central_difference_of_whole_objective(direct_a_term):
    problem = toy_problem(direct_a_term)
    exact = exact_hypergradient(problem, A0, E0, F0, W0, ETA).grad_A
    numeric = central_difference_of_objective(problem)
    for g, n in zip(exact, numeric):
        assert np.abs(g.numpy()).max() > 1e-4  # the hypergradient is not trivially zero
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("direct_a_term", [True, False])
def test_finite_difference_hypergradient_agrees_with_exact(direct_a_term):
    problem = toy_problem(direct_a_term)
    exact = np.concatenate([g.numpy() for g in exact_hypergradient(problem, A0, E0, F0, W0, ETA).grad_A])
    fd = np.concatenate([g.numpy() for g in
                         finite_difference_hypergradient(problem, A0, E0, F0, W0, ETA, epsilon=1e-4).grad_A])
    cosine = exact @ fd / (np.linalg.norm(exact) * np.linalg.norm(fd))
    assert cosine > 0.99
    np.testing.assert_allclose(fd, exact, rtol=1e-3, atol=1e-7)


def test_stage_two_path_is_what_makes_the_hypergradient():
    """If L_u sees no gradient through the teacher (E', F', A stopped), ∇_A f is exactly zero; with it, not.
    This is the check that catches a fused loss silently dropping the Stage II path."""
    problem = toy_problem(direct_a_term=False)
    detached = ThreeStageProblem(
        train_loss=problem.train_loss, pseudo_captions=problem.pseudo_captions,
        pseudo_caption_loss=lambda W, E1, F1, A, t: problem.pseudo_caption_loss(
            W, [tf.stop_gradient(x) for x in E1], [tf.stop_gradient(x) for x in F1],
                [tf.stop_gradient(x) for x in A], t),
        val_loss=problem.val_loss)
    zero = exact_hypergradient(detached, A0, E0, F0, W0, ETA).grad_A
    assert all(np.all(g.numpy() == 0.0) for g in zero)
    live = exact_hypergradient(problem, A0, E0, F0, W0, ETA).grad_A
    assert any(np.abs(g.numpy()).max() > 1e-4 for g in live)


def test_fused_softmax_cross_entropy_would_zero_the_stage_two_path():
    """Documents the pitfall the loss code avoids: with the fused op the same objective has no hypergradient."""
    problem = toy_problem(direct_a_term=False)

    def fused(W, E1, F1, A, tokens):
        (e,), (f,), (a, b) = E1, F1, A
        p = tf.nn.softmax(tf.concat([tf.tanh(a * e), f * (1.0 + b[0])], 0))
        return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(p, W[0])) + 0.01 * tf.reduce_sum(W[0] ** 2)

    fused_problem = ThreeStageProblem(problem.train_loss, problem.pseudo_captions, fused, problem.val_loss)
    grads = exact_hypergradient(fused_problem, A0, E0, F0, W0, ETA).grad_A
    assert all(np.allclose(g.numpy(), 0.0) for g in grads)


# --- DARTS, on a case worked by hand ------------------------------------------------------------
# L_train(w, a) = ½(w − a)²,  L_val(w, a) = ½(w − 2)² + a·w.
# w' = w − η(w − a);  the DARTS formula: ∇_a L_val(w', a) − η ∇²_{a,w} L_train · ∇_{w'} L_val
#                                       = w' − η·(−1)·(w' − 2 + a) = w' + η(w' − 2 + a).
def _darts_case():
    train = lambda w, A: 0.5 * tf.reduce_sum((w[0] - A[0]) ** 2)  # noqa: E731
    val = lambda w, A: 0.5 * tf.reduce_sum((w[0] - 2.0) ** 2) + tf.reduce_sum(A[0] * w[0])  # noqa: E731
    return train, val


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_darts_second_order_matches_hand_derived_formula(method):
    train, val = _darts_case()
    w, a, eta = 1.5, 0.7, 0.1
    w1 = w - eta * (w - a)
    expected = w1 + eta * (w1 - 2.0 + a)
    grad, _ = darts_hypergradient(train, val, [f64([a])], [f64([w])], eta, order=2, method=method)
    np.testing.assert_allclose(grad[0].numpy(), [expected], rtol=1e-8)


def test_darts_first_order_is_the_plain_validation_gradient():
    train, val = _darts_case()
    grad, _ = darts_hypergradient(train, val, [f64([0.7])], [f64([1.5])], 0.1, order=1)
    np.testing.assert_allclose(grad[0].numpy(), [1.5])  # ∇_a L_val(w, a) = w


def _ops_reachable_backwards(ops):
    """The names of `ops` and of every op they depend on, through data and control edges."""
    seen, stack = set(), list(ops)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def test_finite_difference_branches_run_one_after_the_other_with_unchanged_values():
    """Traced, the − branch of each central difference waits for the + branch's result (so their
    activations never coexist), and the estimate equals the eager one."""
    problem = toy_problem()
    eager = finite_difference_hypergradient(problem, A0, E0, F0, W0, ETA, epsilon=1e-4).grad_A
    traced = tf.function(lambda: finite_difference_hypergradient(problem, A0, E0, F0, W0, ETA, epsilon=1e-4).grad_A)
    for g, t in zip(eager, traced()):
        np.testing.assert_allclose(t.numpy(), g.numpy(), rtol=1e-12)
    graph = traced.get_concrete_function().graph
    gated = [op for op in graph.get_operations() if op.type == "Identity" and op.control_inputs]
    # after() gates the − branch's inputs: E', F', A, W of the Stage II pair, E, F, A of the Stage I pair.
    assert len(gated) == (len(E0) + len(F0) + len(A0) + len(W0)) + (len(E0) + len(F0) + len(A0))
    for op in gated:
        waits_for = _ops_reachable_backwards(op.control_inputs)
        assert any("gradient" in name.lower() for name in waits_for)


def test_darts_finite_difference_minus_branch_waits_for_the_plus_branch():
    train, val = _darts_case()
    traced = tf.function(lambda: darts_hypergradient(train, val, [f64([0.7])], [f64([1.5])], 0.1, order=2,
                                                     method="finite_difference")[0])
    graph = traced.get_concrete_function().graph
    gated = [op for op in graph.get_operations() if op.type == "Identity" and op.control_inputs]
    assert len(gated) == 2  # w and A of the − branch
