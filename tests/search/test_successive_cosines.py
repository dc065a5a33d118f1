"""capnas_tf/search/strategies.py: the cosine of successive A gradients, a search's noise diagnostic."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig
from capnas_tf.jobs import search_streams
from capnas_tf.search.strategies import SUCCESSIVE_COSINE, DartsStrategy, SuccessiveCosines
from tests.search.conftest import TINY_CAPTION_LEN
from tests.search.toy_models import toy_search_models


def _cosine(a: list, b: list) -> float:
    a, b = np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_each_update_returns_the_cosine_with_the_previous_gradient_and_the_mean_leaves_out_the_first():
    rng = np.random.default_rng(0)
    shapes = [(5, 4), (5, 4)]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(4)]
    history = SuccessiveCosines([tf.zeros(s) for s in shapes])
    update = tf.function(history.update, autograph=False)
    got = [float(update([tf.constant(g) for g in step])) for step in grads]
    expected = [_cosine(grads[t], grads[t - 1]) for t in range(1, 4)]
    assert got[0] == 0.0  # nothing to compare the first with
    np.testing.assert_allclose(got[1:], expected, rtol=1e-5)
    assert history.take_mean() == pytest.approx(np.mean(expected), rel=1e-5)
    assert history.take_mean() is None  # the sums start over
    same = [tf.constant(2.0 * g) for g in grads[-1]]  # the same direction as the last: cosine 1
    assert float(update(same)) == pytest.approx(1.0, rel=1e-6)
    assert history.take_mean() == pytest.approx(1.0, rel=1e-6)


def test_a_darts_step_reports_the_cosine_of_its_gradient_with_the_last_steps(tiny_data):
    models = toy_search_models(len(tiny_data.vocab), TINY_CAPTION_LEN)
    strategy = DartsStrategy(models, SearchConfig(strategy="darts", darts_order=1, arch_lr=1e-8),
                             max_caption_len=TINY_CAPTION_LEN)
    step = tf.function(lambda b: strategy.step(b, update_architecture=True), autograph=False)
    batches = next(iter(search_streams(tiny_data, 4)))
    first = float(step(batches)[SUCCESSIVE_COSINE])
    # the same batch again, A all but unchanged (η_a = 1e-8), E and F one small step on: nearly the same ∇A
    second = float(step(batches)[SUCCESSIVE_COSINE])
    assert first == 0.0 and 0.5 < second <= 1.0 + 1e-6
    assert strategy.successive_cosines.take_mean() == pytest.approx(second)
