"""The search loop end to end on a tiny capnas_shapes: outputs, resume, NaN handling. (The
MirroredStrategy checks are in test_distributed.py.)"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.jobs import RunConfig, search_job, search_streams
from capnas_tf.search.loop import NonFiniteLossError, run_search
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import get_strategy
from capnas_tf.search_space.genotype import Genotype
from tests.search.conftest import TINY_CAPTION_LEN

L = TINY_CAPTION_LEN
TINY_SEARCH = SearchConfig(
    epochs=2, steps_per_epoch=2, warmup_epochs=1, log_every=1, checkpoint_every=1, arch_lr=0.05,
    supernet=SupernetConfig(channels=4, num_cells=3, num_nodes=2,
                            primitives=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")))


def test_search_writes_genotype_history_checkpoints_and_tensorboard(tiny_data, tmp_path):
    lines = []
    result = search_job(RunConfig(workdir=str(tmp_path)), TINY_SEARCH, tiny_data, batch_size=4, log=lines.append)
    out = tmp_path / "search"
    genotype = Genotype.load(str(out / "genotype.json"))
    assert genotype == result.genotype
    history = [json.loads(line) for line in open(out / "alpha_history.jsonl")]
    assert [h["epoch"] for h in history] == [1, 2]
    # Warm-up epoch leaves A at its initialisation; the search epoch moves it.
    delta = np.abs(np.array(history[1]["alpha_normal"]) - np.array(history[0]["alpha_normal"])).max()
    assert delta > 1e-3
    assert (out / "genotype.png").stat().st_size > 0 and (out / "alpha_heatmap.png").stat().st_size > 0
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("-4")
    assert any(name.startswith("events") for name in os.listdir(out / "tensorboard"))
    assert any("stage3/val_loss" in line for line in lines)  # Stage III ran (after the warm-up)


@pytest.mark.slow  # three searches with fresh traces: ~4 minutes on 2 cores
@pytest.mark.xfail(strict=True, reason="known gap: after resuming, A differs from the uninterrupted run by "
                   "~1% (deterministic, so some state is not yet restored); open in issue 5")
def test_interrupted_and_resumed_search_ends_with_the_same_architecture(tiny_data, tmp_path):
    def search(workdir, stop_at=None):
        def log(line):
            if stop_at is not None and f"step {stop_at}/" in line:
                raise KeyboardInterrupt  # killed right after step `stop_at`, before it was checkpointed
        return search_job(RunConfig(workdir=str(workdir), deterministic=True), TINY_SEARCH, tiny_data,
                          batch_size=4, log=log)

    reference = search(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "resumed", stop_at=3)
    resumed = search(tmp_path / "resumed")
    a = json.loads(open(tmp_path / "straight" / "search" / "alpha_history.jsonl").readlines()[-1])
    b = json.loads(open(tmp_path / "resumed" / "search" / "alpha_history.jsonl").readlines()[-1])
    np.testing.assert_allclose(b["alpha_normal"], a["alpha_normal"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b["alpha_reduce"], a["alpha_reduce"], rtol=1e-5, atol=1e-7)
    assert resumed.genotype == reference.genotype


def test_nan_loss_stops_the_run_and_keeps_the_last_good_outputs(tiny_data, tmp_path):
    models = build_search_models(TINY_SEARCH, vocab_size=len(tiny_data.vocab), max_caption_len=L,
                                 image_size=16)
    strategy = get_strategy("three_stage")(models, TINY_SEARCH, max_caption_len=L)

    def poison(i, batches):  # from the 4th step on, D_tr images are NaN
        bad = dict(batches["train"], image=batches["train"]["image"] * tf.where(i >= 3, np.nan, 1.0))
        return dict(batches, train=bad)

    streams = search_streams(tiny_data, 4).enumerate().map(poison)
    kwargs = dict(config=TINY_SEARCH, steps_per_epoch=2, primitives=models.encoder.primitives,
                  num_nodes=models.encoder.num_nodes, log=lambda line: None)
    with pytest.raises(NonFiniteLossError, match=r"Stage I: stage1/.*nan at step 4"):
        run_search(strategy, streams, str(tmp_path), **kwargs)
    genotype_after_epoch_1 = Genotype.load(str(tmp_path / "genotype.json"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("-3")
    assert genotype_after_epoch_1.normal  # still a whole, valid genotype
