"""Random search with weight sharing: uniform paths, the final ranking on shared weights, a tiny search."""
import dataclasses

import numpy as np
import pytest

from capnas_tf.search.paths import path_loss, uniform_path
from capnas_tf.search.random_ws import RandomWSStrategy
from capnas_tf.search_space.genotypes import Genotype, genotype_op_weights, sample_genotype
from tests.search.strategy_checks import check_search_outputs, tiny_search
from tests.search.test_search_loop import L, TINY_SEARCH

PRIMITIVES = TINY_SEARCH.supernet.primitives


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_random_ws_search_writes_every_output_and_returns_a_ranked_candidate(tiny_data, tmp_path):
    result, lines = tiny_search("random_ws", tiny_data, tmp_path, random_ws_candidates=3, random_ws_rank_batches=1)
    history = check_search_outputs(tmp_path, result, lines, metric="random_ws/val_loss")
    # The candidates are the first 3 draws of sample_genotype from the run seed (0). Epoch 1, before
    # the ranking (the last step): candidate 0; after it, one of the three.
    rng = np.random.default_rng(0)
    candidates = [sample_genotype(rng, primitives=PRIMITIVES, num_nodes=2, max_skip_connect=2) for _ in range(3)]
    assert Genotype.from_dict(history[0]["genotype"]) == candidates[0]
    assert result.genotype in candidates
    assert "random_ws/val_loss" in lines[1] and "random_ws/val_loss" in lines[2]  # probe, then ranking


def test_uniform_paths_are_architectures_of_the_space():
    seen = set()
    for step in range(40):
        for w in uniform_path(np.array([7, step]), num_nodes=3, primitives=PRIMITIVES):
            w = w.numpy()
            assert set(np.unique(w)) <= {0.0, 1.0} and w.sum() == 6  # 2 edges per node
            assert w[:, PRIMITIVES.index("none")].sum() == 0
            assert (w.sum(axis=1) <= 1).all()  # distinct inputs: an edge is used at most once
            for i, (start, stop) in enumerate([(0, 2), (2, 5), (5, 9)]):
                assert w[start:stop].sum() == 2, f"node {i}"
            seen.add(w.tobytes())
    assert len(seen) > 60  # 80 draws, not a handful of repeats


def test_random_ws_returns_the_candidate_with_the_lowest_shared_weight_validation_loss(tiny_data, tiny_models):
    config = dataclasses.replace(TINY_SEARCH, random_ws_candidates=4, random_ws_rank_batches=1)
    strategy = RandomWSStrategy(tiny_models, config, max_caption_len=L)
    assert strategy.derive_genotype(primitives=PRIMITIVES, num_nodes=2, max_skip_connect=2) == strategy.candidates[0]
    strategy.begin_search(total_steps=1, warmup_steps=0)  # the only step ranks
    batch = next(iter(tiny_data.validation_dataset(4)))
    metrics = strategy.architecture_step({"val": batch})
    # Each candidate scored independently, eagerly, on the same batch and weights.
    expected = [float(path_loss(tiny_models, batch, genotype_op_weights(g, PRIMITIVES), training_decoder=False))
                for g in strategy.candidates]
    assert len(set(np.round(expected, 5))) == 4, "candidates indistinguishable: the test would prove nothing"
    np.testing.assert_allclose([loss for loss, _ in sorted(strategy.ranking(), key=lambda r: r[1])], expected,
                               rtol=1e-4)
    np.testing.assert_allclose(float(metrics["random_ws/val_loss"]), np.mean(expected), rtol=1e-4)
    best = strategy.derive_genotype(primitives=PRIMITIVES, num_nodes=2, max_skip_connect=2)
    assert best == strategy.candidates[int(np.argmin(expected))]


def test_random_ws_checks_its_flags(tiny_models):
    with pytest.raises(ValueError, match="random_ws_candidates must be >= 1"):  # SearchConfig's check
        RandomWSStrategy(tiny_models, dataclasses.replace(TINY_SEARCH, random_ws_candidates=0), max_caption_len=L)
    strategy = RandomWSStrategy(tiny_models, dataclasses.replace(TINY_SEARCH, random_ws_rank_batches=5),
                                max_caption_len=L)
    with pytest.raises(ValueError, match="--random_ws_rank_batches=5 exceeds the 2 steps"):
        strategy.begin_search(total_steps=4, warmup_steps=2)
