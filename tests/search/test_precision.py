"""Mixed precision in the search (`search/precision.py`): the loss scale S through the nested tapes, the
hypergradient under mixed_bfloat16 / mixed_float16 against float32 on the same weights, and the
combinations that are refused."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.jobs import search_streams
from capnas_tf.search import precision
from capnas_tf.search.hypergradient import darts_hypergradient, exact_hypergradient, finite_difference_hypergradient
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import ThreeStageStrategy
from tests.search.conftest import TINY_CAPTION_LEN
from tests.search.test_hypergradient import A0, E0, ETA, F0, W0, _darts_case, f64, toy_problem
from tests.search.test_search_loop import TINY_SEARCH


@pytest.mark.parametrize("estimator", [exact_hypergradient, finite_difference_hypergradient])
def test_power_of_two_loss_scale_changes_no_bit_of_the_hypergradient(estimator):
    """∇(S·L)/S through both unrolled steps and the outer tape: with S = 2^10 every value is the S = 1
    one exactly (float64 scaling by a power of two is exact); a misplaced S would be off by 2^10."""
    problem = toy_problem()
    scaled = dataclasses.replace(problem, loss_scale=2.0**10)
    plain = estimator(problem, A0, E0, F0, W0, ETA)
    with_scale = estimator(scaled, A0, E0, F0, W0, ETA)
    for a, b in zip(plain.grad_A + plain.state.train_grads + plain.state.student_grads,
                    with_scale.grad_A + with_scale.state.train_grads + with_scale.state.student_grads):
        np.testing.assert_array_equal(b.numpy(), a.numpy())


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_power_of_two_loss_scale_changes_no_bit_of_darts_hypergradient(method):
    train, val = _darts_case()
    args = (train, val, [f64([0.7])], [f64([1.5])], 0.1)
    plain, _ = darts_hypergradient(*args, order=2, method=method)
    with_scale, _ = darts_hypergradient(*args, order=2, method=method, loss_scale=2.0**12)
    np.testing.assert_array_equal(with_scale[0].numpy(), plain[0].numpy())


# Smaller than the search loop's tiny supernet (one node per cell, three candidates): each test here traces
# a whole three-stage hypergradient, and what they check is the precision plumbing, not the search space.
PRECISION_SUPERNET = SupernetConfig(channels=4, num_cells=3, num_nodes=1,
                                    primitives=("none", "skip_connect", "sep_conv_3x3"))


def _models(tiny_data, policy, **overrides):
    """The tiny search's models on PRECISION_SUPERNET in `policy`, without dropout (whose masks would differ
    between policies).

    F and W are TINY_SEARCH's LSTM decoder, on which the tolerances below were measured. With the default transformer
    F and W the low-precision hypergradient agrees less (measured here: mixed_bfloat16 cosine 0.966, norm
    0.88×; mixed_float16 cosine 0.988, norm 0.86×; docs/performance.md, "Mixed precision")."""
    keras.utils.set_random_seed(0)
    overrides.setdefault("supernet", PRECISION_SUPERNET)
    config = dataclasses.replace(TINY_SEARCH, dtype_policy=policy, **overrides)
    models = build_search_models(config, vocab_size=len(tiny_data.vocab), max_caption_len=TINY_CAPTION_LEN,
                                 image_size=16)
    for layer in (models.decoder, models.student):
        for sublayer in layer._flatten_layers():
            if isinstance(sublayer, keras.layers.Dropout):
                sublayer.rate = 0.0
    return config, models


def _copy_weights(source, target):
    for model_s, model_t in ((source.encoder, target.encoder), (source.decoder, target.decoder),
                             (source.student, target.student)):
        assert len(model_s.variables) == len(model_t.variables)
        for v_s, v_t in zip(model_s.variables, model_t.variables):
            v_t.assign(v_s)


@pytest.fixture(scope="module")
def float32_reference(tiny_data):
    """Batches, the float32 models and their exact three-stage hypergradient (flattened)."""
    batches = next(iter(search_streams(tiny_data, 4)))
    config, models = _models(tiny_data, "float32")
    grad_A, op_types = _hypergradient(ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN), batches)
    assert np.linalg.norm(grad_A) > 1e-9  # not trivially zero (it is ~4e-6: A barely matters at init)
    return batches, models, grad_A, op_types


def _hypergradient(strategy, batches):
    """(flattened ∇_A, op types of the traced hypergradient)."""
    fn = tf.function(lambda b: strategy.hypergradient(b).grad_A, autograph=False)
    op_types = {op.type for op in fn.get_concrete_function(batches).graph.get_operations()}
    grads = fn(batches)
    assert all(g.dtype == tf.float32 for g in grads)
    flat = np.concatenate([g.numpy().ravel() for g in grads])
    assert np.isfinite(flat).all()
    return flat, op_types


@pytest.fixture(scope="module")
def float32_reference_random_A(tiny_data):
    """As `float32_reference`, at A ~ N(0, 1): a state where A matters (at init ∇A is ~1e-6)."""
    batches = next(iter(search_streams(tiny_data, 4)))
    config, models = _models(tiny_data, "float32")
    rng = np.random.default_rng(3)
    for alpha in models.encoder.arch_variables:
        alpha.assign(rng.normal(0, 1, alpha.shape).astype("float32"))
    grad_A, op_types = _hypergradient(ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN), batches)
    return batches, models, grad_A, op_types


def _agreement(tiny_data, float32_reference, policy, **overrides):
    """(cosine, norm ratio) of the exact hypergradient in `policy` against float32, same weights and batches."""
    batches, models32, g32, _ = float32_reference
    config, models = _models(tiny_data, policy, **overrides)
    _copy_weights(models32, models)
    assert models.encoder.compute_dtype == policy.removeprefix("mixed_")
    assert all(v.dtype == "float32" for v in models.encoder.variables)
    g, _ = _hypergradient(ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN), batches)
    return g32 @ g / (np.linalg.norm(g32) * np.linalg.norm(g)), np.linalg.norm(g) / np.linalg.norm(g32)


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_mixed_bfloat16_hypergradient_agrees_with_float32(tiny_data, float32_reference_random_A):
    """Stated tolerance: cosine > 0.98 and norm within 5 % (measured on an AVX2 CPU: 0.993 and 0.979).

    At A ~ N(0, 1), not at init: there ∇A is ~1e-6, and the norm of its bfloat16 estimate depends on the
    CPU's bfloat16 kernels (0.966× on an AVX-512 CPU, 0.755× on an AVX2 one, cosine 0.99 on both)."""
    cosine, ratio = _agreement(tiny_data, float32_reference_random_A, "mixed_bfloat16")
    assert cosine > 0.98 and abs(ratio - 1) < 0.05, (cosine, ratio)


def test_mixed_float16_hypergradient_gets_the_loss_scale(tiny_data, float32_reference):
    """The hypergradient here is ~1e-6 per entry, so float16 cotangents underflow without scaling.
    Measured (PRECISION_SUPERNET): S = 1 cosine 0.735; S = 2^5 0.9997 (1.046×); S = 2^10 (default)
    0.9995 (1.032×); S = 2^15 0.9995 (1.034×). Stated tolerance at the default: cosine > 0.998, norm within 5 %."""
    cosine, ratio = _agreement(tiny_data, float32_reference, "mixed_float16")
    assert precision.loss_scale(SearchConfig(dtype_policy="mixed_float16")) == precision.FLOAT16_LOSS_SCALE
    assert cosine > 0.998 and abs(ratio - 1) < 0.05, (cosine, ratio)


@pytest.mark.slow  # 19 s on 2 cores: one more float16 hypergradient traced
def test_mixed_float16_hypergradient_needs_the_loss_scale(tiny_data, float32_reference):
    unscaled_cosine, _ = _agreement(tiny_data, float32_reference, "mixed_float16", loss_scale=1.0)
    assert unscaled_cosine < 0.9


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_mixed_float16_search_step_runs_and_updates_every_model(tiny_data, float32_reference):
    batches = float32_reference[0]
    config, models = _models(tiny_data, "mixed_float16")
    strategy = ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN)
    before = [v.numpy().copy() for v in models.A + models.E + models.W]
    step = tf.function(lambda b: strategy.step(b, update_architecture=True), autograph=False)
    metrics = {k: float(v) for k, v in step(batches).items()}
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    after = models.A + models.E + models.W
    assert not np.allclose(after[0].numpy(), before[0])  # A moved
    assert any(not np.allclose(a.numpy(), b) for a, b in zip(after[len(models.A):], before[len(models.A):]))


@pytest.mark.parametrize("strategy, overrides, message", [
    ("three_stage", {"hypergradient": "finite_difference"}, "--hypergradient=finite_difference"),
    ("darts", {"hypergradient": "finite_difference", "darts_order": 2}, "--hypergradient=finite_difference"),
    ("gdas", {}, "--search_strategy"),
    ("three_stage", {"loss_scale": 1000.0}, "loss_scale"),  # refused by SearchConfig itself
])
def test_refused_combinations_name_the_flags(strategy, overrides, message):
    with pytest.raises(ValueError, match=message):
        precision.check_precision(SearchConfig(strategy=strategy, dtype_policy="mixed_bfloat16", **overrides))


def test_first_order_darts_and_exact_searches_are_accepted_in_low_precision():
    for config in (SearchConfig(strategy="darts", darts_order=1, hypergradient="finite_difference",
                                dtype_policy="mixed_float16"),
                   SearchConfig(strategy="three_stage", dtype_policy="mixed_bfloat16", loss_scale=256.0)):
        precision.check_precision(config)
    assert precision.loss_scale(SearchConfig(dtype_policy="mixed_float16")) == 2.0**10
    assert precision.loss_scale(SearchConfig(dtype_policy="mixed_bfloat16")) == 1.0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="dtype_policy must be one of"):  # SearchConfig's check
        precision.check_precision(SearchConfig(dtype_policy="float16"))


def _bn_layers(models):
    from capnas_tf.search_space.ops import ExactBatchNormalization

    return [layer for model in (models.encoder, models.decoder, models.student)
            for layer in model._flatten_layers() if isinstance(layer, ExactBatchNormalization)]


def _op_types(fn, batches):
    return {op.type for op in tf.function(fn, autograph=False).get_concrete_function(batches).graph.get_operations()}


def test_batchnorm_takes_the_fused_kernel_except_under_nested_tapes(tiny_data, float32_reference):
    batches, models, _, exact_op_types = float32_reference  # the fixture traced the exact hypergradient
    assert TINY_SEARCH.hypergradient == "exact" and _bn_layers(models)
    assert not {"FusedBatchNormV3", "FusedBatchNormGradV3"} & exact_op_types
    config, models = _models(tiny_data, "float32")
    strategy = ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN)
    assert "FusedBatchNormV3" in _op_types(lambda b: strategy.supernet_weight_step(b["train"]), batches)


@pytest.mark.slow  # 39 s on 2 cores: two finite-difference hypergradients traced
def test_fused_batchnorm_changes_the_finite_difference_hypergradient_only_by_rounding(tiny_data, float32_reference):
    """The finite-difference estimator differentiates once, through the fused kernel; against the
    `_moments` path (`layer.fused = False`) on the same weights and batches, in float32 (whose rounding
    the ε-differences amplify)."""
    batches, models32, _, _ = float32_reference
    grads = []
    for fused in (True, False):
        config, models = _models(tiny_data, "float32", hypergradient="finite_difference")
        _copy_weights(models32, models)
        for layer in _bn_layers(models):
            layer.fused = fused
        grad, op_types = _hypergradient(ThreeStageStrategy(models, config, max_caption_len=TINY_CAPTION_LEN), batches)
        assert ("FusedBatchNormGradV3" in op_types) == fused
        grads.append(grad)
    fused_grad, moments_grad = grads
    cosine = fused_grad @ moments_grad / (np.linalg.norm(fused_grad) * np.linalg.norm(moments_grad))
    assert cosine > 0.999 and abs(np.linalg.norm(fused_grad) / np.linalg.norm(moments_grad) - 1) < 0.01, cosine
