"""GDAS: hard Gumbel-softmax paths with a soft gradient, the temperature schedule, a tiny search."""
import dataclasses

import numpy as np
import pytest

from capnas_tf.search.gdas import GdasStrategy
from capnas_tf.search.strategies import get_strategy
from tests.search.strategy_checks import check_search_outputs, tiny_search
from tests.search.test_search_loop import L, TINY_SEARCH


@pytest.mark.slow  # ~27 s (a whole search job); CI runs it (.ci/run)
def test_gdas_search_writes_every_output(tiny_data, tmp_path):
    result, lines = tiny_search("gdas", tiny_data, tmp_path)
    history = check_search_outputs(tmp_path, result, lines, metric="gdas/val_loss")
    assert np.abs(np.subtract(history[1]["alpha_normal"], history[0]["alpha_normal"])).max() > 1e-4  # A moves
    assert "gdas/tau=10 " in lines[1] and "gdas/tau=0.1 " in lines[2]  # τ_max first, τ_min last


def test_forward_weights_are_one_hot_yet_A_gets_a_gradient(tiny_data, tiny_models):
    strategy = get_strategy("gdas")(tiny_models, TINY_SEARCH, max_caption_len=L)
    assert isinstance(strategy, GdasStrategy)
    strategy.begin_search(total_steps=4, warmup_steps=2)
    batch = next(iter(tiny_data.validation_dataset(4)))
    loss, grad_A, path = strategy.architecture_gradient(batch)
    for w in path:
        w = w.numpy()
        assert set(np.unique(w)) == {0.0, 1.0} and (w.sum(axis=1) == 1).all()  # exactly one op per edge
    assert np.isfinite(loss.numpy())
    for g in grad_A:
        assert np.abs(g.numpy()).max() > 0
    # Same step counter, same sample: the draw is a function of the checkpointed counter.
    again = strategy.sample_path(strategy.A_values(), strategy.seed(0))
    np.testing.assert_array_equal(again[0].numpy(), path[0].numpy())
    strategy.step_count.assign_add(1)
    moved = strategy.sample_path(strategy.A_values(), strategy.seed(0))
    assert any((a.numpy() != b.numpy()).any() for a, b in zip(moved, path))


def test_temperature_anneals_linearly_over_the_architecture_steps(tiny_models):
    strategy = GdasStrategy(tiny_models, TINY_SEARCH, max_caption_len=L)
    with pytest.raises(RuntimeError, match="begin_search"):
        strategy.temperature()
    strategy.begin_search(total_steps=13, warmup_steps=2)  # 11 architecture steps: τ drops by 0.99 each
    taus = []
    for step in range(2, 13):
        strategy.step_count.assign(step)
        taus.append(float(strategy.temperature()))
    np.testing.assert_allclose(taus, np.linspace(10.0, 0.1, 11), rtol=1e-5)


def test_bad_temperatures_name_the_fields(tiny_models):
    # Refused by SearchConfig before the strategy sees them (the strategy checks them again).
    with pytest.raises(ValueError, match=r"gdas_tau_max must be >= gdas_tau_min \(1.0\)"):
        GdasStrategy(tiny_models, dataclasses.replace(TINY_SEARCH, gdas_tau_min=1.0, gdas_tau_max=0.5),
                     max_caption_len=L)
