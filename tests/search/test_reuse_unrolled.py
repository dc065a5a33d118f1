"""`reuse_unrolled_gradients`: the weight steps take the gradients the unrolled step already computed.

Each update of a reuse step is checked against the same update computed independently by the
alternating strategy on a twin of the models (same initial values; the toy models are BN- and
dropout-free, so every computation is deterministic):
  A     = the alternating strategy's architecture step (A is updated first in both);
  E, F  = a plain Stage I weight step at A_t (no architecture update before it);
  W     = the student's weight step of a strategy whose E, F were set by hand to the virtual teacher
          E', F' = (E, F) − η ∇_{E,F} L_tr (its greedy decode then gives the virtual teacher's captions).
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig
from capnas_tf.jobs import search_streams
from capnas_tf.decoders.losses import caption_loss
from capnas_tf.search.captioning import supernet_logits
from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy
from capnas_tf.search.stateless import densify, values_of
from tests.search.conftest import TINY_CAPTION_LEN
from tests.search.toy_models import toy_search_models

L = TINY_CAPTION_LEN
# Large rates so that every update is far above float32 rounding.
CONFIG = SearchConfig(eta_e=0.5, eta_f=0.5, eta_w=0.5, weight_lr=0.05, student_lr=0.05, arch_lr=0.05,
                      grad_clip=0.0)


@pytest.fixture(scope="module")
def batches(tiny_data):
    return next(iter(search_streams(tiny_data, 4)))


def twin(tiny_data):
    return toy_search_models(len(tiny_data.vocab), L, seed=4)


def assert_values_equal(actual, expected, what):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-7, err_msg=what)


def assert_values_differ(actual, other, what):
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(actual, other)) > 1e-4, what


def virtual_teacher_values(models, batch, eta):
    """(E', F') = (E, F) − η ∇_{E,F} L_tr(E, F, A), by a tape of its own."""
    variables = models.E + models.F
    with tf.GradientTape() as tape:
        loss = caption_loss(supernet_logits(models, batch["image"], batch["tokens"][:, :-1], models.A),
                            batch["tokens"])
    grads = densify(tape.gradient(loss, variables), variables)
    return [v - eta * g for v, g in zip(variables, grads)]


def check_reuse_step_against_the_alternation(tiny_data, batches, strategy_cls, config):
    """One reuse step vs. one alternating step on twins: same metric names, same A, different E; and
    E, F equal to a plain weight step at A_t. Returns the reuse twin's models."""
    reuse = twin(tiny_data)
    metrics = strategy_cls(reuse, dataclasses.replace(config, reuse_unrolled_gradients=True),
                           max_caption_len=L).step(batches, update_architecture=True)
    alternating = twin(tiny_data)
    alternating_metrics = strategy_cls(alternating, config, max_caption_len=L).step(batches,
                                                                                   update_architecture=True)
    assert sorted(metrics) == sorted(alternating_metrics)  # the same log lines and TensorBoard tags
    assert_values_equal(values_of(reuse.A), values_of(alternating.A), "A")
    assert_values_differ(values_of(reuse.E), values_of(alternating.E), "E: the alternation is not what ran")

    at_start_A = twin(tiny_data)
    strategy_cls(at_start_A, config, max_caption_len=L).supernet_weight_step(batches["train"])
    assert_values_equal(values_of(reuse.E) + values_of(reuse.F), values_of(at_start_A.E) + values_of(at_start_A.F),
                        "E, F")
    return reuse


@pytest.mark.parametrize("hypergradient", ["exact", "finite_difference"])
def test_three_stage_reuse_step_updates_each_model_from_the_state_at_the_step_start(tiny_data, batches,
                                                                                    hypergradient):
    config = dataclasses.replace(CONFIG, hypergradient=hypergradient)
    reuse = check_reuse_step_against_the_alternation(tiny_data, batches, ThreeStageStrategy, config)

    virtual = twin(tiny_data)
    for variable, value in zip(virtual.E + virtual.F, virtual_teacher_values(virtual, batches["train"], 0.5)):
        variable.assign(value)
    ThreeStageStrategy(virtual, config, max_caption_len=L).student_weight_step(batches["unlabeled"]["image"])
    assert_values_equal(values_of(reuse.W), values_of(virtual.W), "W")


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_darts_second_order_reuse_step_updates_weights_at_the_architecture_before_its_update(
        tiny_data, batches, method):
    config = dataclasses.replace(CONFIG, strategy="darts", darts_order=2, hypergradient=method)
    check_reuse_step_against_the_alternation(tiny_data, batches, DartsStrategy, config)


def test_first_order_darts_has_no_unrolled_gradient_to_reuse_and_alternates(tiny_data, batches):
    config = dataclasses.replace(CONFIG, strategy="darts", darts_order=1)
    reuse = twin(tiny_data)
    DartsStrategy(reuse, dataclasses.replace(config, reuse_unrolled_gradients=True),
                  max_caption_len=L).step(batches, update_architecture=True)
    alternating = twin(tiny_data)
    DartsStrategy(alternating, config, max_caption_len=L).step(batches, update_architecture=True)
    assert_values_equal(values_of(reuse.E) + values_of(reuse.A), values_of(alternating.E) + values_of(alternating.A),
                        "order 1 ignores the option")


def _state(model):
    """(seed-generator states, BatchNorm moving means and variances) of a model, as arrays."""
    seeds = [v for v in model.variables if "seed_generator_state" in v.path]
    moving = [v for v in model.variables if v.path.endswith(("moving_mean", "moving_variance"))]
    return [np.array(v.numpy()) for v in seeds], [np.array(v.numpy()) for v in moving]


def _changed(before, after):
    """Whether any of the arrays changed (an LSTM's own seed generators stay unused at dropout 0)."""
    return any(np.any(b != a) for b, a in zip(before, after))


@pytest.mark.parametrize("strategy_cls, config, traced", [
    (ThreeStageStrategy, SearchConfig(hypergradient="exact"), False),
    pytest.param(ThreeStageStrategy, SearchConfig(hypergradient="finite_difference"), True,  # ± pairs in loop bodies
                 marks=pytest.mark.slow),  # ~22 s
    (DartsStrategy, SearchConfig(strategy="darts", darts_order=2, hypergradient="exact"), False),
], ids=["three_stage-exact", "three_stage-finite_difference-traced", "darts-exact"])
def test_reuse_steps_advance_dropout_seeds_and_batch_norm_statistics(tiny_data, batches, strategy_cls, config,
                                                                      traced):
    """With every pass of a reuse step inside a StatelessScope, the state the skipped weight steps would have
    updated is taken from the unrolled passes: each step draws new dropout masks (the seed generators of F,
    and of W for three_stage, advance every step) and BatchNorm's moving statistics of E (and W's encoder)
    move."""
    from capnas_tf.search.models import build_search_models
    from tests.search.test_search_loop import LOOP_SEARCH

    config = dataclasses.replace(LOOP_SEARCH, strategy=config.strategy, hypergradient=config.hypergradient,
                                 darts_order=config.darts_order, reuse_unrolled_gradients=True)
    models = build_search_models(config, vocab_size=len(tiny_data.vocab), max_caption_len=L, image_size=16)
    strategy = strategy_cls(models, config, max_caption_len=L)
    step = lambda: strategy.step(batches, update_architecture=True)  # noqa: E731
    if traced:
        step = tf.function(step, autograph=False)
    watched = [models.encoder, models.decoder] + ([models.student] if strategy.uses_student else [])
    states = [[_state(m) for m in watched]]
    for _ in range(2):
        step()
        states.append([_state(m) for m in watched])
    for before, after in zip(states, states[1:]):
        for model, (seeds0, moving0), (seeds1, moving1) in zip(watched, before, after):
            if model is not models.encoder:  # the supernet has no dropout
                assert _changed(seeds0, seeds1), f"{model.name}: dropout seeds did not advance"
            if model is not models.decoder:  # the LSTM decoders have no BatchNorm
                assert _changed(moving0, moving1), f"{model.name}: BatchNorm statistics did not update"
