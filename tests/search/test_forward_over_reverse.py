"""The forward-over-reverse hypergradient (each Hessian-vector product the JVP of a gradient) equals the
nested-tape `exact` one in float64, on a supernet with the real layers: BatchNorm in training mode
(batch statistics), ReLU and max-pooling inside the candidates, whose kinks are what make the finite
differences inaccurate. Three-stage with both Stage II losses and both sets of terms, and DARTS' second
order; op by op and inside tf.function, and through the strategies (float32)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.search import hypergradient as hg
from capnas_tf.search.captioning import make_three_stage_problem
from tests.search.real_supernet import ETA, PRIMITIVES, darts_losses, flat
from tests.search.test_captioning import L, toy_batches

RTOL = 1e-6


def assert_equal_to_exact(got, exact):
    got, exact = flat(got), flat(exact)
    scale = np.abs(exact).max()
    assert scale > 1e-6, "the exact hypergradient is ~0 here, so the comparison would prove nothing"
    np.testing.assert_allclose(got, exact, rtol=RTOL, atol=RTOL * scale)


def test_the_supernet_has_the_layers_whose_second_order_the_comparison_is_about(supernet64):
    layers = list(supernet64[0].encoder._flatten_layers())
    names = {type(layer).__name__ for layer in layers}
    assert {"ExactBatchNormalization", "SepConv"} <= names, sorted(names)  # SepConv: ReLU → convs → BN
    assert any(getattr(layer, "pool_type", None) == "max" for layer in layers)
    assert all(v.dtype == "float64" for v in supernet64[0].encoder.trainable_variables)


@pytest.mark.parametrize("stage2", ["soft", "straight_through"])
@pytest.mark.parametrize("terms", ["full", "paper"])
def test_three_stage_forward_over_reverse_equals_nested_tapes(supernet64, stage2, terms):
    models, batches, A, E, F, W = supernet64
    problem = make_three_stage_problem(models, batches, stage2=stage2, max_caption_len=L)
    exact = hg.exact_hypergradient(problem, A, E, F, W, ETA, terms=terms)
    fwd = hg.forward_over_reverse_hypergradient(problem, A, E, F, W, ETA, terms=terms)
    assert_equal_to_exact(fwd.grad_A, exact.grad_A)
    # The unrolled state the weight steps may reuse is the same too.
    np.testing.assert_allclose(float(fwd.state.val_loss), float(exact.state.val_loss), rtol=1e-12)
    np.testing.assert_allclose(flat(fwd.state.student_grads), flat(exact.state.student_grads), rtol=1e-10,
                               atol=1e-12)


def test_darts_second_order_forward_over_reverse_equals_nested_tapes(supernet64):
    models, batches, A, E, F, _ = supernet64
    train_loss, val_loss = darts_losses(models, batches)
    w = E + F
    exact = hg.darts_hypergradient_with_state(train_loss, val_loss, A, w, 0.5, method="exact")
    fwd = hg.darts_hypergradient_with_state(train_loss, val_loss, A, w, 0.5, method="forward_over_reverse")
    assert_equal_to_exact(fwd.grad_A, exact.grad_A)
    # The Hessian-vector product's share is not negligible: ∇_A L_val(w', A) alone differs from it.
    w1 = [x - 0.5 * g for x, g in zip(w, exact.train_grads)]
    first_order, _ = hg.darts_hypergradient(train_loss, val_loss, A, w1, 0.5, order=1)
    assert np.abs(flat(first_order) - flat(exact.grad_A)).max() > 1e-3 * np.abs(flat(exact.grad_A)).max()


@pytest.mark.slow  # ~30 s of tracing; CI runs it (.ci/run)
def test_forward_over_reverse_inside_tf_function_equals_nested_tapes(supernet64):
    """As the search step runs it: traced (three-stage with the straight-through Stage II and all terms, and
    DARTS' second order in one graph), against nested tapes run op by op."""
    models, batches, A, E, F, W = supernet64
    problem = make_three_stage_problem(models, batches, stage2="straight_through", max_caption_len=L)
    train_loss, val_loss = darts_losses(models, batches)

    @tf.function(autograph=False)
    def forward_over_reverse():
        return (hg.forward_over_reverse_hypergradient(problem, A, E, F, W, ETA).grad_A,
                hg.darts_hypergradient(train_loss, val_loss, A, E + F, 0.5, method="forward_over_reverse")[0])

    three_stage, darts = forward_over_reverse()
    assert_equal_to_exact(three_stage, hg.exact_hypergradient(problem, A, E, F, W, ETA).grad_A)
    assert_equal_to_exact(darts, hg.darts_hypergradient(train_loss, val_loss, A, E + F, 0.5, method="exact")[0])


@pytest.mark.slow  # a minute of processes or tracing; CI runs it after the default suite (.ci/run)
def test_strategies_take_forward_over_reverse_from_the_config():
    """--hypergradient=forward_over_reverse through ThreeStageStrategy and DartsStrategy, float32: `exact`'s
    result up to float32 rounding."""
    from capnas_tf.search.models import build_search_models
    from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy

    batches = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype == tf.float64 else t, toy_batches())
    supernet = SupernetConfig(channels=2, num_cells=2, num_nodes=1, stem_multiplier=1, primitives=PRIMITIVES)
    results = {}
    for cls, name in ((ThreeStageStrategy, "three_stage"), (DartsStrategy, "darts")):
        for hypergradient in ("exact", "forward_over_reverse"):
            config = SearchConfig(strategy=name, hypergradient=hypergradient, decoder="lstm", student_decoder="lstm",
                                  eta_e=0.5, eta_f=0.5, eta_w=0.5, supernet=supernet)
            keras.utils.set_random_seed(2)
            models = build_search_models(config, vocab_size=9, max_caption_len=L, image_size=8)
            strategy = cls(models, config, max_caption_len=L)
            # Op by op: tracing the four estimators would take a minute (the test above traces two).
            results[name, hypergradient] = flat(strategy.hypergradient(batches).grad_A)
    for name in ("three_stage", "darts"):
        exact, fwd = results[name, "exact"], results[name, "forward_over_reverse"]
        assert np.abs(exact).max() > 1e-6
        np.testing.assert_allclose(fwd, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())
