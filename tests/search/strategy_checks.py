"""One end-to-end check shared by the tests of the sampling strategies (gdas, random_ws, reinforce):
a tiny search through `search_job`, then the outputs every strategy must write."""
import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf

from capnas_tf.config import RunConfig
from capnas_tf.jobs import search_job
from capnas_tf.search_space.genotypes import Genotype
from tests.search.test_search_loop import TINY_SEARCH


def tiny_search(strategy: str, data, workdir, **overrides):
    """TINY_SEARCH's supernet searched by `strategy` for 2 epochs of 1 step, no warm-up (one traced step
    function: tracing dominates the time); returns (result, log lines)."""
    overrides = dict(dict(warmup_epochs=0, steps_per_epoch=1), **overrides)
    config = dataclasses.replace(TINY_SEARCH, strategy=strategy, **overrides)
    lines = []
    result = search_job(RunConfig(workdir=str(workdir)), config, data, batch_size=4, log=lines.append)
    return result, lines


def check_search_outputs(workdir, result, lines, *, metric: str) -> list:
    """genotype.json, alpha_history.jsonl (one finite record per epoch), pictures, TensorBoard events,
    the last checkpoint, and `metric` in the progress lines. Returns the history records."""
    out = os.path.join(str(workdir), "search")
    assert Genotype.load(os.path.join(out, "genotype.json")) == result.genotype
    with open(os.path.join(out, "alpha_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        for key in ("alpha_normal", "alpha_reduce"):
            values = np.asarray(h[key])
            assert values.shape == (5, 4) and np.isfinite(values).all(), key  # 2 nodes: 5 edges × 4 ops
        assert Genotype.from_dict(h["genotype"])
    assert history[-1]["genotype"] == result.genotype.to_dict()
    for picture in ("genotype.png", "alpha_heatmap.png"):
        assert os.path.getsize(os.path.join(out, picture)) > 0
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("-2")
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "tensorboard")))
    shown = [line for line in lines if f"{metric}=" in line]
    assert shown, f"{metric} never logged"
    value = float(shown[-1].split(f"{metric}=")[1].split()[0])
    assert math.isfinite(value)
    return history
