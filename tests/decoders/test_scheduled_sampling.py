"""Scheduled sampling: the decay schedules, the mixing of inputs, and the two-pass training call."""
import math

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.decoders.losses import masked_cross_entropy
from capnas_tf.decoders.scheduled_sampling import (
    mix_inputs,
    model_tokens_from_logits,
    scheduled_sampling_logits,
    teacher_forcing_probability,
)
from tests.decoders.conftest import VOCAB, make_decoder, random_features

SEED = tf.constant([3, 4], tf.int32)


def test_schedules_follow_the_papers_formulas():
    assert float(teacher_forcing_probability(0, schedule="inverse_sigmoid", k=10.0)) == pytest.approx(10 / 11)
    assert float(teacher_forcing_probability(50, schedule="inverse_sigmoid", k=10.0)) == pytest.approx(
        10 / (10 + math.exp(5)), rel=1e-6
    )
    assert float(teacher_forcing_probability(3, schedule="exponential", k=0.9)) == pytest.approx(0.729)
    assert float(teacher_forcing_probability(25, schedule="linear", decay_steps=100)) == pytest.approx(0.75)
    floor = teacher_forcing_probability(500, schedule="linear", decay_steps=100, minimum=0.2)
    assert float(floor) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "schedule, params",
    [("linear", {"decay_steps": 50}), ("exponential", {"k": 0.95}), ("inverse_sigmoid", {"k": 5.0})],
)
def test_every_schedule_decays_from_near_one(schedule, params):
    values = [float(teacher_forcing_probability(i, schedule=schedule, **params)) for i in range(0, 200, 10)]
    assert values[0] > 0.8
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] < 0.1


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'; expected one of \['exponential'"):
        teacher_forcing_probability(0, schedule="cosine")


def test_model_tokens_are_the_argmax_of_the_previous_position():
    logits = tf.one_hot([[5, 7, 9]], VOCAB) * 10.0  # argmax at t is 5, 7, 9
    tokens = tf.constant([[1, 4, 4]])
    np.testing.assert_array_equal(model_tokens_from_logits(logits, tokens), [[1, 5, 7]])


def test_sampled_model_tokens_follow_the_softmax():
    logits = tf.math.log(tf.constant([[[0.0, 0.0, 0.0, 0.2, 0.8], [1.0, 0, 0, 0, 0]]] * 4000) + 1e-30)
    drawn = model_tokens_from_logits(logits, tf.ones([4000, 2], tf.int32), sample=True, seed=SEED)
    assert set(np.unique(drawn[:, 1])) == {3, 4}
    assert abs(np.mean(drawn[:, 1] == 4) - 0.8) < 0.03


def test_probability_one_keeps_the_ground_truth_and_zero_takes_the_model_tokens():
    truth = tf.constant([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    own = tf.constant([[1, 9, 9, 9, 9], [1, 9, 9, 9, 9]])
    np.testing.assert_array_equal(mix_inputs(truth, own, 1.0, seed=SEED), truth)
    # <start> and the pad positions always keep the ground truth.
    np.testing.assert_array_equal(
        mix_inputs(truth, own, 0.0, seed=SEED), [[1, 9, 9, 9, 0], [1, 9, 9, 0, 0]]
    )


def test_mixing_rate_matches_the_probability_and_is_deterministic_in_the_seed():
    truth = tf.fill([200, 50], 5)
    own = tf.fill([200, 50], 9)
    mixed = mix_inputs(truth, own, 0.3, seed=SEED)
    rate = np.mean(mixed.numpy()[:, 1:] == 5)
    assert abs(rate - 0.3) < 0.02
    np.testing.assert_array_equal(mixed, mix_inputs(truth, own, 0.3, seed=SEED))


def test_two_pass_logits_reduce_to_teacher_forcing_at_probability_one():
    decoder = make_decoder("lstm")
    features = random_features()
    tokens = tf.constant([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
    teacher = decoder(features, tokens)
    mixed = scheduled_sampling_logits(decoder, features, tokens, teacher_forcing_prob=1.0, seed=SEED)
    np.testing.assert_allclose(mixed, teacher, atol=1e-6)
    own = model_tokens_from_logits(teacher, tokens)
    free = scheduled_sampling_logits(decoder, features, tokens, teacher_forcing_prob=0.0, seed=SEED)
    np.testing.assert_allclose(free, decoder(features, mix_inputs(tokens, own, 0.0, seed=SEED)), atol=1e-6)


def test_two_pass_logits_are_differentiable_in_the_decoder_weights():
    decoder = make_decoder("transformer")
    features = random_features()
    tokens = tf.constant([[1, 5, 6, 7, 2, 0], [1, 8, 9, 2, 0, 0]])
    with tf.GradientTape() as tape:
        logits = scheduled_sampling_logits(
            decoder, features, tokens[:, :-1], teacher_forcing_prob=0.5, seed=SEED, sample=True
        )
        loss = masked_cross_entropy(logits, tokens[:, 1:])
    grads = tape.gradient(loss, decoder.trainable_variables)
    assert all(g is not None for g in grads)
