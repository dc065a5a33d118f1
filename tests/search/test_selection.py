"""Genotype selection by measured importance (DARTS-PT's rule): the importances are the supernet's loss
increases when an op or an edge is taken off, and the genotype keeps what costs most to remove."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.search.captioning import path_loss
from capnas_tf.search.models import build_search_models
from capnas_tf.search.selection import perturbation_importance
from capnas_tf.search_space.genotypes import genotype_from_importance, num_edges
from tests.search.conftest import TINY_CAPTION_LEN

PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")


def test_the_genotype_keeps_the_edges_and_ops_that_cost_most_to_remove():
    n, k = 2, len(PRIMITIVES)  # 2 nodes: edges 0–1 into node 0, 2–4 into node 1
    ops = [np.zeros((num_edges(n), k)), np.zeros((num_edges(n), k))]
    edges = [np.array([0.1, 0.3, 0.2, 0.0, 0.5]), np.array([0.3, 0.1, 0.4, 0.2, 0.0])]
    ops[0][:, 3] = 1.0                       # normal: sep_conv matters everywhere …
    ops[0][1, 1] = 2.0                       # … except on edge 1, where skip_connect matters more
    ops[0][:, 0] = 9.0                       # `none` is never chosen, however large
    ops[1][:, 2] = 0.5                       # reduce: max_pool …
    ops[1][2, 3] = 0.7                       # … but sep_conv on edge 2
    genotype = genotype_from_importance(ops, edges, PRIMITIVES, n)
    assert genotype.normal == (("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_3x3", 0))
    assert genotype.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 1))
    ops[0][:, 1] = 3.0  # skip_connect the most important op everywhere: the cap keeps the one that matters most
    ops[0][2, 1] = 3.5  # edge 2: node 1's input 0
    capped = genotype_from_importance(ops, edges, PRIMITIVES, n, max_skip_connect=1)
    assert [op for op, _ in capped.normal].count("skip_connect") == 1
    assert capped.normal[3] == ("skip_connect", 0)


def test_importance_is_the_loss_increase_of_each_removal_on_a_real_supernet(tiny_data):
    config = SearchConfig(supernet=SupernetConfig(channels=4, num_cells=3, num_nodes=2, primitives=PRIMITIVES))
    models = build_search_models(config, vocab_size=len(tiny_data.vocab), max_caption_len=TINY_CAPTION_LEN,
                                 image_size=16, seed=0)
    A = [tf.random.stateless_normal(a.shape, seed=[i, 7]) for i, a in enumerate(models.A)]
    batches = [batch["val"] for batch in tiny_data.validation_dataset(4, repeat=False).take(2).map(
        lambda b: {"val": b})]
    (s_normal, s_reduce), (t_normal, t_reduce) = perturbation_importance(models, A, batches)
    assert s_normal.shape == (num_edges(2), len(PRIMITIVES)) and t_reduce.shape == (num_edges(2),)

    w = [x.numpy() for x in models.relax(A)]

    def loss(weights):
        return np.mean([path_loss(models, b, tuple(tf.constant(x) for x in weights), training_decoder=False).numpy()
                        for b in batches])

    removed = [w[0], w[1].copy()]
    removed[1][3, 3] = 0.0  # sep_conv_3x3 off the reduction cell's edge 3
    assert s_reduce[3, 3] == pytest.approx(loss(removed) - loss(w), rel=1e-4, abs=1e-6)
    removed = [w[0].copy(), w[1]]
    removed[0][1, :] = 0.0  # the normal cell's edge 1 off
    assert t_normal[1] == pytest.approx(loss(removed) - loss(w), rel=1e-4, abs=1e-6)
    assert np.all(np.isfinite(s_normal)) and np.any(s_normal != 0)
