"""The search loop end to end on a tiny capnas_shapes: outputs, resume, NaN handling. (The
MirroredStrategy checks are in test_distributed.py.)"""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.config import RunConfig
from capnas_tf.jobs import search_job, search_streams
from capnas_tf.search.loop import NonFiniteLossError, NonFiniteStateError, SearchRun, run_search
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import ThreeStageStrategy, get_strategy
from capnas_tf.search_space.genotypes import Genotype
from tests.search.conftest import TINY_CAPTION_LEN

L = TINY_CAPTION_LEN
# The loop's mechanics (outputs, resume, divergence) on the quicker LSTM F and W; the default transformer's
# hypergradient is checked in test_captioning.py, and a whole default search in tests/test_train_deterministic.py.
TINY_SEARCH = SearchConfig(
    epochs=2, steps_per_epoch=2, warmup_epochs=1, log_every=1, checkpoint_every=1, arch_lr=0.05,
    decoder="lstm", student_decoder="lstm", eval_images=0,
    supernet=SupernetConfig(channels=4, num_cells=3, num_nodes=2,
                            primitives=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")))
# The runs of the loop below: one node per cell (2 mixed edges where TINY_SEARCH has 5) traces their steps in
# two thirds of the time; still a normal and two reduction cells, with BatchNorm in each sep_conv.
LOOP_SEARCH = dataclasses.replace(TINY_SEARCH, supernet=dataclasses.replace(TINY_SEARCH.supernet, num_nodes=1))


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_search_writes_genotype_history_checkpoints_and_tensorboard(tiny_data, tmp_path):
    lines = []
    config = dataclasses.replace(LOOP_SEARCH, eval_images=8)
    result = search_job(RunConfig(workdir=str(tmp_path)), config, tiny_data, batch_size=4, log=lines.append)
    out = tmp_path / "search"
    genotype = Genotype.load(str(out / "genotype.json"))
    assert genotype == result.genotype
    history = [json.loads(line) for line in open(out / "alpha_history.jsonl")]
    assert [h["epoch"] for h in history] == [1, 2]
    # Warm-up epoch leaves A at its initialisation; the search epoch moves it.
    delta = np.abs(np.array(history[1]["alpha_normal"]) - np.array(history[0]["alpha_normal"])).max()
    assert delta > 1e-3
    # the mean cosine of successive ∇A: none in the warm-up; the search epoch's 2 A steps compare once
    assert history[0]["successive_cosine"] is None and -1.0 <= history[1]["successive_cosine"] <= 1.0
    assert history[1]["successive_cosine"] != 0.0
    assert (out / "genotype.png").stat().st_size > 0 and (out / "alpha_heatmap.png").stat().st_size > 0
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("-4")
    assert any(name.startswith("events") for name in os.listdir(out / "tensorboard"))
    assert any("stage3/val_loss" in line for line in lines)  # Stage III ran (after the warm-up)
    assert lines[0].startswith("Search: three_stage (exact hypergradient, stage2=soft), 2 epochs × 2 steps")
    # After each epoch the genotype on the shared weights captions 8 validation images and is scored.
    scored = [line for line in lines if "validation captions of the genotype" in line]
    assert [line.split(":")[0] for line in scored] == ["epoch 1", "epoch 2"]
    assert all("val/BLEU-4=" in line and "val/CIDEr=" in line for line in scored)
    tags = {v.tag for path in (out / "tensorboard").glob("events*")
            for e in tf.compat.v1.train.summary_iterator(str(path)) for v in e.summary.value}
    assert {"val/BLEU-4", "val/CIDEr", "stage3/val_loss", "arch/entropy"} <= tags


def _search_strategy(vocab_size: int) -> ThreeStageStrategy:
    models = build_search_models(TINY_SEARCH, vocab_size=vocab_size, max_caption_len=L, image_size=16)
    return ThreeStageStrategy(models, TINY_SEARCH, max_caption_len=L)


def _search_state(strategy: ThreeStageStrategy) -> list:
    """Every variable a search step reads or writes: E, A, F, W (with BN statistics and dropout seed states)
    and the three optimizers."""
    m = strategy.models
    return ([v for model in (m.encoder, m.decoder, m.student) for v in model.variables]
            + [v for opt in (strategy.weight_optimizer, strategy.arch_optimizer, strategy.student_optimizer)
               for v in opt.variables])


def test_checkpoint_restores_every_variable_of_the_search(tiny_data, tmp_path):
    """Why resume needs `model_state`: a Keras 3 model given to tf.train.Checkpoint as it is leaves out sublayers kept in
    lists, so the BN statistics of the supernet's cells were never saved and a resumed run drifted."""
    original = _search_strategy(len(tiny_data.vocab))
    rng = np.random.default_rng(0)
    for v in _search_state(original):  # values no fresh build can have by chance
        dtype = np.dtype(v.dtype)
        value = (rng.integers(1, 1000, v.shape) if dtype.kind in "iu" else rng.normal(size=v.shape) + 3.0)
        v.assign(value.astype(dtype))
    kwargs = dict(primitives=TINY_SEARCH.supernet.primitives, num_nodes=TINY_SEARCH.supernet.num_nodes,
                  max_skip_connect=None)
    SearchRun(str(tmp_path), original, **kwargs).save_checkpoint(7)

    resumed = _search_strategy(len(tiny_data.vocab))
    assert SearchRun(str(tmp_path), resumed, **kwargs).restore() == 7
    expected, restored = _search_state(original), _search_state(resumed)
    assert len(restored) == len(expected)
    for a, b in zip(expected, restored):
        if a.path.endswith("/learning_rate"):  # a setting, not state: the resumed run's own (its config's)
            assert b.numpy() != a.numpy()
            continue
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=f"{a.path} was not restored")
    rates = sorted(float(v.numpy()) for v in _search_state(resumed) if v.path.endswith("/learning_rate"))
    np.testing.assert_allclose(rates, sorted([TINY_SEARCH.weight_lr, TINY_SEARCH.student_lr, TINY_SEARCH.arch_lr]))


def test_skipped_streams_continue_with_the_batches_of_an_uninterrupted_run(tiny_data):
    """What `run_search` relies on when it resumes at step k: `streams.skip(k)` yields batch k of the
    uninterrupted stream, across the reshuffle at the end of an epoch of U (2 batches here)."""
    straight = list(search_streams(tiny_data, 4).take(5))[3:]
    skipped = list(search_streams(tiny_data, 4).skip(3).take(2))
    for a, b in zip(straight, skipped):
        for stream in a:
            for key in a[stream]:
                np.testing.assert_array_equal(b[stream][key].numpy(), a[stream][key].numpy())


@pytest.mark.slow  # five traces of a 3-cell C=2 supernet's steps: 2.7-6.5 min measured on 2 busy cores
def test_interrupted_and_resumed_search_ends_with_the_same_architecture(tiny_data, tmp_path):
    """Killed after step 3 (the checkpoint of step 2 is the last one), run again: the resumed run restarts
    from a state with Adam moments of A, BN statistics and dropout seeds all advanced, and after two more
    search steps every checkpointed value, A included, equals the uninterrupted run's, bit for bit."""
    config = dataclasses.replace(
        TINY_SEARCH, epochs=4, steps_per_epoch=1, warmup_epochs=1,
        supernet=SupernetConfig(channels=2, num_cells=3, num_nodes=1, stem_multiplier=1,
                                primitives=("skip_connect", "avg_pool_3x3", "sep_conv_3x3")))

    def search(workdir, stop_at=None):
        def log(line):
            if stop_at is not None and f"step {stop_at}/" in line:
                raise KeyboardInterrupt  # killed right after step `stop_at`, before it was checkpointed
        return search_job(RunConfig(workdir=str(workdir), deterministic=True), config, tiny_data,
                          batch_size=4, log=log)

    reference = search(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "resumed", stop_at=3)
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed" / "search" / "checkpoints")).endswith("-2")
    resumed = search(tmp_path / "resumed")

    def history(run):
        return [json.loads(line) for line in open(tmp_path / run / "search" / "alpha_history.jsonl")]

    a, b = history("straight"), history("resumed")
    assert [h["step"] for h in b] == [h["step"] for h in a] == [1, 2, 3, 4]
    for key in ("alpha_normal", "alpha_reduce"):
        np.testing.assert_array_equal(b[-1][key], a[-1][key])
        # A kept moving after the resume point, so the equality above could fail.
        assert np.abs(np.array(a[-1][key]) - np.array(a[1][key])).max() > 1e-3
    assert resumed.genotype == reference.genotype

    def final_values(run):
        reader = tf.train.load_checkpoint(str(tmp_path / run / "search" / "checkpoints"))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}

    expected, actual = final_values("straight"), final_values("resumed")
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_nan_loss_stops_the_run_and_keeps_the_last_good_outputs(tiny_data, tmp_path):
    # Every step a weight-only one: the check is the loop's, whatever step ran, and the weight-only step
    # traces in seconds where the three-stage one takes a minute of the suite. (A config whose epochs are
    # all warm-up is refused, so the strategy is told never to update A instead.)
    config = LOOP_SEARCH
    models = build_search_models(config, vocab_size=len(tiny_data.vocab), max_caption_len=L, image_size=16)
    strategy = get_strategy("three_stage")(models, config, max_caption_len=L)
    weight_only_step = strategy.step
    strategy.step = lambda batches, update_architecture: weight_only_step(batches, update_architecture=False)

    def poison(i, batches):  # from the 4th step on, D_tr images are NaN
        bad = dict(batches["train"], image=batches["train"]["image"] * tf.where(i >= 3, np.nan, 1.0))
        return dict(batches, train=bad)

    streams = search_streams(tiny_data, 4).enumerate().map(poison)
    kwargs = dict(config=config, steps_per_epoch=2, primitives=models.encoder.primitives,
                  num_nodes=models.encoder.num_nodes, log=lambda line: None)
    with pytest.raises(NonFiniteLossError, match=r"Stage I: stage1/.*nan at step 4"):
        run_search(strategy, streams, str(tmp_path), **kwargs)
    genotype_after_epoch_1 = Genotype.load(str(tmp_path / "genotype.json"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-3")
    assert genotype_after_epoch_1.normal  # still a whole, valid genotype


def _weight_only_search(data, workdir, config, log):
    """`run_search` of `config` with weight-only steps (see the test above): a fresh strategy per call, as a
    re-run builds it."""
    models = build_search_models(config, vocab_size=len(data.vocab), max_caption_len=L, image_size=16)
    strategy = get_strategy("three_stage")(models, config, max_caption_len=L)
    weight_only_step = strategy.step
    strategy.step = lambda batches, update_architecture: weight_only_step(batches, update_architecture=False)
    return run_search(strategy, search_streams(data, 4), str(workdir), config=config, steps_per_epoch=2,
                      primitives=models.encoder.primitives, num_nodes=models.encoder.num_nodes, log=log)


def _checkpoint_values(directory) -> dict:
    reader = tf.train.load_checkpoint(str(directory))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_a_diverged_search_writes_nothing_and_a_saner_rerun_resumes_from_the_last_good_checkpoint(tiny_data, tmp_path):
    """weight_lr=1e8 (the operator's probe): the step after the first huge update still has a finite loss
    (~1e9) but leaves BatchNorm moving variances at Inf. The state is checked before the epoch's genotype
    and checkpoint are written, so the run stops naming the variable, and the checkpoint of the epoch
    before stays the latest: a re-run at a sane learning rate resumes from it and finishes."""
    config = dataclasses.replace(LOOP_SEARCH, checkpoint_every=0)  # a checkpoint per epoch (2 steps)

    def stop_after_step_3(line):
        if "step 3/" in line:
            raise KeyboardInterrupt  # killed in epoch 2: the checkpoint of step 2 is the last one
    with pytest.raises(KeyboardInterrupt):
        _weight_only_search(tiny_data, tmp_path, config, stop_after_step_3)
    good_genotype = (tmp_path / "genotype.json").read_text()
    good = _checkpoint_values(tmp_path / "checkpoints")

    lines = []
    with pytest.raises(NonFiniteStateError,
                       match=r"supernet E: variable \S+/moving_variance is not finite \(NaN or Inf\) after step 4;"
                             r".* the latest checkpoint stays \S+ckpt-2, and a re-run resumes from it"):
        _weight_only_search(tiny_data, tmp_path, dataclasses.replace(config, weight_lr=1e8), lines.append)
    assert any("stage1/train_loss=" in line and "e+0" in line for line in lines), lines  # diverging, still finite
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-2")
    assert (tmp_path / "genotype.json").read_text() == good_genotype
    kept = _checkpoint_values(tmp_path / "checkpoints")
    assert kept.keys() == good.keys() and all(np.array_equal(kept[k], good[k]) for k in good)

    lines = []
    _weight_only_search(tiny_data, tmp_path, config, lines.append)
    assert [line.split(" epoch")[0].split("] ")[1] for line in lines if line.startswith("[")] == ["step 3/4",
                                                                                                  "step 4/4"]
    final = _checkpoint_values(tmp_path / "checkpoints")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-4")
    assert all(np.isfinite(v).all() for v in final.values() if np.issubdtype(v.dtype, np.floating))


def test_a_truncated_latest_search_checkpoint_falls_back_to_the_one_before(tiny_data, tmp_path, caplog):
    strategy = _search_strategy(len(tiny_data.vocab))
    kwargs = dict(primitives=TINY_SEARCH.supernet.primitives, num_nodes=TINY_SEARCH.supernet.num_nodes,
                  max_skip_connect=None)
    run = SearchRun(str(tmp_path), strategy, **kwargs)
    run.save_checkpoint(2)
    run.save_checkpoint(4)
    (data_file,) = (tmp_path / "checkpoints").glob("ckpt-4.data-*")
    with open(data_file, "r+b") as f:
        f.truncate(data_file.stat().st_size // 2)  # a crash while writing it
    warnings = []
    resumed = SearchRun(str(tmp_path), _search_strategy(len(tiny_data.vocab)), **kwargs)
    resumed.manager.warn = warnings.append
    assert resumed.restore() == 2
    assert any(str(data_file) in w and "cannot be read" in w for w in warnings), warnings
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-2")
    resumed.save_checkpoint(4)  # the next save replaces it
    assert SearchRun(str(tmp_path), _search_strategy(len(tiny_data.vocab)), **kwargs).restore() == 4
