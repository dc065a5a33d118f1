"""Scheduled sampling: feed the decoder some of its own predictions during training.

At training step i each input position t ≥ 1 receives the ground-truth token with probability ε_i
and the model's own token otherwise; ε_i decays from 1 over training (Bengio et al., "Scheduled
Sampling for Sequence Prediction with Recurrent Neural Networks", NeurIPS 2015, arXiv:1506.03099).
The paper's three schedules are in `SCHEDULES`:

    linear            ε_i = max(ε_min, 1 − i / decay_steps)
    exponential       ε_i = k^i,               k < 1
    inverse_sigmoid   ε_i = k / (k + exp(i/k)), k ≥ 1

With a parallel decoder the model's tokens come from a first, teacher-forced pass
(`scheduled_sampling_logits`); this is the usual two-pass approximation of the sequential scheme.
The first pass runs in inference mode: its tokens are the ones the model would feed itself when
captioning (no dropout), and it leaves the decoder's dropout seeds untouched, so at ε = 1 the second
pass is the teacher-forced pass exactly.
All functions are graph-safe and use stateless random ops (`seed` is an integer pair).

The retrain uses it with `RetrainConfig.scheduled_sampling` (`--scheduled_sampling`), counting i in
optimizer steps.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from capnas_tf.registry import Registry


def linear_decay(step, *, decay_steps: float, minimum: float = 0.0):
    """ε_i = max(ε_min, 1 − i / decay_steps)."""
    step = tf.cast(step, tf.float32)
    return tf.maximum(tf.cast(minimum, tf.float32), 1.0 - step / float(decay_steps))


def exponential_decay(step, *, k: float):
    """ε_i = k^i with 0 < k < 1."""
    if not 0.0 < k < 1.0:
        raise ValueError(f"exponential_decay: k must be in (0, 1); received {k}.")
    return tf.pow(tf.cast(k, tf.float32), tf.cast(step, tf.float32))


def inverse_sigmoid_decay(step, *, k: float):
    """ε_i = k / (k + exp(i / k)) with k ≥ 1 (k sets how many steps the decay takes)."""
    if k < 1.0:
        raise ValueError(f"inverse_sigmoid_decay: k must be >= 1; received {k}.")
    step = tf.cast(step, tf.float32)
    return k / (k + tf.exp(step / k))


# name → schedule(step, **params) -> ε_i
SCHEDULES = Registry("scheduled-sampling schedule", register_name="register_schedule",
                     lookup_name="teacher_forcing_probability",
                     entries={"linear": linear_decay, "exponential": exponential_decay,
                              "inverse_sigmoid": inverse_sigmoid_decay})


def register_schedule(name: str, schedule: Callable | None = None):
    """Makes `schedule(step, **params) -> ε_i` available as `name`; usable as a decorator."""
    return SCHEDULES.register(name, schedule)


def teacher_forcing_probability(step, *, schedule: str = "inverse_sigmoid", **params):
    """ε_i, the probability of feeding the ground truth at training step `step`.

    Args:
      step: i, a Python or tensor integer.
      schedule: a key of `SCHEDULES`.
      **params: the schedule's parameters (`decay_steps`/`minimum` or `k`).

    Returns:
      A float32 scalar tensor in [0, 1].
    """
    return SCHEDULES.lookup(schedule, f"teacher_forcing_probability: unknown schedule {schedule!r}; "
                                      f"expected one of {sorted(SCHEDULES)}.")(step, **params)


def model_tokens_from_logits(logits, tokens, *, sample: bool = False, seed=None):
    """The model's own input sequence: `tokens[:, 0]` then its prediction for each next position.

    Args:
      logits: `[B, T, V]` from a teacher-forced pass on `tokens`.
      tokens: int32 `[B, T]`, the prefix that produced `logits`.
      sample: draw from softmax(logits) instead of taking the argmax.
      seed: int `[2]`, required when `sample` is true.

    Returns:
      int32 `[B, T]`: position 0 is `tokens[:, 0]` (<start>), position t ≥ 1 is the model's token
      predicted from `logits[:, t − 1]`.
    """
    previous = tf.stop_gradient(logits[:, :-1])  # (B, T−1, V); a discrete choice carries no gradient
    if sample:
        if seed is None:
            raise ValueError("model_tokens_from_logits: sample=True needs a seed (int32 [2]).")
        vocab_size = tf.shape(previous)[-1]
        flat = tf.reshape(tf.cast(previous, tf.float32), [-1, vocab_size])
        drawn = tf.random.stateless_categorical(flat, 1, seed=seed, dtype=tf.int32)
        predicted = tf.reshape(drawn, tf.shape(previous)[:2])
    else:
        predicted = tf.argmax(previous, axis=-1, output_type=tf.int32)
    return tf.concat([tokens[:, :1], predicted], axis=1)


def mix_inputs(ground_truth, model_tokens, teacher_forcing_prob, *, seed, pad_id: int = 0):
    """Per position, the ground-truth token with probability ε, else the model's token.

    Position 0 (<start>) and positions whose ground truth is <pad> always keep the ground truth, so
    the mixed sequence has the same layout and the same loss mask as `ground_truth`.

    Args:
      ground_truth: int32 `[B, T]` decoder input (starting with <start>).
      model_tokens: int32 `[B, T]`, e.g. from `model_tokens_from_logits`.
      teacher_forcing_prob: ε, a float scalar.
      seed: int `[2]` for the stateless coin flips.
      pad_id: the padding id.

    Returns:
      int32 `[B, T]`.
    """
    coin = tf.random.stateless_uniform(tf.shape(ground_truth), seed=seed)
    use_truth = coin < tf.cast(teacher_forcing_prob, tf.float32)
    first = tf.equal(tf.range(tf.shape(ground_truth)[1]), 0)[None, :]
    use_truth = use_truth | first | tf.equal(ground_truth, pad_id)
    return tf.where(use_truth, ground_truth, tf.cast(model_tokens, ground_truth.dtype))


def scheduled_sampling_inputs(
    decoder,
    features,
    tokens,
    *,
    teacher_forcing_prob,
    seed,
    sample: bool = False,
    pad_id: int = 0,
    captions_per_image: int = 1,
):
    """The decoder input of scheduled sampling: a teacher-forced pass in inference mode, then per position
    the ground truth with probability ε, else the model's token from that pass (`mix_inputs`).

    Args:
      decoder: a caption decoder, `decoder(features, tokens, training) -> [B, T, V]`.
      features: `(grid, pooled)`.
      tokens: int32 `[B, T]`, the ground-truth decoder input (`captions[:, :-1]`).
      teacher_forcing_prob: ε_i (see `teacher_forcing_probability`).
      seed: int32 or int64 `[2]`; split internally between the sampling and the coin flips.
      sample: sample the model's tokens instead of taking the argmax.
      pad_id: the padding id.
      captions_per_image: k, when `tokens` holds k captions of each image (`[B·k, T]`, see `decoders.base`).

    Returns:
      int32 `[B, T]`: `tokens` at ε = 1; at ε = 0 the model's own tokens after <start> (pads kept).
    """
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 2)
    first_pass = decoder(features, tokens, training=False, captions_per_image=captions_per_image)
    own = model_tokens_from_logits(first_pass, tokens, sample=sample, seed=seeds[0])
    return mix_inputs(tokens, own, teacher_forcing_prob, seed=seeds[1], pad_id=pad_id)


def scheduled_sampling_logits(decoder, features, tokens, *, training: bool = True, captions_per_image: int = 1,
                              **kwargs):
    """Two-pass scheduled sampling: the decoder on `scheduled_sampling_inputs(decoder, features, tokens,
    **kwargs)` (`teacher_forcing_prob`, `seed`, `sample`, `pad_id`), with `training` for this second pass;
    `captions_per_image` as in `scheduled_sampling_inputs`.

    Returns:
      logits `[B, T, V]` of the second pass; train them against `captions[:, 1:]` as usual.
    """
    inputs = scheduled_sampling_inputs(decoder, features, tokens, captions_per_image=captions_per_image, **kwargs)
    return decoder(features, inputs, training=training, captions_per_image=captions_per_image)
