"""capnas_tf/search/strategies.py: how a traced search step orders its parts."""
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig
from capnas_tf.jobs import search_streams
from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy
from tests.search.conftest import TINY_CAPTION_LEN
from tests.search.toy_models import toy_search_models


def _descendants(op: tf.Operation) -> set:
    """Every op of op's graph that runs after it: its data consumers and control successors, transitively."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        successors = [c for t in current.outputs for c in t.consumers()] + list(current._control_outputs)
        for s in successors:
            if s not in seen:
                seen.add(s)
                todo.append(s)
    return seen


@pytest.mark.parametrize("strategy_cls, config", [
    (ThreeStageStrategy, SearchConfig(hypergradient="exact")),
    (DartsStrategy, SearchConfig(strategy="darts", darts_order=2)),
], ids=["three_stage", "darts"])
def test_traced_weight_step_starts_only_after_the_architecture_step(tiny_data, strategy_cls, config):
    """The weight step's stem and first cell read no A, so only an explicit order keeps the executor from
    running them beside the hypergradient, where their activations would add to its memory peak."""
    models = toy_search_models(len(tiny_data.vocab), TINY_CAPTION_LEN)
    strategy = strategy_cls(models, config, max_caption_len=TINY_CAPTION_LEN)
    batches = next(iter(search_streams(tiny_data, 4)))
    seen = {}

    @tf.function(autograph=False)
    def step(batches):
        metrics = strategy.step(batches, update_architecture=True)
        seen["last"] = metrics["arch/hypergradient_norm"]  # the architecture step's last value
        return metrics

    graph = step.get_concrete_function(batches).graph
    after = _descendants(seen["last"].op)
    weight_ops = [op for op in graph.get_operations()  # the captured variables' placeholders are inputs
                  if op.name.split("/")[0] in ("supernet_weight_step", "student_weight_step")
                  and op.type != "Placeholder"]
    assert len(weight_ops) > 50
    assert [op.name for op in weight_ops if op not in after] == []
