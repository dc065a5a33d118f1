"""First-order gradients as every tape of the search takes them: ∇(S·L)/S, dense, summed over replicas.

S is the loss scale of mixed precision (`precision.py`); the sum over replicas makes every replica
take the step of the global batch (`distribute.all_reduce_sum`, or the identity on one device).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import keras
import tensorflow as tf

from capnas_tf.search.precision import scaled, unscaled
from capnas_tf.search.stateless import densify


def identity(grads):
    """The reduction of one device (no replicas to sum over)."""
    return grads


def reduced_gradient(tape: tf.GradientTape, scaled_loss: tf.Tensor, wrt: Sequence, reduce: Callable = identity,
                     scale: float = 1.0) -> list:
    """∇L = ∇(S·L)/S of `scaled_loss` = S·L, recorded by `tape`, with respect to `wrt`: dense (zeros
    where L does not depend on an entry) and reduced by `reduce` before the division by S."""
    return unscaled(reduce(densify(tape.gradient(scaled_loss, wrt), wrt)), scale)


def gradients(loss_fn: Callable, wrt: Sequence[Sequence], reduce: Callable = identity, scale: float = 1.0,
              name: str | None = None):
    """(L, [∇L for each group in `wrt`]) of L = loss_fn(), first order, as ∇(S·L)/S for S = `scale`.

    The groups may hold tensors (watched here) or trainable Keras variables (which a tape watches by
    itself; `GradientTape.watch` refuses them). `name`: the ops' name scope (forward and backward),
    which is how a profile (benchmarks/profile_step.py) attributes their time.
    """
    flat = [t for group in wrt for t in group]
    with tf.name_scope(name) if name else contextlib.nullcontext():
        with tf.GradientTape() as tape:
            tape.watch([t for t in flat if not isinstance(t, keras.Variable)])
            loss = loss_fn()
            scaled_loss = scaled(loss, scale)  # inside the tape, or the tape would not see the product
        grads = reduced_gradient(tape, scaled_loss, flat, reduce, scale)
    out, i = [], 0
    for group in wrt:
        out.append(grads[i: i + len(group)])
        i += len(group)
    return loss, out
