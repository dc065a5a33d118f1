"""Evaluating Keras models at weights given as tensors.

The hypergradient needs models evaluated at unrolled weights E' = E − η∇E without copying them.
`bind` maps each model's variables to tensors for the duration of a `with` block, using Keras 3's
`StatelessScope` (the mechanism behind `Model.stateless_call`). Inside the block any method of the
model — its call, or a greedy-decoding loop — reads the given tensors, differentiably, and no
variable is modified (BatchNorm's moving statistics updates are collected and dropped).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import keras
import tensorflow as tf


def values_of(variables: Sequence[keras.Variable]) -> list[tf.Tensor]:
    """The current values of `variables` as tensors (a snapshot usable as θ in θ' = θ − η g)."""
    return [tf.convert_to_tensor(v.value) for v in variables]


@contextlib.contextmanager
def bind(*pairs: tuple[Sequence[keras.Variable], Sequence[tf.Tensor]]):
    """Within the block, each variable in `pairs[i][0]` reads the tensor at the same position of
    `pairs[i][1]`. One scope for all pairs: Keras consults only the innermost StatelessScope, so
    nesting two `bind`s would hide the outer one's mapping."""
    mapping = []
    for variables, values in pairs:
        variables, values = list(variables), list(values)
        if len(variables) != len(values):
            raise ValueError(
                f"bind: expected {len(variables)} values (one per variable), received {len(values)}."
            )
        mapping.extend(zip(variables, values))
    with keras.StatelessScope(state_mapping=mapping):
        yield


def unrolled(values: Sequence[tf.Tensor], grads: Sequence, lr) -> list[tf.Tensor]:
    """One virtual gradient step θ' = θ − η ∇θ L.

    Embedding gradients arrive as IndexedSlices and must be densified before they can be
    subtracted; a variable the loss does not touch (gradient None) stays where it is.
    """
    return [v if g is None else v - lr * tf.convert_to_tensor(g) for v, g in zip(values, grads)]


def dot(xs: Sequence[tf.Tensor], ys: Sequence[tf.Tensor]) -> tf.Tensor:
    """⟨x, y⟩ over lists of tensors."""
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(xs, ys)])


def global_norm(xs: Sequence[tf.Tensor]) -> tf.Tensor:
    """‖x‖₂ over a list of tensors."""
    return tf.sqrt(dot(xs, xs))


def axpy(a, xs: Sequence[tf.Tensor], ys: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """y + a·x, element-wise over lists of tensors."""
    return [y + a * x for x, y in zip(xs, ys)]


def densify(grads: Sequence, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Gradients as dense tensors, zeros where the loss does not depend on a variable."""
    return [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, like)]
