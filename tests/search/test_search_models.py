"""What a strategy declares (a student, second order, mixed precision) and who asks: the model building
builds W only for a strategy that trains it, and the precision checks ask the strategy, not its name."""
import dataclasses

import numpy as np
import pytest

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.search import precision
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import STRATEGIES, DartsStrategy, SearchStrategy, ThreeStageStrategy
from capnas_tf.distribute import configure_runtime

# The default F and W (the transformer, whose layers draw their initializers' seeds when it is built) on a
# small supernet.
SMALL = SearchConfig(supernet=SupernetConfig(channels=4, num_cells=3, num_nodes=1,
                                             primitives=("none", "skip_connect", "sep_conv_3x3")))


def _initial_models(strategy: str):
    configure_runtime(0, False)
    return build_search_models(dataclasses.replace(SMALL, strategy=strategy), vocab_size=30, max_caption_len=8,
                               image_size=16, seed=0)


def test_only_the_strategies_that_train_a_student_get_one():
    assert [name for name, cls in sorted(STRATEGIES.items()) if cls.uses_student] == ["three_stage"]
    models = _initial_models("darts")
    assert models.student is None and models.all() == [models.encoder, models.decoder]
    with pytest.raises(ValueError, match="no student W"):
        models.W  # noqa: B018


def test_every_strategy_starts_from_the_same_E_and_F_on_the_same_seed():
    """W is built only for three_stage, yet darts and gdas draw the same initial E, F (and A) as the
    three-stage search: building W for none of them changes no initial value."""
    reference = _initial_models("three_stage")
    assert reference.student is not None and reference.W
    for strategy in ("darts", "gdas"):
        models = _initial_models(strategy)
        for part in ("encoder", "decoder"):
            expected, got = getattr(reference, part).variables, getattr(models, part).variables
            assert [v.shape for v in got] == [v.shape for v in expected]
            for v_expected, v_got in zip(expected, got):
                np.testing.assert_array_equal(v_got.numpy(), v_expected.numpy(), err_msg=f"{strategy} {v_got.path}")


def test_the_strategies_declare_their_order_and_precision():
    assert ThreeStageStrategy.is_second_order(SearchConfig()) and ThreeStageStrategy.supports_mixed_precision
    assert DartsStrategy.is_second_order(SearchConfig(strategy="darts", darts_order=2))
    assert not DartsStrategy.is_second_order(SearchConfig(strategy="darts", darts_order=1))
    assert not any(STRATEGIES[name].supports_mixed_precision for name in ("gdas", "random_ws", "reinforce"))


class _SecondOrderMixed(SearchStrategy):
    supports_mixed_precision = True

    @classmethod
    def is_second_order(cls, config):
        return True


def test_precision_checks_ask_the_strategy_not_its_name():
    mixed_fd = SearchConfig(strategy="gdas", hypergradient="finite_difference", dtype_policy="mixed_bfloat16")
    with pytest.raises(ValueError, match=r"implemented for --search_strategy in \['darts', 'three_stage'\] only"):
        precision.check_precision(mixed_fd)  # gdas, as registered: no mixed precision
    with pytest.raises(ValueError, match="--hypergradient=finite_difference does not work"):
        precision.check_precision(mixed_fd, _SecondOrderMixed)  # a second-order strategy: refused
    precision.check_precision(dataclasses.replace(mixed_fd, hypergradient="exact"), _SecondOrderMixed)
    STRATEGIES.register("second_order_mixed", _SecondOrderMixed)  # a registered one is asked by its name
    try:
        with pytest.raises(ValueError, match="--hypergradient=finite_difference does not work"):
            precision.check_precision(dataclasses.replace(mixed_fd, strategy="second_order_mixed"))
    finally:
        del STRATEGIES["second_order_mixed"]
