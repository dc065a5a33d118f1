"""What the sampling strategies share: one-hot paths from choices, resumable seeds, and their whole
state in the checkpoint (so that a resumed search draws what an uninterrupted one would)."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.checkpointing import restore_checkpoint
from capnas_tf.search.models import build_search_models
from capnas_tf.search.paths import WEIGHT, op_weights_from_choices, uniform_path_log_probabilities
from capnas_tf.search.strategies import get_strategy
from tests.search.test_search_loop import L, TINY_SEARCH


def test_op_weights_from_choices_put_a_one_on_each_chosen_edge():
    w = op_weights_from_choices(np.array([[1, 0], [2, 0]]), np.array([[3, 1], [2, 3]]), num_nodes=2, num_ops=4).numpy()
    expected = np.zeros((5, 4))
    expected[1, 3] = expected[0, 1] = 1  # node 0 reads state 1 by op 3 and state 0 by op 1
    expected[2 + 2, 2] = expected[2 + 0, 3] = 1  # node 1: edges 2.. are its inputs 0, 1, 2
    np.testing.assert_array_equal(w, expected)


def test_uniform_path_log_probabilities_match_the_sampler():
    logp = uniform_path_log_probabilities(num_nodes=2, primitives=("none", "skip_connect", "sep_conv_3x3"))
    p = np.exp(logp)
    np.testing.assert_allclose(p[:2, 1:], 0.5)  # node 0 uses both its edges, one of 2 ops each
    np.testing.assert_allclose(p[2:, 1:], 2 / 3 / 2)  # node 1 keeps 2 of 3 edges
    assert (p[:, 0] < 1e-8).all()  # never none


def _strategy(name, data, seed):
    keras.utils.set_random_seed(seed)  # a different initialisation for the restored copy
    config = dataclasses.replace(TINY_SEARCH, strategy=name, random_ws_candidates=3, random_ws_rank_batches=1)
    models = build_search_models(config, vocab_size=len(data.vocab), max_caption_len=L, image_size=16, seed=0)
    strategy = get_strategy(name)(models, config, max_caption_len=L)
    strategy.begin_search(total_steps=1, warmup_steps=0)  # random_ws ranks in the (only) step
    return strategy


@pytest.mark.parametrize("name", ["gdas", "random_ws", "reinforce"])
def test_checkpoint_holds_the_whole_strategy_state(name, tiny_data, tmp_path):
    streams = {"train": tiny_data.train_dataset(4), "val": tiny_data.validation_dataset(4)}
    batches = next(iter(tf.data.Dataset.zip(streams)))
    original = _strategy(name, tiny_data, seed=1)
    original.step(batches, update_architecture=True)  # eagerly: cheaper than tracing for one step
    path = tf.train.Checkpoint(**original.checkpoint_items()).save(str(tmp_path / "ckpt"))

    restored = _strategy(name, tiny_data, seed=2)
    restore_checkpoint(tf.train.Checkpoint(**restored.checkpoint_items()), path)  # every value has its object
    assert int(restored.step_count) == int(original.step_count) == 1
    # The next weight step trains the same path, and the found architecture is the same.
    for a, b in zip(original.training_path(original.seed(WEIGHT)), restored.training_path(restored.seed(WEIGHT))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kwargs = dict(primitives=TINY_SEARCH.supernet.primitives, num_nodes=2, max_skip_connect=2)
    assert restored.derive_genotype(**kwargs) == original.derive_genotype(**kwargs)
    for a, b in zip(original.A_values(), restored.A_values()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6)
    if name == "reinforce":
        assert float(restored.baseline) == float(original.baseline) > 0
        assert int(restored.controller_steps) == 1
    if name == "random_ws":
        assert restored.ranking() == original.ranking() and len(original.ranking()) == 3
