"""ENAS-style REINFORCE: the controller's samples, its learning on a toy reward, the argmax genotype,
and a tiny search."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search.reinforce import Controller, ReinforceStrategy
from tests.search.strategy_checks import check_search_outputs, tiny_search
from tests.search.test_search_loop import L, TINY_SEARCH

PRIMITIVES = TINY_SEARCH.supernet.primitives  # none, skip_connect, avg_pool_3x3, sep_conv_3x3


def _strategy(models, **overrides):
    config = dataclasses.replace(TINY_SEARCH, strategy="reinforce", **overrides)
    return ReinforceStrategy(models, config, max_caption_len=L)


@pytest.mark.slow  # ~27 s (a whole search job); CI runs it (.ci/run)
def test_reinforce_search_writes_every_output(tiny_data, tmp_path):
    result, lines = tiny_search("reinforce", tiny_data, tmp_path)
    history = check_search_outputs(tmp_path, result, lines, metric="reinforce/reward")
    for h in history:  # log-probabilities of the controller's edge marginals
        assert (np.asarray(h["alpha_normal"]) <= 0).all()
    reward = float(lines[1].split("reinforce/reward=")[1].split()[0])
    assert 0 < reward <= 1


def test_controller_samples_valid_architectures_with_their_log_probabilities():
    controller = Controller(num_nodes=3, num_ops=3, units=8)
    controller.build()
    child = controller.rollout(64, seed=tf.constant([1, 2]))
    inputs, ops = child["inputs"].numpy(), child["ops"].numpy()
    assert inputs.shape == ops.shape == (64, 2, 3, 2)
    for i in range(3):
        assert (inputs[:, :, i] < i + 2).all()  # node i reads one of its i + 2 states
    assert (inputs[..., 0] != inputs[..., 1]).all()  # two distinct inputs
    assert ((ops >= 0) & (ops < 3)).all()
    # 24 decisions of at most 4 options each: log π in [24 log(1/4), 0).
    assert (child["log_prob"].numpy() < 0).all() and (child["log_prob"].numpy() >= 24 * np.log(1 / 4) - 1e-4).all()
    again = controller.rollout(64, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(again["inputs"].numpy(), inputs)  # stateless: same seed, same children


def test_reinforce_raises_the_probability_of_a_rewarded_choice(tiny_models):
    strategy = _strategy(tiny_models, controller_lr=0.05, reinforce_baseline_decay=0.8)
    target = PRIMITIVES.index("sep_conv_3x3")

    def share_of_target():  # of the normal cell's chosen ops, the fraction that are sep_conv_3x3
        p = np.exp(strategy.A_values()[0].numpy())[:, 1:]
        return p[:, target - 1].sum() / p.sum()

    def reward(child):  # toy reward: the fraction of the normal cell's ops that are the target
        ops = tf.gather(tf.constant(strategy.columns), child["ops"][0, 0])
        return tf.reduce_mean(tf.cast(tf.equal(ops, target), tf.float32))

    before = share_of_target()
    step = tf.function(lambda: strategy.reinforce_step(reward))
    for _ in range(25):
        step()
        strategy.step_count.assign_add(1)  # a new child every step, as in the loop
    after = share_of_target()
    print(f"share of sep_conv_3x3 in the normal cell: {before:.3f} -> {after:.3f}")
    assert 0.2 < before < 0.5 and after > before + 0.25, (before, after)
    argmax = strategy.derive_genotype(primitives=PRIMITIVES, num_nodes=2, max_skip_connect=2)
    assert [op for op, _ in argmax.normal].count("sep_conv_3x3") >= 3


def test_argmax_genotype_respects_the_skip_connect_cap(tiny_models):
    strategy = _strategy(tiny_models)
    skip = [PRIMITIVES[k] for k in strategy.columns].index("skip_connect")
    # Make skip_connect the controller's overwhelming choice of op.
    bias = strategy.controller.op_head.bias
    bias.assign(tf.one_hot(skip, bias.shape[0]) * 50.0)
    uncapped = strategy.derive_genotype(primitives=PRIMITIVES, num_nodes=2, max_skip_connect=None)
    assert [op for op, _ in uncapped.normal] == ["skip_connect"] * 4
    capped = strategy.derive_genotype(primitives=PRIMITIVES, num_nodes=2, max_skip_connect=1)
    assert [op for op, _ in capped.normal].count("skip_connect") == 1
    assert [op for op, _ in capped.reduce] == ["skip_connect"] * 4  # the cap is the normal cell's, as in DARTS


def test_reinforce_checks_its_flags(tiny_models):
    with pytest.raises(ValueError, match="reinforce_baseline_decay must be in"):  # SearchConfig's check
        _strategy(tiny_models, reinforce_baseline_decay=1.0)
