"""configs/search_*.cfg: each starts with the command that runs it and parses into the SearchConfig of
a registered strategy."""
import os

import pytest
from absl import flags

from capnas_tf import flags as capnas_flags
from capnas_tf.search.strategies import STRATEGIES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("strategy", ["darts", "gdas", "random_ws", "reinforce"])
def test_search_flagfile_runs_its_strategy(strategy):
    path = os.path.join("configs", f"search_{strategy}.cfg")
    with open(os.path.join(ROOT, path)) as f:
        assert f.readline().strip() == f"# python -m capnas_tf.train --flagfile={path}"
    FLAGS = flags.FLAGS
    try:
        FLAGS(["train", f"--flagfile={os.path.join(ROOT, path)}"])
        config = capnas_flags.search_config_from_flags()
    finally:
        FLAGS.unparse_flags()
    assert config.strategy == strategy and strategy in STRATEGIES
    assert config.epochs * config.steps_per_epoch <= 90  # a few minutes on a 2-core CPU
    if strategy == "random_ws":
        assert (config.random_ws_candidates, config.random_ws_rank_batches) == (20, 4)
    if strategy == "reinforce":
        assert config.controller_lr == 0.0035 and config.reinforce_baseline_decay == 0.95
