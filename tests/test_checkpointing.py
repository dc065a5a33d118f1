"""The retrain's checkpoints hold every variable of the captioner (BN statistics of the DiscreteEncoder's
cells and dropout seed states included), bit-exactly; a checkpoint that does not fit fails clearly."""
import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.retrain import _RetrainState, build_captioner, build_optimizer
from capnas_tf.decoders.losses import caption_loss
from tests.retrain_fixtures import TINY_RETRAIN

VOCAB, LENGTH, SIZE = 20, 6, 16


def _captioner_and_optimizer():
    captioner = build_captioner(TINY_RETRAIN, vocab_size=VOCAB, max_caption_len=LENGTH, image_size=SIZE)
    optimizer = build_optimizer(TINY_RETRAIN, total_steps=4)
    optimizer.build(captioner.trainable_variables)
    return captioner, optimizer


def _train_one_step(captioner, optimizer):
    """One eager step with training=True: moves the weights and the BN moving statistics."""
    images = tf.random.stateless_uniform([4, SIZE, SIZE, 3], seed=[1, 2])
    tokens = tf.random.stateless_uniform([4, LENGTH], seed=[3, 4], minval=0, maxval=VOCAB, dtype=tf.int32)
    with tf.GradientTape() as tape:
        loss = caption_loss(captioner(images, tokens[:, :-1], training=True), tokens)
    optimizer.apply_gradients(zip(tape.gradient(loss, captioner.trainable_variables),
                                  captioner.trainable_variables))


def _values(variables) -> list:
    return [np.array(v.numpy()) for v in variables]


def _assert_bit_equal(variables, expected):
    assert len(variables) == len(expected)
    differ = [v.path for v, x in zip(variables, expected) if not np.array_equal(v.numpy(), x)]
    assert not differ, f"{len(differ)} variables not restored: {differ}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A captioner and optimizer after one step, checkpointed by `_RetrainState` in `workdir`."""
    keras.utils.set_random_seed(0)
    workdir = str(tmp_path_factory.mktemp("retrain"))
    captioner, optimizer = _captioner_and_optimizer()
    _train_one_step(captioner, optimizer)
    state = _RetrainState(workdir, captioner, optimizer)
    state.epoch.assign(1)
    state.latest.save(checkpoint_number=1)
    return workdir, captioner, optimizer, state


def test_resume_restores_every_variable_of_captioner_and_optimizer_bit_exactly(saved):
    workdir, captioner, optimizer, state = saved
    model_values, optimizer_values = _values(captioner.variables), _values(optimizer.variables)
    moving = [v for v in captioner.encoder.variables if "moving_" in v.path and "discrete_cell" in v.path]
    assert moving, "the DiscreteEncoder's cells hold no BN statistics: the test would prove nothing"
    assert any(not np.all(v.numpy() == (1.0 if "variance" in v.path else 0.0)) for v in moving)
    for v in captioner.variables + optimizer.variables:  # every value away from the saved one
        v.assign(v.numpy() + (1 if "int" in v.dtype else 0.5))
    assert state.resume() == 1
    _assert_bit_equal(captioner.variables, model_values)
    _assert_bit_equal(optimizer.variables, optimizer_values)


def test_a_freshly_built_captioner_restores_the_saved_one(saved):
    """As a resumed process does: other layer names (Keras uniquifies them), the same positions."""
    workdir, captioner, _, _ = saved
    fresh, optimizer = _captioner_and_optimizer()
    assert [v.path for v in fresh.variables] != [v.path for v in captioner.variables]
    assert _RetrainState(workdir, fresh, optimizer).resume() == 1
    _assert_bit_equal(fresh.variables, _values(captioner.variables))


def test_a_checkpoint_of_the_model_as_an_attribute_fails_naming_the_file(saved, tmp_path):
    """What capnas_tf wrote before `model_state` (BN statistics of the cells missing): a clear error."""
    _, captioner, optimizer, _ = saved
    old = tf.train.Checkpoint(model=captioner, optimizer=optimizer, epoch=tf.Variable(1, dtype=tf.int64))
    tf.train.CheckpointManager(old, os.path.join(tmp_path, "checkpoints"), max_to_keep=1).save(checkpoint_number=1)
    with pytest.raises(ValueError, match=r"checkpoints/ckpt-1 does not fit this model.*new workdir"):
        _RetrainState(str(tmp_path), captioner, optimizer).resume()


def test_a_checkpoint_of_another_config_fails_naming_the_file(saved):
    workdir, _, _, _ = saved
    config = dataclasses.replace(TINY_RETRAIN, num_cells=3)
    other = build_captioner(config, vocab_size=VOCAB, max_caption_len=LENGTH, image_size=SIZE)
    optimizer = build_optimizer(config, total_steps=4)
    optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match="does not fit this model"):
        _RetrainState(workdir, other, optimizer).resume()
