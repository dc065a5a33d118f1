"""The retrain's training options: scheduled sampling (the decoder fed some of its own tokens, by a schedule
over the steps) and an encoder that starts from a local weights file and stays frozen for the first epochs."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.data.text import PAD_ID, START_ID
from capnas_tf.encoders import ConvEncoder, EncoderWeightsError, GapEncoder
from capnas_tf.config import RunConfig
from capnas_tf.retrain import (build_captioner, build_encoder, build_optimizer, make_train_step, retrain_job,
                               scheduled_sampling_of)
from tests.retrain_fixtures import TINY_RETRAIN, tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, LENGTH, IMAGE = 20, 8, 16  # vocabulary, caption length L (with <start>), image size
# A tiny retrain without exports or baselines: conv encoder (BatchNorm, ReLU), the default decoder.
CONV = dataclasses.replace(TINY_RETRAIN, encoder="conv", epochs=2, steps_per_epoch=2, export_saved_model=False,
                           export_onnx=False, blind_baseline=False, baseline="none", max_eval_images=8)


def _captioner(config, seed=0, image=IMAGE):
    keras.utils.set_random_seed(seed)
    return build_captioner(config, vocab_size=VOCAB, max_caption_len=LENGTH, image_size=image)


def _batch(batch, seed=0):
    """Images and captions `[B, L]`: <start>, words, then pads."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch, IMAGE, IMAGE, 3), dtype=np.float32)
    words = rng.integers(4, VOCAB, (batch, LENGTH - 1))
    lengths = rng.integers(2, LENGTH, (batch, 1))
    tokens = np.where(np.arange(LENGTH - 1)[None] < lengths, words, PAD_ID)
    tokens = np.concatenate([np.full((batch, 1), START_ID), tokens], axis=1).astype(np.int32)
    return tf.constant(images), tf.constant(tokens)


def _linear(config, decay_steps):
    """ε_i = max(0, 1 − i / decay_steps)."""
    return dataclasses.replace(config, scheduled_sampling="linear", scheduled_sampling_decay_steps=decay_steps)


# --- scheduled sampling ----------------------------------------------------------------------------

def test_scheduled_sampling_feeds_the_decoder_its_own_tokens_as_the_schedule_says():
    config = _linear(TINY_RETRAIN, decay_steps=4)
    captioner = _captioner(config)
    images, tokens = _batch(128)
    prefix = tokens[:, :-1].numpy()
    features = captioner.encoder(images, training=True)
    predicted = np.argmax(captioner.decoder(features, prefix, training=False).numpy(), -1)
    own = np.concatenate([prefix[:, :1], predicted[:, :-1]], axis=1)  # input t: the prediction made at t − 1
    sampling = scheduled_sampling_of(config, total_steps=100, seed=0)

    def inputs(step):
        return sampling.decoder_inputs(captioner.decoder, features, prefix, step=step).numpy()

    words = prefix != PAD_ID
    # ε_0 = 1: teacher forcing
    np.testing.assert_array_equal(inputs(0), prefix)
    # ε_4 = 0: every input after <start> is the model's own prediction; the pads stay (same loss mask)
    free = inputs(4)
    np.testing.assert_array_equal(free[:, 0], START_ID)
    np.testing.assert_array_equal(free[words], own[words])
    np.testing.assert_array_equal(free[~words], PAD_ID)
    # ε_2 = 0.5: each input is the truth or the model's token, the model's about half the time where they differ
    assert float(sampling.teacher_forcing_probability(2)) == 0.5
    half = inputs(2)
    assert np.all((half == prefix) | (half == own))
    differ = words & (own != prefix)
    assert differ.sum() > 300
    assert 0.4 < np.mean(half[differ] == own[differ]) < 0.6


def _train(config, steps: int, seed: int = 0) -> list:
    """Losses and every variable of the captioner after each of `steps` steps on one batch."""
    captioner = _captioner(config, seed)
    optimizer = build_optimizer(config, total_steps=10)
    optimizer.build(captioner.trainable_variables)
    step = make_train_step(captioner, optimizer,
                           scheduled_sampling=scheduled_sampling_of(config, total_steps=10, seed=seed))
    images, tokens = _batch(8)
    return [(float(step(images, tokens)), [v.numpy() for v in captioner.variables]) for _ in range(steps)]


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_a_step_at_teacher_forcing_probability_one_is_the_teacher_forced_step_bit_for_bit():
    teacher = _train(TINY_RETRAIN, steps=2)
    sampled = _train(_linear(TINY_RETRAIN, decay_steps=1), steps=2)  # ε_0 = 1, ε_1 = 0
    (teacher_loss, teacher_values), (sampled_loss, sampled_values) = teacher[0], sampled[0]
    assert sampled_loss == teacher_loss
    for a, b in zip(teacher_values, sampled_values, strict=True):
        np.testing.assert_array_equal(a, b)
    # at ε_1 = 0 the decoder reads its own tokens: another loss from the same weights
    assert sampled[1][0] != teacher[1][0]


@pytest.mark.slow  # ~30 s (builds capnas_shapes at its default size); CI runs it (.ci/run)
def test_a_retrain_with_scheduled_sampling_and_a_frozen_pretrained_encoder_runs_from_the_command_line(tmp_path):
    weights = _saved_weights(build_encoder(TINY_RETRAIN), tmp_path / "darts.weights.h5")
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "capnas_tf.train", "--mode=retrain", f"--workdir={workdir}",
               f"--data_dir={tmp_path / 'tfds'}", "--image_size=16", "--batch_size=8", "--retrain_channels=4",
               "--retrain_cells=2", "--retrain_epochs=2", "--retrain_steps_per_epoch=2", "--max_eval_images=8",
               "--final_metrics=BLEU,CIDEr", "--baseline=none", "--noblind_baseline", "--noexport_saved_model",
               "--noexport_onnx", "--scheduled_sampling=inverse_sigmoid", "--scheduled_sampling_k=2",
               "--scheduled_sampling_sample", f"--retrain_encoder_weights={weights}", "--freeze_encoder_epochs=1",
               f"--genotype={TINY_RETRAIN.genotype}"]  # the genotype the weights were saved from
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "  epoch 1: encoder frozen" in out.stdout and "  epoch 2: encoder trainable" in out.stdout
    with open(workdir / "retrain" / "metrics.json") as f:
        metrics = json.load(f)
    assert {k: metrics["config"][k] for k in ("scheduled_sampling", "scheduled_sampling_k",
                                              "scheduled_sampling_sample", "encoder_weights",
                                              "freeze_encoder_epochs")} == {
        "scheduled_sampling": "inverse_sigmoid", "scheduled_sampling_k": 2.0, "scheduled_sampling_sample": True,
        "encoder_weights": str(weights), "freeze_encoder_epochs": 1}
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]


# --- k captions per image ----------------------------------------------------------------------------

def test_k_captions_per_image_give_the_loss_and_gradients_of_each_image_repeated_k_times():
    """One encoder pass serving k captions is the same function as k copies of the image (BatchNorm's batch
    statistics do not change when every image is repeated k times); no dropout, so both draw nothing."""
    from capnas_tf.decoders.losses import caption_loss
    from capnas_tf.retrain import training_logits

    from capnas_tf.captioner import Captioner
    from capnas_tf.decoders import get_decoder

    keras.utils.set_random_seed(0)
    captioner = Captioner(build_encoder(CONV), get_decoder("transformer", vocab_size=VOCAB, max_len=LENGTH - 1,
                                                          dropout=0.0))
    images, tokens = _batch(12, seed=1)
    grouped = tf.reshape(tokens, [4, 3, LENGTH])  # 4 images, 3 captions each
    images = images[:4]
    with tf.GradientTape() as tape:
        logits, targets = training_logits(captioner, images, grouped, step=0, scheduled_sampling=None)
        loss = caption_loss(logits, targets)
    grads = tape.gradient(loss, captioner.trainable_variables)
    with tf.GradientTape() as tape:
        repeated = captioner(tf.repeat(images, 3, axis=0), tokens[:, :-1], training=True)
        reference = caption_loss(repeated, tokens)
    reference_grads = tape.gradient(reference, captioner.trainable_variables)
    np.testing.assert_array_equal(targets.numpy(), tokens.numpy())
    np.testing.assert_allclose(loss.numpy(), reference.numpy(), rtol=1e-6)
    for g, r in zip(grads, reference_grads, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(r).numpy(), rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.slow  # ~25 s (a whole retrain job with its validation); CI runs it (.ci/run)
def test_a_retrain_with_k_captions_per_image_trains_and_keeps_an_epoch(tmp_path):
    config = dataclasses.replace(CONV, captions_per_image=3, batch_size=4, epochs=1, steps_per_epoch=2)
    result = retrain_job(RunConfig(workdir=str(tmp_path), seed=0), config, tiny_data(str(tmp_path)), log=lambda *_: None)
    with open(tmp_path / "retrain" / "history.json") as f:
        history = json.load(f)
    assert [h["epoch"] for h in history] == [1] and np.isfinite(history[0]["train_loss"])
    assert result is not None


# --- encoder weights from a file, frozen, then fine-tuned -----------------------------------------

def _saved_weights(encoder, path, seed=7, image=IMAGE) -> str:
    """Gives every variable of `encoder` (built here) values no initialiser draws, BatchNorm statistics
    included, and saves them to `path`."""
    encoder(tf.zeros([1, image, image, 3]))
    rng = np.random.default_rng(seed)
    for v in encoder.variables:
        v.assign(rng.uniform(0.5, 2.0, v.shape).astype(v.dtype))
    encoder.save_weights(str(path))
    return str(path)


def _values(layer) -> list:
    return [v.numpy() for v in layer.variables]


def test_a_captioner_starts_from_the_encoder_weights_file(tmp_path):
    source = build_encoder(CONV)
    path = _saved_weights(source, tmp_path / "conv.weights.h5")
    captioner = _captioner(dataclasses.replace(CONV, encoder_weights=path))
    for a, b in zip(_values(source), _values(captioner.encoder), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_keras_application_encoder_loads_the_applications_own_weights_file(tmp_path):
    config = dataclasses.replace(CONV, encoder="mobilenet_v3_small")
    source = build_encoder(config).backbone.model  # the application without top, as published weights hold it
    # 32 × 32: MobileNetV3 documents inputs of at least 32 (at 16 its feature maps reach zero size)
    path = _saved_weights(source, tmp_path / "mobilenet_v3_small_notop.weights.h5", image=32)
    captioner = _captioner(dataclasses.replace(config, encoder_weights=path), image=32)
    for a, b in zip(_values(source), _values(captioner.encoder.backbone.model), strict=True):
        np.testing.assert_array_equal(a, b)


def _checkpointed_encoder(workdir, epoch: int, captioner) -> list:
    """The encoder's variables in `checkpoints/ckpt-<epoch>` (positions of `checkpointing.model_state`)."""
    reader = tf.train.load_checkpoint(os.path.join(workdir, "retrain", "checkpoints", f"ckpt-{epoch}"))
    encoder = {id(v) for v in captioner.encoder.variables}
    return [reader.get_tensor(f"model/{i}/.ATTRIBUTES/VARIABLE_VALUE")
            for i, v in enumerate(captioner.variables) if id(v) in encoder]


@pytest.mark.slow  # a minute of processes or tracing; CI runs it after the default suite (.ci/run)
def test_a_frozen_encoder_keeps_the_files_weights_for_the_frozen_epochs_and_moves_after(tmp_path):
    path = _saved_weights(build_encoder(CONV), tmp_path / "conv.weights.h5")
    loaded = _values(_captioner(dataclasses.replace(CONV, encoder_weights=path)).encoder)
    config = dataclasses.replace(CONV, encoder_weights=path, freeze_encoder_epochs=1)
    lines = []
    result = retrain_job(RunConfig(workdir=str(tmp_path)), config, tiny_data(str(tmp_path)), log=lines.append)
    assert "  epoch 1: encoder frozen" in lines and "  epoch 2: encoder trainable" in lines
    after_frozen = _checkpointed_encoder(tmp_path, 1, result.captioner)
    after_tuned = _checkpointed_encoder(tmp_path, 2, result.captioner)
    assert len(after_frozen) == len(loaded) == 15  # 3 blocks × (kernel, γ, β, moving mean, moving variance)
    for a, b in zip(loaded, after_frozen, strict=True):  # weights and BatchNorm statistics, bit for bit
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded, after_tuned, strict=True):  # every one moves once the encoder trains
        assert not np.array_equal(a, b)
    assert result.captioner.encoder.trainable


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["shallower", "deeper", "other_encoder", "not_hdf5"])
def test_a_weights_file_that_does_not_fit_is_an_error_naming_the_flag_and_the_file(tmp_path, source):
    path = tmp_path / f"{source}.weights.h5"
    if source == "not_hdf5":
        path.write_text("not a weights file")
    else:  # Keras alone would silently skip the deeper file's extra arrays
        encoder = {"shallower": ConvEncoder(filters=(16, 32)), "deeper": ConvEncoder(filters=(16, 32, 64, 64)),
                   "other_encoder": GapEncoder()}[source]
        _saved_weights(encoder, path)
    with pytest.raises(EncoderWeightsError, match=rf"--retrain_encoder_weights\): weights file {re.escape(repr(str(path)))} does not "
                                                  r"fit the encoder \(ConvEncoder"):
        _captioner(dataclasses.replace(CONV, encoder_weights=str(path)))
