"""Checkpoints are good when called good: nothing non-finite is saved (the run stops naming the variable,
the last good checkpoint stays the latest and a saner re-run resumes from it), and a truncated newest
checkpoint is skipped for the one before it, with a warning naming its files."""
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.checkpointing import CheckpointKeeper, FiniteCheck, named_variables
from capnas_tf.config import RunConfig
from capnas_tf.retrain import NonFiniteStateError, _RetrainState, build_captioner, build_optimizer, retrain_job
from tests.retrain_fixtures import TINY_RETRAIN, tiny_data

# Two epochs of two steps, no exports and no blind baseline: three short runs in one workdir.
RETRAIN = dataclasses.replace(TINY_RETRAIN, epochs=2, steps_per_epoch=2, blind_baseline=False,
                              export_saved_model=False, export_onnx=False)


def _checkpoint_values(directory) -> dict:
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _all_finite(values: dict) -> bool:
    return all(np.isfinite(v).all() for v in values.values() if np.issubdtype(v.dtype, np.floating))


def test_finite_check_names_the_first_non_finite_variable_of_weights_statistics_or_slots():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    check = FiniteCheck(named_variables({"model": model, "optimizer": optimizer,
                                         "step": tf.Variable(3, dtype=tf.int64)}))
    assert check.first_non_finite() is None
    moving_variance = next(v for v in model.variables if "moving_variance" in v.path)
    moving_variance.assign([1.0, np.inf])
    assert check.first_non_finite() == ("model", moving_variance.path)
    moving_variance.assign([1.0, 1.0])
    optimizer.variables[-1].assign(np.full(optimizer.variables[-1].shape, np.nan))
    assert check.first_non_finite() == ("optimizer", optimizer.variables[-1].path)


def test_a_keeper_skips_a_truncated_newest_checkpoint_and_saves_over_it(tmp_path):
    value = tf.Variable(tf.zeros([256]))
    checkpoint = tf.train.Checkpoint(value=value)
    warnings = []
    keeper = CheckpointKeeper(checkpoint, str(tmp_path), max_to_keep=2, warn=warnings.append)
    for number in (1, 2):
        value.assign(tf.fill([256], float(number)))
        keeper.save(checkpoint_number=number)
    (data_file,) = tmp_path.glob("ckpt-2.data-*")
    with open(data_file, "r+b") as f:
        f.truncate(data_file.stat().st_size // 2)
    with pytest.raises(IndexError):  # what a plain restore of it does
        checkpoint.restore(str(tmp_path / "ckpt-2"))

    keeper = CheckpointKeeper(checkpoint, str(tmp_path), max_to_keep=2, warn=warnings.append)
    assert keeper.restore_latest() == str(tmp_path / "ckpt-1")
    assert np.all(value.numpy() == 1.0)
    assert any(str(data_file) in w and "Read less bytes than requested" in w for w in warnings), warnings
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")  # what another reader sees
    value.assign(tf.fill([256], 2.0))
    keeper.save(checkpoint_number=2)
    keeper.save(checkpoint_number=3)
    assert CheckpointKeeper(checkpoint, str(tmp_path), max_to_keep=2).checkpoints == [
        str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]

    for name in ("ckpt-2", "ckpt-3"):  # nothing usable left: a clear error, not a silent fresh start
        os.remove(tmp_path / f"{name}.index")
    with pytest.raises(RuntimeError, match=r"No usable checkpoint in .*ckpt-3, .*ckpt-2"):
        CheckpointKeeper(checkpoint, str(tmp_path), max_to_keep=2, warn=warnings.append).restore_latest()


def test_a_truncated_latest_retrain_checkpoint_falls_back_to_the_epoch_before(tmp_path):
    keras.utils.set_random_seed(0)
    captioner = build_captioner(TINY_RETRAIN, vocab_size=20, max_caption_len=6, image_size=16)
    optimizer = build_optimizer(TINY_RETRAIN, total_steps=4)
    optimizer.build(captioner.trainable_variables)
    state = _RetrainState(str(tmp_path), captioner, optimizer)
    for epoch in (1, 2):
        state.epoch.assign(epoch)
        state.keep(epoch, 0.1 * epoch, 0.0)
        state.latest.save(checkpoint_number=epoch)
    (data_file,) = (tmp_path / "checkpoints").glob("ckpt-2.data-*")
    with open(data_file, "r+b") as f:
        f.truncate(100)
    warnings = []
    resumed = _RetrainState(str(tmp_path), captioner, optimizer)
    resumed.latest.warn = warnings.append
    assert resumed.resume() == 1
    assert any(str(data_file) in w for w in warnings), warnings
    # best/ of epoch 2 was written after the checkpoint resumed from: it is left out, epoch 2 is redone
    assert resumed.best.checkpoints == [str(tmp_path / "best" / "ckpt-1")]


# At a learning rate of 1e6 the epoch after a good one diverges: without counting attention the model ends
# with Inf in it while every loss stays finite; with it the loss itself turns NaN at the epoch's second step.
@pytest.mark.parametrize("count_heads, diverged", [
    pytest.param(0, r"(encoder|decoder|optimizer) variable \S+ is not finite \(NaN or Inf\) after epoch 2",
                 marks=pytest.mark.slow),  # ~70 s
    pytest.param(4, r"the loss is not finite \(nan\) at epoch 2, step 2",
                 marks=pytest.mark.slow),  # ~40 s; CI runs it after the default suite (.ci/run)
])
def test_a_diverged_retrain_writes_nothing_and_a_saner_rerun_resumes_from_the_last_good_epoch(
        tmp_path, count_heads, diverged):
    """The operator's probe: a diverged epoch after a good one; before, its checkpoint and best/ were written
    with Inf in them and a re-run failed."""
    workdir = str(tmp_path)
    data = tiny_data(workdir)
    retrain_dir = tmp_path / "retrain"
    config = dataclasses.replace(RETRAIN, count_heads=count_heads)

    def stop_after_epoch_1(line):
        if line.startswith("Epoch 1/2:"):
            raise KeyboardInterrupt  # killed after epoch 1 was checkpointed
    with pytest.raises(KeyboardInterrupt):
        retrain_job(RunConfig(workdir=workdir), config, data, log=stop_after_epoch_1)
    good = _checkpoint_values(retrain_dir / "checkpoints")

    lines = []
    with pytest.raises(NonFiniteStateError, match=rf"retrain: {diverged}; the training diverged .*Nothing of epoch 2 "
                                                  r"was written: the latest checkpoint stays \S+checkpoints/ckpt-1, "
                                                  r"and a re-run resumes"):
        retrain_job(RunConfig(workdir=workdir), dataclasses.replace(config, lr=1e6), data, log=lines.append)
    if count_heads == 0:
        assert any("epoch 2 step 2/2 loss" in line for line in lines), lines  # the losses stayed finite
    assert tf.train.latest_checkpoint(str(retrain_dir / "checkpoints")).endswith("ckpt-1")
    assert tf.train.latest_checkpoint(str(retrain_dir / "best")).endswith("ckpt-1")
    kept = _checkpoint_values(retrain_dir / "checkpoints")
    assert kept.keys() == good.keys() and all(np.array_equal(kept[k], good[k]) for k in good)

    lines = []
    result = retrain_job(RunConfig(workdir=workdir), config, data, log=lines.append)
    assert any("resuming after epoch 1" in line for line in lines)
    assert [h["epoch"] for h in json.load(open(retrain_dir / "history.json"))] == [1, 2]
    assert tf.train.latest_checkpoint(str(retrain_dir / "checkpoints")).endswith("ckpt-2")
    assert _all_finite(_checkpoint_values(retrain_dir / "checkpoints"))
    assert _all_finite(_checkpoint_values(retrain_dir / "best"))
    assert result.best_epoch in (1, 2) and os.path.isfile(retrain_dir / "captioner.keras")
