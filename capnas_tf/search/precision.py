"""Mixed precision for the search: the Keras dtype policy its models compute in, and the loss scale S
that keeps float16 gradients from underflowing through the nested tapes.

Every tape of the search differentiates S·L and divides the gradient by S:

    ∇θ L = ∇θ(S·L) / S,   so   E' = E − η_e ∇_E(S·L_tr)/S,   W' = W − η_w ∇_W(S·L_u)/S,   ∇_A f = ∇_A(S·f)/S.

In exact arithmetic this changes nothing; S is a power of two, so in float32 it changes nothing either
(scaling by 2^k is exact there), while float16 activations' cotangents are S times larger and stay
above float16's underflow. The scale is static: a gradient that overflows makes the loop stop with
`NonFiniteLossError`, and the remedy is a smaller `--loss_scale`. bfloat16 has float32's exponent
range and needs no scale.
"""
from __future__ import annotations

import contextlib
import math

import keras

from capnas_tf.registry import registry

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
FLOAT16_LOSS_SCALE = 2.0**10  # S under mixed_float16 unless --loss_scale says otherwise


def check_precision(config, strategy: type | None = None) -> None:
    """Refuses a dtype policy, loss scale or combination the search cannot honour, naming the flags.

    What the search strategy supports it says itself (`SearchStrategy.supports_mixed_precision`,
    `.is_second_order`); `strategy` is its class, by default the one registered as `config.strategy`."""
    policy, scale = config.dtype_policy, config.loss_scale
    if policy not in POLICIES:
        raise ValueError(f"--dtype_policy must be one of {POLICIES}; received {policy!r}.")
    if scale and (scale < 1 or math.log2(scale) != int(math.log2(scale))):
        raise ValueError(f"--loss_scale must be 0 (the policy's default) or a power of two >= 1, so that "
                         f"scaling is exact in float32; received {scale!r}.")
    if policy == "float32":
        return
    strategies = registry("search_strategy")
    strategy = strategy or strategies.lookup(config.strategy)
    if not strategy.supports_mixed_precision:
        supported = sorted(name for name, cls in strategies.items() if cls.supports_mixed_precision)
        raise ValueError(f"--dtype_policy={policy} is implemented for --search_strategy in {supported} "
                         f"only; received --search_strategy={config.strategy!r}.")
    # Only a second-order estimator perturbs the weights by finite differences.
    if config.hypergradient == "finite_difference" and strategy.is_second_order(config):
        raise ValueError(
            f"--hypergradient=finite_difference does not work with --dtype_policy={policy}: it perturbs "
            f"the weights by ε/‖v‖ (--fd_epsilon={config.fd_epsilon}), far below the resolution of "
            f"{policy.removeprefix('mixed_')} weights, so W⁺ and W⁻ compute the same. Use "
            "--hypergradient=exact (nested tapes) with mixed precision.")


def loss_scale(config) -> float:
    """S: `config.loss_scale`, or the policy's default (2^10 under mixed_float16, else 1)."""
    if config.loss_scale:
        return float(config.loss_scale)
    return FLOAT16_LOSS_SCALE if config.dtype_policy == "mixed_float16" else 1.0


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers created (and built) within the block compute in `name`; variables stay float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def scaled(loss, scale: float):
    """S·L (the loss a tape differentiates)."""
    return loss if scale == 1 else loss * scale


def unscaled(grads: list, scale: float) -> list:
    """∇(S·L)/S."""
    return list(grads) if scale == 1 else [g / scale for g in grads]
