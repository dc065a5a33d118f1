"""A's optimizer: DARTS' Adam with the weight decay λ of A coupled (L2 added to ∇A before Adam, as
torch.optim.Adam's weight_decay) or decoupled (AdamW), and the global-norm clip of ∇A."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig
from capnas_tf.optimizers import FusedAdam, FusedAdamUpdate, FusedAdamW
from capnas_tf.search.strategies import CoupledWeightDecayAdam, ThreeStageStrategy, _arch_optimizer
from capnas_tf.search.stateless import global_norm, values_of
from tests.search.toy_models import toy_search_models

L = 6  # caption length of the toy models (the clip test builds them, never runs them)


def _variables(dtype):
    rng = np.random.default_rng(0)
    return [keras.Variable(rng.normal(size=(2, 3)), dtype=dtype), keras.Variable(rng.normal(size=(1, 3)), dtype=dtype)]


def _gradients(step, dtype):
    rng = np.random.default_rng(10 + step)
    return [tf.constant(rng.normal(size=(2, 3)), dtype), tf.constant(rng.normal(size=(1, 3)), dtype)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_coupled_step_is_adam_on_the_gradient_plus_l2_times_A(dtype):
    lam, lr = 0.3, 0.05  # λ large enough that λA changes every step visibly
    coupled_A, reference_A, decoupled_A = _variables(dtype), _variables(dtype), _variables(dtype)
    coupled = CoupledWeightDecayAdam(lr, l2=lam, beta_1=0.5, beta_2=0.999)
    reference = FusedAdam(lr, beta_1=0.5, beta_2=0.999)  # equal to Adam's formula: tests/test_optimizers.py
    decoupled = FusedAdamW(lr, beta_1=0.5, beta_2=0.999, weight_decay=lam)
    for step in range(3):
        g = _gradients(step, dtype)
        coupled.apply_gradients(zip(g, coupled_A))
        reference.apply_gradients(zip([x + lam * a.value for x, a in zip(g, reference_A)], reference_A))
        decoupled.apply_gradients(zip(g, decoupled_A))
        for c, r in zip(coupled_A, reference_A):
            np.testing.assert_allclose(c.numpy(), r.numpy(), rtol=1e-6 if dtype == "float32" else 1e-13, atol=0)
    assert max(np.abs(c.numpy() - d.numpy()).max() for c, d in zip(coupled_A, decoupled_A)) > 1e-3


def test_arch_optimizer_follows_the_weight_decay_mode():
    coupled = _arch_optimizer(SearchConfig())  # the default: DARTS' way
    assert type(coupled) is CoupledWeightDecayAdam and coupled.l2 == SearchConfig().arch_weight_decay
    assert (coupled.beta_1, coupled.beta_2, coupled.weight_decay) == (0.5, 0.999, None)  # no decoupled decay
    decoupled = _arch_optimizer(SearchConfig(arch_weight_decay_mode="decoupled", arch_weight_decay=2e-3))
    assert type(decoupled) is FusedAdamW and decoupled.weight_decay == 2e-3
    assert CoupledWeightDecayAdam.from_config(coupled.get_config()).l2 == coupled.l2


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_arch_gradient_clip_bounds_its_norm_and_lambda_A_is_added_after_it(monkeypatch, clip):
    """What Adam receives is clip(∇A) + λA: the clip bounds the hypergradient's norm (0: off), the
    regulariser is not clipped."""
    seen = []
    adam_step = FusedAdamUpdate.update_step

    def recording(self, gradient, variable, learning_rate):
        seen.append(tf.convert_to_tensor(gradient))
        return adam_step(self, gradient, variable, learning_rate)

    monkeypatch.setattr(FusedAdamUpdate, "update_step", recording)
    lam = 0.1
    config = SearchConfig(arch_grad_clip=clip, arch_weight_decay=lam)
    models = toy_search_models(vocab_size=7, max_caption_len=L)
    strategy = ThreeStageStrategy(models, config, max_caption_len=L)
    A = values_of(models.A)
    grads = [10.0 * tf.ones_like(a) for a in A]  # ‖∇A‖ = 10·√9 = 30
    norm = strategy.apply_architecture_gradients(grads)
    assert float(norm) == pytest.approx(30.0)  # logged before clipping
    received = [s - lam * a for s, a in zip(seen, A)]
    expected = [g * (clip / 30.0) for g in grads] if clip else grads
    for r, e in zip(received, expected):
        np.testing.assert_allclose(r.numpy(), e.numpy(), rtol=1e-6)
    if clip:
        assert float(global_norm(received)) <= clip * (1 + 1e-6)


def test_weight_decay_mode_and_clip_are_checked():
    from capnas_tf.config import ConfigError

    with pytest.raises(ConfigError, match="arch_weight_decay_mode"):
        SearchConfig(arch_weight_decay_mode="l2")
    with pytest.raises(ConfigError, match="arch_grad_clip"):
        SearchConfig(arch_grad_clip=-1.0)
    assert dataclasses.replace(SearchConfig(), arch_grad_clip=0.0).arch_grad_clip == 0.0


def test_beta_decay_adds_the_gradient_of_its_rising_weight_times_the_mean_logsumexp_of_the_edges():
    """β-DARTS: Adam receives ∇A + λA + ∇_A[λ_t · mean over all rows e of logsumexp(A_e)], λ_t = λ_β t / (T − 1);
    the reference differentiates that term with a tape (float64)."""
    lam, beta, lr, steps = 0.01, 2.0, 0.05, 3
    A, reference_A = _variables("float64"), _variables("float64")
    edges = sum(a.shape[0] for a in A)
    optimizer = CoupledWeightDecayAdam(lr, l2=lam, beta_decay=beta, edges=edges, beta_1=0.5, beta_2=0.999)
    optimizer.beta_decay_steps = steps
    reference = FusedAdam(lr, beta_1=0.5, beta_2=0.999)
    for step in range(steps):
        g = _gradients(step, "float64")
        weight = beta * step / (steps - 1)
        values = [tf.convert_to_tensor(a.value) for a in reference_A]
        with tf.GradientTape() as tape:
            tape.watch(values)
            term = weight * tf.reduce_mean(tf.concat([tf.reduce_logsumexp(v, axis=-1) for v in values], 0))
        extra = tape.gradient(term, values)
        reference.apply_gradients(zip([x + lam * v + e for x, v, e in zip(g, values, extra)], reference_A))
        optimizer.apply_gradients(zip(g, A))
        for a, r in zip(A, reference_A):
            np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-12, atol=1e-15)
    plain = _variables("float64")
    plain_optimizer = CoupledWeightDecayAdam(lr, l2=lam, beta_1=0.5, beta_2=0.999)
    for step in range(steps):
        plain_optimizer.apply_gradients(zip(_gradients(step, "float64"), plain))
    assert max(np.abs(a.numpy() - p.numpy()).max() for a, p in zip(A, plain)) > 1e-3  # the term moved A


def test_beta_decay_schedule_spans_the_architecture_steps_and_needs_coupled_decay():
    from capnas_tf.config import ConfigError

    models = toy_search_models(vocab_size=7, max_caption_len=L)
    strategy = ThreeStageStrategy(models, SearchConfig(arch_beta_decay=25.0), max_caption_len=L)
    strategy.begin_search(total_steps=10, warmup_steps=4)
    assert strategy.arch_optimizer.beta_decay_steps == 6
    assert strategy.arch_optimizer.edges == sum(int(a.shape[0]) for a in models.A)
    with pytest.raises(ConfigError, match="arch_beta_decay"):
        SearchConfig(arch_beta_decay=1.0, arch_weight_decay_mode="decoupled")
    with pytest.raises(ConfigError, match="arch_beta_decay"):
        SearchConfig(arch_beta_decay=-1.0)
