"""Relaxations: how the architecture A (one row of K logits per mixed edge) becomes the op weights
that mix the candidates. Each is a small function of A, chosen by name:

    fn(alpha [E, K], *, temperature=1.0, seed=None) -> weights [E, K]

- `softmax` (DARTS): w = softmax(α / τ), a dense mixture.
- `gumbel` (GDAS): a hard one-hot sample per edge from Gumbel-softmax; the forward pass uses the
  one-hot h, the gradient is that of the soft sample y = softmax((log softmax(α) + g) / τ),
  g ~ Gumbel(0, 1) (straight-through: w = h − sg(y) + y).

Random search with weight sharing samples whole architectures, not op weights of A
(`search.paths.uniform_path`), so it has no relaxation here.

The stochastic one uses stateless random ops: `seed` is a shape-[2] integer tensor, and the same
seed gives the same sample in eager mode, in `tf.function` and under XLA. Change it every step,
e.g. `seed = tf.stack([run_seed, step])`.

References: Liu et al., DARTS, arXiv:1806.09055; Dong & Yang, "Searching for a Robust Neural
Architecture in Four GPU Hours" (GDAS), arXiv:1910.04465.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from capnas_tf.registry import Registry

RELAXATIONS = Registry("relaxation", register_name="register_relaxation", lookup_name="get_relaxation")


def register_relaxation(name: str, fn: Callable | None = None):
    """Makes `fn(alpha, *, temperature, seed) -> weights` available as `name`; usable as a decorator.

    Registering a different function under a taken name is an error.
    """
    return RELAXATIONS.register(name, fn)


def get_relaxation(name: str) -> Callable:
    """The relaxation registered as `name` ("softmax", "gumbel", …)."""
    return RELAXATIONS.lookup(name, f"get_relaxation: unknown relaxation {name!r}; expected one of "
                                    f"{sorted(RELAXATIONS)}.")


def _as_float_matrix(alpha, where: str) -> tf.Tensor:
    alpha = tf.convert_to_tensor(alpha)
    if not alpha.dtype.is_floating:
        alpha = tf.cast(alpha, tf.float32)
    if alpha.shape.rank != 2:
        raise ValueError(f"{where}: alpha must have shape [E, K] (edges × candidate ops); "
                         f"received shape {alpha.shape}.")
    return alpha


def _require_seed(seed, where: str) -> tf.Tensor:
    if seed is None:
        raise ValueError(
            f"{where}: this relaxation samples, so it needs seed=<int tensor of shape [2]> (stateless "
            "random ops keep it deterministic under tf.function and XLA); received seed=None. "
            "Pass a different seed every step, e.g. tf.stack([run_seed, step]).")
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"{where}: seed must be an integer tensor of shape [2]; received dtype {seed.dtype.name}.")
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"{where}: seed must have shape [2]; received shape {seed.shape}.")
    return seed


@register_relaxation("softmax")
def softmax(alpha, *, temperature=1.0, seed=None) -> tf.Tensor:
    """DARTS: w_{e,k} = exp(α_{e,k}/τ) / Σ_j exp(α_{e,j}/τ). `seed` is ignored."""
    alpha = _as_float_matrix(alpha, "softmax")
    return tf.nn.softmax(alpha / tf.cast(temperature, alpha.dtype), axis=-1)


@register_relaxation("gumbel")
def gumbel(alpha, *, temperature=1.0, seed=None) -> tf.Tensor:
    """GDAS: a one-hot sample per edge with the straight-through gradient of the Gumbel-softmax.

    y = softmax((log softmax(α) + g) / τ), g = −log(−log u), u ~ U(0, 1);
    h = one_hot(argmax y); returns h − sg(y) + y (forward h, gradient ∂y/∂α).
    """
    alpha = _as_float_matrix(alpha, "gumbel")
    seed = _require_seed(seed, "gumbel")
    tiny = tf.constant(1e-10, alpha.dtype)  # keeps log(u) and log(−log u) finite
    u = tf.random.stateless_uniform(tf.shape(alpha), seed=seed, minval=tiny, maxval=1.0 - tiny,
                                    dtype=alpha.dtype)
    g = -tf.math.log(-tf.math.log(u))
    soft = tf.nn.softmax((tf.nn.log_softmax(alpha, axis=-1) + g) / tf.cast(temperature, alpha.dtype), axis=-1)
    hard = tf.one_hot(tf.argmax(soft, axis=-1), tf.shape(alpha)[-1], dtype=alpha.dtype)
    return hard - tf.stop_gradient(soft) + soft


def relax_architecture(relaxation: str | Callable, A: Sequence, *, temperature=1.0, seed=None):
    """Applies a relaxation to both cells' A = (α_normal, α_reduce).

    Returns `(w_normal, w_reduce)`, the `op_weights` of `SupernetEncoder.call`. The two cells draw
    from independent streams derived from `seed` (so they never share a sample).
    """
    fn = get_relaxation(relaxation) if isinstance(relaxation, str) else relaxation
    alpha_normal, alpha_reduce = A
    if seed is None:
        seeds = (None, None)
    else:
        seeds = tf.unstack(tf.random.experimental.stateless_split(_require_seed(seed, "relax_architecture"), 2))
    return (fn(alpha_normal, temperature=temperature, seed=seeds[0]),
            fn(alpha_reduce, temperature=temperature, seed=seeds[1]))


def gumbel_temperature(step, total_steps, tau_max: float = 10.0, tau_min: float = 0.1):
    """GDAS' schedule: τ decays linearly from `tau_max` at step 0 to `tau_min` at step
    `total_steps − 1`, and stays there.

    τ(t) = τ_max − (τ_max − τ_min) · min(t / (T − 1), 1)

    Works on Python numbers (returns a float) and on tensors (returns a float32 tensor), so the
    step counter of a traced loop can be passed directly.
    """
    if isinstance(step, (int, float)) and isinstance(total_steps, (int, float)):
        fraction = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return float(tau_max - (tau_max - tau_min) * fraction)
    step = tf.cast(step, tf.float32)
    denominator = tf.maximum(tf.cast(total_steps, tf.float32) - 1.0, 1.0)
    fraction = tf.clip_by_value(step / denominator, 0.0, 1.0)
    return tau_max - (tau_max - tau_min) * fraction
