"""Choosing the genotype by measurement on the supernet instead of by A's magnitude.

DARTS' argmax(A) rule picks the operation with the largest mixing weight, which after a search drifts to
parameter-free operations (Zela et al. 2020; Wang et al. 2021, "Rethinking Architecture Selection in
Differentiable NAS", arXiv 2108.04392). DARTS-PT instead keeps the operation whose removal from the mixed
edge hurts the supernet most. `perturbation_importance` measures that on the trained supernet:

    op importance   S[e, k] = L(w with w[e, k] = 0) − L(w)
    edge importance T[e]    = L(w with w[e, :] = 0) − L(w)

with w = the relaxed A (softmax per edge, not renormalised after the removal, as DARTS-PT), L the caption
loss on the same D_val batches at the supernet's weights; `genotype_from_importance` turns them into a
genotype. DARTS-PT also fine-tunes the supernet between its edge decisions; this does not (one
measurement, all decisions), which is what makes it cost forward passes only.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from capnas_tf.search.captioning import SearchModels, path_loss


def perturbation_importance(models: SearchModels, A, batches: list) -> tuple:
    """((S_normal [E, K], S_reduce [E, K]), (T_normal [E], T_reduce [E])): the mean loss increase over
    `batches` when each op, or each whole edge, is taken off the relaxed A. One trace serves every removal
    (the op weights are an input); E·(K + 1)·2 + 1 forward passes per batch."""
    base = [tf.convert_to_tensor(w) for w in models.relax(A)]
    loss = tf.function(lambda batch, normal, reduce: path_loss(models, batch, (normal, reduce),
                                                               training_decoder=False), autograph=False)

    def mean_loss(weights):
        return float(np.mean([loss(batch, *weights).numpy() for batch in batches]))

    reference = mean_loss(base)
    ops, edges = [], []
    for cell in range(2):
        w = base[cell].numpy()
        op_scores, edge_scores = np.zeros(w.shape), np.zeros(w.shape[0])
        for e in range(w.shape[0]):
            for k in range(w.shape[1]):
                removed = w.copy()
                removed[e, k] = 0.0
                op_scores[e, k] = mean_loss(_replace(base, cell, removed)) - reference
            removed = w.copy()
            removed[e, :] = 0.0
            edge_scores[e] = mean_loss(_replace(base, cell, removed)) - reference
        ops.append(op_scores)
        edges.append(edge_scores)
    return tuple(ops), tuple(edges)


def _replace(base: list, cell: int, weights: np.ndarray) -> list:
    out = list(base)
    out[cell] = tf.constant(weights, base[cell].dtype)
    return out
