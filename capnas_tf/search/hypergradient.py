"""Hypergradients of the architecture A through unrolled inner optimisation steps.

The three-stage method (image understanding by captioning) is the multi-level problem

    Stage I    E*(A), F*(A) = argmin_{E,F} L(E, F, A; D_tr)
    Stage II   W*(A)        = argmin_W     L(W, U, E*(A), F*(A))
    Stage III  min_A  L(W*(A); D_val)

Each inner argmin is replaced by one gradient step from the current weights:

    E' = E − η_e ∇_E L_tr,   F' = F − η_f ∇_F L_tr,   W' = W − η_w ∇_W L(W, U, E', F'),

and A follows ∇_A f(A) with f(A) = L(W'(E'(A), F'(A), A); D_val). By the chain rule, with
v = ∇_{W'} L_val and L_u = L(W, U, E', F'),

    ∇_A f = η_e η_w ∇²_{A,E} L_tr · ∇²_{E',W} L_u · v
          + η_f η_w ∇²_{A,F} L_tr · ∇²_{F',W} L_u · v
          − η_w ∇²_{A,W} L_u · v.

The last term exists because the teacher that captions U is the supernet itself, evaluated with
architecture A; the paper's formula leaves it out (it is zero when L_u sees A only through E', F').
L_val = L(W'; D_val) does not read A, so there is no direct term ∇_A L_val, and the teacher's captions
are discrete (no gradient through them in either variant).

Which terms an estimator returns is `SearchConfig.hypergradient_terms` (--hypergradient_terms):
  "full"   all three: the true gradient of f (`exact`) or an estimate of it (`finite_difference`).
  "paper"  the published two-term estimator: the E' and F' paths only, i.e. the first two terms;
           the direct Stage II term −η_w ∇²_{A,W} L_u · v is dropped. It is the gradient of f with A
           held fixed (at its current value) in L_u, so that A reaches W' only through E'(A), F'(A).
Every estimator provides both variants, so that all of them compute the same quantity.

The estimators (`SearchConfig.hypergradient`, --hypergradient):
  "exact"                 reverse mode through both unrolled steps: nested tapes (`exact_hypergradient`).
  "forward_over_reverse"  the same chain rule written as two Hessian-vector products, each the JVP of a
                          first-order gradient (`tf.autodiff.ForwardAccumulator` around a `GradientTape`):
                          exact, and no tape is differentiated a second time (`hvp_hypergradient`).
  "finite_difference"     the same two products by central differences of gradients (`hvp_hypergradient`).

Everything in this module is a pure function of explicit tensors: the losses come in as callables of
values, so the same code runs on the captioning models (see `captioning.py`) and on small analytic
functions in the tests. Lists of tensors stand for E, F, W; A is a list too (α_normal, α_reduce).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import tensorflow as tf

from capnas_tf.distribute import replicas_in_sync
from capnas_tf.registry import Registry
from capnas_tf.search.gradients import gradients as _gradients
from capnas_tf.search.gradients import identity as _identity
from capnas_tf.search.gradients import reduced_gradient
from capnas_tf.search.precision import scaled
from capnas_tf.search.stateless import axpy, densify, global_norm, unrolled

# The estimators of ∇_A f, by the names `SearchConfig.hypergradient` (--hypergradient) takes: each
# `estimator(problem, A, E, F, W, eta, *, terms, epsilon) -> Hypergradient` (registered at the end).
HYPERGRADIENTS = Registry("hypergradient estimator", register_name="register_hypergradient",
                          lookup_name="get_hypergradient")
# Which terms of ∇_A f they return (`SearchConfig.hypergradient_terms`; the module's docstring).
HYPERGRADIENT_TERMS = ("full", "paper")

Values = list  # list[tf.Tensor]


@dataclasses.dataclass(frozen=True)
class ThreeStageProblem:
    """The three losses of the method as functions of explicit values.

    Attributes:
      train_loss: (E, F, A) -> L(E, F, A; D_tr), the Stage I caption loss.
      pseudo_captions: (E', F', A) -> tokens. The teacher's captions of U; discrete, so no gradient
        flows through it (it is called on stopped tensors).
      pseudo_caption_loss: (W, E', F', A, tokens) -> L(W, U, E', F'), the Stage II loss, which must be
        differentiable in E', F' and A (e.g. soft targets written with log_softmax).
      val_loss: W -> L(W; D_val), the Stage III loss.
      reduce_gradients: sums per-replica gradients under tf.distribute so every replica takes the
        same virtual step; the identity on one device.
      loss_scale: S; every tape differentiates S·L and divides its gradient by S (`precision.py`:
        float16 compute). A power of two, so that it is exact in float32.
    """

    train_loss: Callable
    pseudo_captions: Callable
    pseudo_caption_loss: Callable
    val_loss: Callable
    reduce_gradients: Callable = _identity
    loss_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class InnerLearningRates:
    """η_e, η_f, η_w: the step sizes of the virtual (unrolled) steps."""

    eta_e: float
    eta_f: float
    eta_w: float


@dataclasses.dataclass
class UnrolledState:
    """E', F', W', the losses met on the way, and the first-order gradients the virtual steps took:
    train_grads = ∇_{E,F} L_tr(E, F, A) (E's part, then F's) and student_grads = ∇_W L(W, U, E', F'),
    both already summed over replicas. A weight step may reuse them (`reuse_unrolled_gradients`)."""

    E1: Values
    F1: Values
    W1: Values
    tokens: tf.Tensor
    train_loss: tf.Tensor
    pseudo_caption_loss: tf.Tensor
    val_loss: tf.Tensor
    train_grads: Values
    student_grads: Values


@dataclasses.dataclass
class Hypergradient:
    """∇_A f together with the unrolled state it was computed at."""

    grad_A: Values
    state: UnrolledState


def _check_terms(terms: str) -> None:
    if terms not in HYPERGRADIENT_TERMS:
        raise ValueError(f"hypergradient terms must be one of {list(HYPERGRADIENT_TERMS)}, received {terms!r}.")


def unroll(problem: ThreeStageProblem, A: Values, E: Values, F: Values, W: Values,
           eta: InnerLearningRates, terms: str = "full") -> UnrolledState:
    """E', F', W' and f(A) = L(W'; D_val), differentiable in A when run under a tape watching A.

    terms="paper": L_u reads A through a stop_gradient, so that a tape on A sees only the paths
    A → E', F' → W' (the values are the same as with "full")."""
    _check_terms(terms)
    # Stage I. This tape's gradient is itself recorded by any outer tape on A, which is what makes
    # ∇²_{A,E} L_tr appear in the exact hypergradient.
    S = problem.loss_scale
    with tf.name_scope("stage1"):  # name scopes: where a profile puts each op's time
        with tf.GradientTape() as tape_EF:
            tape_EF.watch(E + F)
            L_tr = problem.train_loss(E, F, A)
            S_L_tr = scaled(L_tr, S)
        g = reduced_gradient(tape_EF, S_L_tr, E + F, problem.reduce_gradients, S)
        E1 = unrolled(E, g[: len(E)], eta.eta_e)  # E' = E − η_e ∇_E L_tr
        F1 = unrolled(F, g[len(E):], eta.eta_f)  # F' = F − η_f ∇_F L_tr

    # Stage II. The teacher's discrete captions carry no gradient; the loss on them does.
    stop = lambda xs: [tf.stop_gradient(x) for x in xs]  # noqa: E731
    with tf.name_scope("stage2_decode"):
        tokens = tf.stop_gradient(problem.pseudo_captions(stop(E1), stop(F1), stop(A)))
    with tf.name_scope("stage2"):
        with tf.GradientTape() as tape_W:
            tape_W.watch(W)
            L_u = problem.pseudo_caption_loss(W, E1, F1, A if terms == "full" else stop(A), tokens)
            S_L_u = scaled(L_u, S)
        gW = reduced_gradient(tape_W, S_L_u, W, problem.reduce_gradients, S)
        W1 = unrolled(W, gW, eta.eta_w)  # W' = W − η_w ∇_W L(W, U, E', F')

    # Stage III.
    with tf.name_scope("stage3"):
        L_val = problem.val_loss(W1)
    return UnrolledState(E1, F1, W1, tokens, L_tr, L_u, L_val, g, gW)


def exact_hypergradient(problem: ThreeStageProblem, A: Values, E: Values, F: Values, W: Values,
                        eta: InnerLearningRates, terms: str = "full") -> Hypergradient:
    """∇_A f(A) by reverse mode through both unrolled steps (nested tapes).

    Tape levels: the outer tape differentiates f with respect to A; inside `unroll`, one tape takes
    ∇_{E,F} L_tr and one takes ∇_W L_u. The outer tape records those gradient computations, so the
    mixed second derivatives ∇²_{A,E} L_tr, ∇²_{E',W} L_u, … are formed exactly, never materialised.
    terms="paper": the E', F' terms only (A stopped in L_u; the module's docstring), exactly.
    """
    S = problem.loss_scale
    with tf.GradientTape() as tape_A:
        tape_A.watch(A)
        state = unroll(problem, A, E, F, W, eta, terms)
        S_f = scaled(state.val_loss, S)  # S·f, recorded by tape_A (as every S·L by its own tape)
    # Under tf.distribute each replica's tape holds its own part of L_val, but the gradient TF registers
    # for an all-reduce is again an all-reduce (at every order: tests/search/test_distributed.py), so
    # replica r obtains ∂(Σ_s L_val,s)/∂A through its own shard's computations; the sum over r is ∇_A f.
    with tf.name_scope("hypergradient_reverse"):
        grad_A = reduced_gradient(tape_A, S_f, A, problem.reduce_gradients, S)
    return Hypergradient(grad_A, state)


def after(results, *groups: Values) -> list[Values]:
    """`groups` (lists of tensors) as they are, but readable only once `results` have been computed.

    The ± branches of a central difference are independent, so a graph executor may run them
    interleaved and hold both sets of activations at once. Passing the second branch its inputs
    through `after(first branch's results, …)` makes it wait, which keeps the finite-difference
    estimators' memory at that of one first-order gradient (their reason to exist); values are
    unchanged. Only the inputs are gated, not every op of the branch: control edges on every op
    made the graph larger and its optimisation slower.
    """
    with tf.control_dependencies(tf.nest.flatten(results)):
        return [[tf.identity(t) for t in group] for group in groups]


def central_difference(gradient_at: Callable, inputs: Sequence[Values], like: Values, name: str,
                       in_loop: bool | None = None) -> Values:
    """g(+1) − g(−1), element-wise, for g(s) = gradient_at(s, *inputs): the numerator of a central
    difference, with s = ±1 a scalar tensor of `like`'s dtype and `like` tensors shaped as g's output.

    in_loop (default: on one replica): g is traced once, as the body of a two-iteration
    `tf.while_loop` run one iteration at a time that accumulates Σ_s s·g(s) (exactly g(+1) − g(−1):
    0 + g⁺ − g⁻). Traced twice instead, the graph would hold two copies of a gradient graph, and on the
    CPU the graphs, not the tensors, dominate a finite-difference step's resident memory
    (docs/performance.md, Memory). Not in a loop (several replicas: TensorFlow refuses a cross-replica
    all-reduce inside control flow, "merge_call called while defining a new graph"): traced twice, the
    − branch's inputs gated by `after` so the two branches still run one after the other.
    """
    if in_loop is None:
        in_loop = replicas_in_sync() == 1
    dtype = like[0].dtype
    if not in_loop:
        with tf.name_scope(f"{name}_plus"):
            plus = gradient_at(tf.constant(1.0, dtype), *inputs)
        with tf.name_scope(f"{name}_minus"):
            minus = gradient_at(tf.constant(-1.0, dtype), *after(plus, *inputs))
        return [p - m for p, m in zip(plus, minus)]

    def body(i, total):
        sign = 1.0 - 2.0 * tf.cast(i, dtype)  # +1, then −1
        return i + 1, [t + sign * g for t, g in zip(total, gradient_at(sign, *inputs))]

    with tf.name_scope(f"{name}_pair"):
        zeros = [tf.zeros(t.shape, t.dtype) for t in like]
        _, total = tf.while_loop(lambda i, _: i < 2, body, (tf.constant(0), zeros),
                                 parallel_iterations=1, maximum_iterations=2)
    return list(total)


def _perturbation_scale(epsilon: float, vector: Values) -> tf.Tensor:
    """ε/‖v‖ (DARTS: 0.01/‖v‖), guarded against a zero vector."""
    return epsilon / tf.maximum(global_norm(vector), 1e-12)


# --- Hessian-vector products ------------------------------------------------------------------------
#
# A Hessian-vector product here is a callable
#     hvp(gradient_at, primals, tangents, inputs, like, name) -> H·t
# where gradient_at(primals, *inputs) returns a list of gradients g on this replica (not yet summed
# over replicas), shaped as the tensors of `like`; H·t = d/ds g(primals + s·t, *inputs) at s = 0, summed
# over replicas. `primals`, `tangents` and each of `inputs` are lists of tensors; `name` ("stage2",
# "stage1", "darts") names the product's ops for a profile. The hypergradients below are written once in
# terms of such products, and the estimators differ only in which one they pass.

# The name scopes of the finite differences' ± pairs, which benchmarks/profile_step.py reads.
_FD_SCOPES = {"stage2": "fd_stage2", "stage1": "fd_stage1", "darts": "darts"}


def finite_difference_hvp(epsilon: float, reduce: Callable = _identity) -> Callable:
    """H·t ≈ [g(x + ε_t t) − g(x − ε_t t)] / (2ε_t) with ε_t = ε/‖t‖ (DARTS' step): two first-order
    gradients, run one after the other (`central_difference`), so memory stays that of one. Not exact
    where g has kinks between x ± ε_t t (ReLU, max-pooling: docs/performance.md)."""
    def hvp(gradient_at, primals, tangents, inputs, like, name):
        eps = _perturbation_scale(epsilon, tangents)

        def gradient_at_perturbed(sign, primals, *inputs):
            return reduce(gradient_at(axpy(sign * eps, tangents, primals), *inputs))

        diff = central_difference(gradient_at_perturbed, [primals, *inputs], like, _FD_SCOPES[name])
        return [d / (2.0 * eps) for d in diff]

    return hvp


def forward_over_reverse_hvp(reduce: Callable = _identity) -> Callable:
    """H·t exactly, as the JVP of the gradient along t: forward mode (`tf.autodiff.ForwardAccumulator`
    with primals x, tangents t) over reverse mode (the `GradientTape` inside `gradient_at`).

    The accumulator carries a tangent beside every value of g's forward and backward pass, so the
    product costs about two first-order gradients in time and holds about two passes' tensors; no tape
    records a gradient computation to differentiate it again. Each op's JVP comes from its registered
    gradient (TensorFlow transposes the gradient's gradient), so every op of the pass needs a
    second-order gradient, as for nested tapes. The sum over replicas is linear, so it is taken of the
    JVP, after the accumulator, rather than differentiated."""
    def hvp(gradient_at, primals, tangents, inputs, like, name):
        with tf.name_scope(f"{name}_jvp"):
            # The primal pass does not read t: ungated, a graph executor runs it early and holds its
            # activations through the other passes' peak.
            primals, *inputs = after(tangents, primals, *inputs)
            with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
                grads = gradient_at(primals, *inputs)
            jvp = accumulator.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return reduce(densify(jvp, like))

    return hvp


def hvp_hypergradient(problem: ThreeStageProblem, A: Values, E: Values, F: Values, W: Values,
                      eta: InnerLearningRates, hvp: Callable, terms: str = "full") -> Hypergradient:
    """∇_A f(A) from the first-order unrolled steps and two Hessian-vector products `hvp` (above).

    With v = ∇_{W'} L_val(W'):
        u_X = −η_w ∇²_{X,W} L_u · v        for X ∈ {E', F', A}  (u_X = ∂f/∂X; u_A is the direct term),
        ∇_A f = u_A − ∇²_{A,(E,F)} L_tr · d,   d = (η_e u_E', η_f u_F'),
    the module docstring's chain rule, grouped so that each Hessian is applied to one vector. Both
    Hessians are taken at the points the virtual steps start from (W and E, F), as the chain rule
    requires; perturbing E and F jointly costs one product instead of two.
    terms="paper": without u_A (the direct Stage II term; the module's docstring), whose gradient the
    Stage II product then does not take.
    """
    _check_terms(terms)
    reduce, S = problem.reduce_gradients, problem.loss_scale
    L_tr, (gE, gF) = _gradients(lambda: problem.train_loss(E, F, A), [E, F], reduce, S, "stage1")
    E1, F1 = unrolled(E, gE, eta.eta_e), unrolled(F, gF, eta.eta_f)
    with tf.name_scope("stage2_decode"):
        tokens = tf.stop_gradient(problem.pseudo_captions(E1, F1, A))
    L_u, (gW,) = _gradients(lambda: problem.pseudo_caption_loss(W, E1, F1, A, tokens), [W], reduce, S, "stage2")
    W1 = unrolled(W, gW, eta.eta_w)
    L_val, (v,) = _gradients(lambda: problem.val_loss(W1), [W1], reduce, S, "stage3")

    direct = terms == "full"  # whether u_A is wanted

    def stage2_gradients(W, E1, F1, A):  # ∇_{E',F'(,A)} L_u(W, E', F', A) on this replica, flat
        _, grads = _gradients(lambda: problem.pseudo_caption_loss(W, E1, F1, A, tokens),
                              [E1, F1, A] if direct else [E1, F1], _identity, S, "gradient")
        return [g for group in grads for g in group]

    Hv = hvp(stage2_gradients, W, v, [E1, F1, A], E1 + F1 + (A if direct else []), "stage2")
    u = [-eta.eta_w * h for h in Hv]
    uE, uF, uA = u[: len(E1)], u[len(E1) : len(E1) + len(F1)], u[len(E1) + len(F1) :]
    d = [eta.eta_e * x for x in uE] + [eta.eta_f * x for x in uF]

    def stage1_gradient_A(EF, A):  # ∇_A L_tr(E, F, A) on this replica
        E, F = EF[: len(gE)], EF[len(gE) :]
        return _gradients(lambda: problem.train_loss(E, F, A), [A], _identity, S, "gradient")[1][0]

    Hd = hvp(stage1_gradient_A, E + F, d, [A], A, "stage1")  # ∇²_{A,(E,F)} L_tr · d
    grad_A = [ua - h for ua, h in zip(uA, Hd)] if direct else [-h for h in Hd]
    return Hypergradient(grad_A, UnrolledState(E1, F1, W1, tokens, L_tr, L_u, L_val, gE + gF, gW))


def finite_difference_hypergradient(problem: ThreeStageProblem, A: Values, E: Values, F: Values,
                                    W: Values, eta: InnerLearningRates,
                                    epsilon: float = 0.01, terms: str = "full") -> Hypergradient:
    """∇_A f(A) with both Hessian-vector products by central differences (`finite_difference_hvp`): the
    memory of a first-order step, six supernet forward and backward passes, not exact on a supernet
    with kinks."""
    return hvp_hypergradient(problem, A, E, F, W, eta, finite_difference_hvp(epsilon, problem.reduce_gradients),
                             terms)


def forward_over_reverse_hypergradient(problem: ThreeStageProblem, A: Values, E: Values, F: Values,
                                       W: Values, eta: InnerLearningRates, terms: str = "full") -> Hypergradient:
    """∇_A f(A) with both Hessian-vector products as JVPs of gradients (`forward_over_reverse_hvp`):
    equal to `exact_hypergradient` up to rounding, without a second-order tape."""
    return hvp_hypergradient(problem, A, E, F, W, eta, forward_over_reverse_hvp(problem.reduce_gradients), terms)


# DARTS' second-order methods besides "exact" (nested tapes), by their Hessian-vector product.
DARTS_HESSIAN_VECTOR_PRODUCTS = ("finite_difference", "forward_over_reverse")


@dataclasses.dataclass
class DartsHypergradient:
    """∇_A, L_val, and for order 2 the gradient the virtual step took, ∇_w L_train(w, A) (None for
    order 1, which takes no virtual step)."""

    grad_A: Values
    val_loss: tf.Tensor
    train_grads: Values | None
    train_loss: tf.Tensor | None


def darts_hypergradient(train_loss: Callable, val_loss: Callable, A: Values, w: Values, eta: float,
                        *, order: int = 2, method: str = "exact", epsilon: float = 0.01,
                        reduce_gradients: Callable = _identity, loss_scale: float = 1.0
                        ) -> tuple[Values, tf.Tensor]:
    """(∇_A, L_val) of `darts_hypergradient_with_state` (same arguments)."""
    result = darts_hypergradient_with_state(train_loss, val_loss, A, w, eta, order=order, method=method,
                                            epsilon=epsilon, reduce_gradients=reduce_gradients,
                                            loss_scale=loss_scale)
    return result.grad_A, result.val_loss


def darts_hypergradient_with_state(train_loss: Callable, val_loss: Callable, A: Values, w: Values,
                                   eta: float, *, order: int = 2, method: str = "exact",
                                   epsilon: float = 0.01, reduce_gradients: Callable = _identity,
                                   loss_scale: float = 1.0) -> DartsHypergradient:
    """The DARTS bilevel hypergradient (Liu et al. 2019, arXiv 1806.09055, eq. 6–8).

    train_loss(w, A) = L_train, val_loss(w, A) = L_val.
      order 1:  ∇_A L_val(w, A)
      order 2:  ∇_A L_val(w', A) with w' = w − η ∇_w L_train(w, A), i.e.
                ∇_A L_val(w', A) − η ∇²_{A,w} L_train(w, A) · ∇_{w'} L_val(w', A),
                by nested tapes (method="exact"), or with the Hessian-vector product as the JVP of
                ∇_A L_train along v (method="forward_over_reverse", exact) or by DARTS' central
                difference with w± = w ± ε/‖v‖ · v (method="finite_difference").
    Every tape differentiates S·L and divides by S, S = loss_scale (as in `ThreeStageProblem`).
    """
    reduce, S = reduce_gradients, loss_scale
    if order == 1:
        L_val, (gA,) = _gradients(lambda: val_loss(w, A), [A], reduce, S, "darts_val")
        return DartsHypergradient(gA, L_val, None, None)
    if order != 2:
        raise ValueError(f"darts_hypergradient: order must be 1 or 2, received {order!r}.")
    if method == "exact":
        with tf.GradientTape() as tape_A:
            tape_A.watch(A)
            with tf.name_scope("darts_train"):
                with tf.GradientTape() as tape_w:
                    tape_w.watch(w)
                    L_tr = train_loss(w, A)
                    S_L_tr = scaled(L_tr, S)
                gw = reduced_gradient(tape_w, S_L_tr, w, reduce, S)
                w1 = unrolled(w, gw, eta)
            with tf.name_scope("darts_val"):
                L_val = val_loss(w1, A)
                S_L_val = scaled(L_val, S)
        with tf.name_scope("hypergradient_reverse"):
            grad_A = reduced_gradient(tape_A, S_L_val, A, reduce, S)
        return DartsHypergradient(grad_A, L_val, gw, L_tr)
    if method not in DARTS_HESSIAN_VECTOR_PRODUCTS:
        raise ValueError(f"darts_hypergradient: method must be one of {['exact', *DARTS_HESSIAN_VECTOR_PRODUCTS]}, "
                         f"received {method!r}.")
    hvp = (finite_difference_hvp(epsilon, reduce) if method == "finite_difference"
           else forward_over_reverse_hvp(reduce))
    L_tr, (gw,) = _gradients(lambda: train_loss(w, A), [w], reduce, S, "darts_train")
    w1 = unrolled(w, gw, eta)
    L_val, (v, g_direct) = _gradients(lambda: val_loss(w1, A), [w1, A], reduce, S, "darts_val")

    def train_gradient_A(w, A):  # ∇_A L_train(w, A) on this replica
        return _gradients(lambda: train_loss(w, A), [A], _identity, S, "gradient")[1][0]

    Hv = hvp(train_gradient_A, w, v, [A], A, "darts")  # ∇²_{A,w} L_train · v
    grad_A = [g - eta * h for g, h in zip(g_direct, Hv)]
    return DartsHypergradient(grad_A, L_val, gw, L_tr)


@HYPERGRADIENTS.register("exact")
def _exact(problem, A, E, F, W, eta, *, terms: str, epsilon: float) -> Hypergradient:  # noqa: ARG001
    return exact_hypergradient(problem, A, E, F, W, eta, terms=terms)


@HYPERGRADIENTS.register("finite_difference")
def _finite_difference(problem, A, E, F, W, eta, *, terms: str, epsilon: float) -> Hypergradient:
    return finite_difference_hypergradient(problem, A, E, F, W, eta, epsilon=epsilon, terms=terms)


@HYPERGRADIENTS.register("forward_over_reverse")
def _forward_over_reverse(problem, A, E, F, W, eta, *, terms: str, epsilon: float) -> Hypergradient:  # noqa: ARG001
    return forward_over_reverse_hypergradient(problem, A, E, F, W, eta, terms=terms)


def register_hypergradient(name: str, estimator: Callable | None = None):
    """Makes `estimator(problem, A, E, F, W, eta, *, terms, epsilon) -> Hypergradient` available as
    `--hypergradient=name` for the three-stage strategy; usable as a decorator."""
    return HYPERGRADIENTS.register(name, estimator)


def get_hypergradient(name: str) -> Callable:
    """The three-stage estimator registered as `name`."""
    return HYPERGRADIENTS.lookup(name, f"--hypergradient must be one of {sorted(HYPERGRADIENTS)}, "
                                       f"received {name!r}.")
