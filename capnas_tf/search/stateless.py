"""Evaluating Keras models at weights given as tensors.

The hypergradient needs models evaluated at unrolled weights E' = E − η∇E without copying them.
`bind` maps each model's variables to tensors for the duration of a `with` block, using Keras 3's
`StatelessScope` (the mechanism behind `Model.stateless_call`). Inside the block any method of the
model — its call, or a greedy-decoding loop — reads the given tensors, differentiably, and no
variable is modified: the state updates of the block (BatchNorm's moving statistics, the dropout
layers' seed-generator states) are dropped, unless `collect_state_updates` is recording them.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import keras
import tensorflow as tf

_recorders = threading.local()  # .active: the innermost `StateUpdates` being recorded, or None


class StateUpdates:
    """The values Keras variables were assigned inside `bind` blocks: for each variable, its value at
    the end of the first block that assigned it. `assign()` writes them to the variables.

    First block wins, so that a step whose weight updates reuse the unrolled gradients keeps the state
    of the pass those gradients came from: the hypergradient's first pass of the supernet is Stage I
    (L_tr at E, F, the D_tr batch), its first of the student the Stage II loss (at W). The later
    passes of the same models are evaluations at virtual weights (E', F', W ± εv, …).

    Values traced inside a loop or function body of the graph being built (the finite differences'
    ± pairs, a decoding loop) are skipped: their tensors cannot leave the body, and those passes come
    after the first ones.
    """

    def __init__(self):
        self._graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        self._values = {}  # id(variable) → (variable, value)

    def record(self, scope: keras.StatelessScope, variables) -> None:
        for variable in variables:
            value = scope.get_current_value(variable)
            if id(variable) in self._values or (self._graph is not None and value.graph is not self._graph):
                continue
            self._values[id(variable)] = (variable, value)

    def assign(self) -> None:
        for variable, value in self._values.values():
            variable.assign(value)


@contextlib.contextmanager
def collect_state_updates():
    """Within the block, every `bind` records its state updates into the `StateUpdates` it yields;
    the caller assigns them (`.assign()`) when it wants them to take effect."""
    updates, outer = StateUpdates(), getattr(_recorders, "active", None)
    _recorders.active = updates
    try:
        yield updates
    finally:
        _recorders.active = outer


class _RecordingScope(keras.StatelessScope):
    """A StatelessScope that remembers which variables were assigned in it (Keras keeps only ids)."""

    def __init__(self, state_mapping):
        super().__init__(state_mapping=state_mapping)
        self.assigned = {}

    def add_update(self, update):
        super().add_update(update)
        self.assigned[id(update[0])] = update[0]


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
    recorder = getattr(_recorders, "active", None)
    with _RecordingScope(mapping) as scope:
        yield
    if recorder is not None:
        recorder.record(scope, scope.assigned.values())


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
    """‖x‖₂ over a list of tensors. One `L2Loss` op (Σx²/2) per tensor: `dot(xs, xs)` would add three
    (a product, a reduction and its axes), and a step's graph, whose size sets its trace time, takes
    the norm of every gradient of E, F, W."""
    return tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(x) for x in xs]))


def axpy(a, xs: Sequence[tf.Tensor], ys: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """y + a·x, element-wise over lists of tensors."""
    return [y + a * x for x, y in zip(xs, ys)]


def densify(grads: Sequence, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Gradients as dense tensors, zeros where the loss does not depend on a variable."""
    return [tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, like)]
