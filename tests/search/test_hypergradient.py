"""The hypergradient estimators against finite differences of the whole unrolled objective, in float64,
on small analytic losses that couple A, E, F and W the way the captioning losses do."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search.hypergradient import (
    InnerLearningRates,
    ThreeStageProblem,
    central_difference,
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


def _while_loops(graph):
    return [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]


def _gradient_ops(graph):
    """Ops of the graph's own gradient computations (not those inside a loop body's function)."""
    return [op for op in graph.get_operations() if "gradient_tape" in op.name]


def test_finite_difference_traces_each_central_difference_once_with_unchanged_values():
    """On one replica each ± pair is one loop body run one iteration at a time (so the gradient graph
    is traced once and the two branches' activations never coexist), and the estimate equals the eager one."""
    problem = toy_problem()
    eager = finite_difference_hypergradient(problem, A0, E0, F0, W0, ETA, epsilon=1e-4).grad_A
    traced = tf.function(lambda: finite_difference_hypergradient(problem, A0, E0, F0, W0, ETA, epsilon=1e-4).grad_A)
    for g, t in zip(eager, traced()):
        np.testing.assert_allclose(t.numpy(), g.numpy(), rtol=1e-12)
    graph = traced.get_concrete_function().graph
    loops = _while_loops(graph)
    assert sorted(op.name.split("/")[0] for op in loops) == ["fd_stage1_pair", "fd_stage2_pair"]
    assert all(op.get_attr("parallel_iterations") == 1 for op in loops)
    # Outside the loops: the three first-order gradients (Stage I, II, III), none of the ± branches.
    assert not [op for op in _gradient_ops(graph) if "fd_stage" in op.name]


def test_central_difference_traced_twice_gates_the_minus_branch_and_agrees_with_the_loop():
    """The path taken under several replicas (no loop): the − branch's inputs wait for the + branch's
    result, and g(+1) − g(−1) is bit for bit what the loop computes."""
    x = [f64([0.3, -1.2]), f64([2.0])]
    gradient_at = lambda s, a, b: [tf.sin(a[0] * (1.0 + 0.1 * s)) * b[0], b[0] * s ** 2 + tf.reduce_sum(a[0]) * s]  # noqa: E731
    inputs = [[x[0]], [x[1]]]
    expected = [g - h for g, h in zip(gradient_at(f64(1.0), *inputs), gradient_at(f64(-1.0), *inputs))]
    for in_loop in (True, False):
        traced = tf.function(lambda: central_difference(gradient_at, inputs, x, "pair", in_loop=in_loop))
        for e, t in zip(expected, traced()):
            np.testing.assert_array_equal(t.numpy(), e.numpy())
        graph = traced.get_concrete_function().graph
        gated = [op for op in graph.get_operations() if op.type == "Identity" and op.control_inputs]
        assert len(_while_loops(graph)) == (1 if in_loop else 0)
        assert len(gated) == (0 if in_loop else 2)  # a and b of the − branch
        for op in gated:
            assert op.name.startswith("pair_minus/")
            assert any(name.startswith("pair_plus/") for name in _ops_reachable_backwards(op.control_inputs))


def test_darts_finite_difference_traces_its_central_difference_once():
    train, val = _darts_case()
    traced = tf.function(lambda: darts_hypergradient(train, val, [f64([0.7])], [f64([1.5])], 0.1, order=2,
                                                     method="finite_difference")[0])
    loops = _while_loops(traced.get_concrete_function().graph)
    assert [op.name.split("/")[0] for op in loops] == ["darts_pair"]


# --- the paper's two-term estimator (terms="paper") ------------------------------------------------
def _with_fixed_teacher_architecture(problem, A_fixed):
    """The same problem with L_u reading the constant A_fixed instead of A: f(A) of this problem is
    L_val(W'(E'(A), F'(A), A_fixed)), in which A reaches W' only through E' and F'."""
    return ThreeStageProblem(
        train_loss=problem.train_loss, pseudo_captions=problem.pseudo_captions,
        pseudo_caption_loss=lambda W, E1, F1, A, t: problem.pseudo_caption_loss(W, E1, F1, A_fixed, t),
        val_loss=problem.val_loss)


def _direct_stage_two_term(problem):
    """−η_w ∇²_{A,W} L_u · v at E', F' held fixed, v = ∇_{W'} L_val(W'): the term "paper" drops."""
    state = unroll(problem, A0, E0, F0, W0, ETA)
    with tf.GradientTape() as tape:
        tape.watch(state.W1)
        val = problem.val_loss(state.W1)
    v = tape.gradient(val, state.W1)
    E1, F1 = [tf.stop_gradient(x) for x in state.E1], [tf.stop_gradient(x) for x in state.F1]
    with tf.GradientTape() as outer:
        outer.watch(A0)
        with tf.GradientTape() as inner:
            inner.watch(W0)
            L_u = problem.pseudo_caption_loss(W0, E1, F1, A0, state.tokens)
        gW = inner.gradient(L_u, W0)
        g_dot_v = tf.add_n([tf.reduce_sum(g * x) for g, x in zip(gW, v)])
    return [-ETA.eta_w * g for g in outer.gradient(g_dot_v, A0)]


@pytest.mark.parametrize("direct_a_term", [True, False])
def test_paper_terms_are_the_gradient_of_the_objective_with_the_teachers_architecture_held_fixed(direct_a_term):
    problem = toy_problem(direct_a_term)
    paper = exact_hypergradient(problem, A0, E0, F0, W0, ETA, terms="paper").grad_A
    numeric = central_difference_of_objective(_with_fixed_teacher_architecture(problem, A0), h=1e-5)
    for g, n in zip(paper, numeric):
        assert np.abs(g.numpy()).max() > 1e-4
        np.testing.assert_allclose(g.numpy(), n, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("direct_a_term", [True, False])
def test_full_minus_paper_terms_is_the_direct_stage_two_term(direct_a_term):
    problem = toy_problem(direct_a_term)
    full = exact_hypergradient(problem, A0, E0, F0, W0, ETA, terms="full").grad_A
    paper = exact_hypergradient(problem, A0, E0, F0, W0, ETA, terms="paper").grad_A
    dropped = _direct_stage_two_term(problem)
    assert max(np.abs(d.numpy()).max() for d in dropped) > 1e-4  # the two variants differ on this problem
    for f, p, d in zip(full, paper, dropped):
        np.testing.assert_allclose(f.numpy() - p.numpy(), d.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("direct_a_term", [True, False])
def test_finite_difference_paper_terms_agree_with_exact_paper_terms(direct_a_term):
    problem = toy_problem(direct_a_term)
    exact = np.concatenate([g.numpy() for g in
                            exact_hypergradient(problem, A0, E0, F0, W0, ETA, terms="paper").grad_A])
    fd = np.concatenate([g.numpy() for g in finite_difference_hypergradient(
        problem, A0, E0, F0, W0, ETA, epsilon=1e-4, terms="paper").grad_A])
    cosine = exact @ fd / (np.linalg.norm(exact) * np.linalg.norm(fd))
    assert cosine > 0.99
    np.testing.assert_allclose(fd, exact, rtol=1e-3, atol=1e-7)


def test_unknown_hypergradient_terms_are_refused():
    problem = toy_problem()
    for estimator in (exact_hypergradient, finite_difference_hypergradient):
        with pytest.raises(ValueError, match="paper"):
            estimator(problem, A0, E0, F0, W0, ETA, terms="two")
