"""Adam and AdamW whose update is one kernel per variable, for short traces.

Keras' Adam builds 37 graph ops per variable on every `apply` (the learning rate, both β powers and the
step size recomputed for each variable, then the moment and weight updates), and AdamW adds the learning
rate (a whole schedule) and the decay again per variable. A search step updates a few hundred variables:
that is close to half of the plain step's graph and of its Python trace time (`benchmarks/search_step.py`
reports the graph size; docs/performance.md, "Trace time").

`FusedAdam` and `FusedAdamW` (the search's optimizers) compute the step's scalars once per `apply` and
update each variable with TensorFlow's `ResourceApplyAdam` kernel, which computes Adam's formula:

    α = η √(1 − β₂ᵗ) / (1 − β₁ᵗ),  m += (g − m)(1 − β₁),  v += (g² − v)(1 − β₂),  θ −= α m / (√v + ε)

and AdamW's decoupled decay θ −= η λ θ with η λ computed once. Their variables (iterations, learning
rate, momentums, velocities) are Keras' own, so checkpoints of either class restore into the other.
In float64 the update is Adam's formula to rounding (β, ε, λ taken as the Python numbers they are; Keras
rounds them to float32 first). In float32 it differs from Keras' by ~6e-6 relative: the kernel forms 1 − β₂
from float32 β₂, Keras from the Python number. `tests/test_optimizers.py` checks both, the op counts and
MirroredStrategy.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def _scalar(value, dtype):
    """`value` in `dtype`; a Python number directly (tf.cast would round it to float32 first)."""
    return tf.constant(value, dtype) if isinstance(value, (int, float)) else tf.cast(value, dtype)


def _tf_variable(variable):
    """The tf.Variable (or distributed variable) behind a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class FusedAdamUpdate:
    """Mixin over `keras.optimizers.Adam` (or a subclass): the fused update. AMSGrad falls back to Keras'."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._step_scalars = {}  # (dtype, device) → the step's scalars, built by the first variable there
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _adam_scalars(self, learning_rate, dtype, device):
        """(η, β₁ᵗ, β₂ᵗ, β₁, β₂, ε) in `dtype`, once per step and device; t = iterations + 1 as in Keras."""
        key = (dtype, device)
        cache = getattr(self, "_step_scalars", None)
        if cache is not None and key in cache:
            return cache[key]
        with tf.name_scope("adam_scalars"):
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = _scalar(self.beta_1, dtype), _scalar(self.beta_2, dtype)
            scalars = (tf.cast(learning_rate, dtype), tf.pow(beta_1, step), tf.pow(beta_2, step),
                       beta_1, beta_2, _scalar(self.epsilon, dtype))
        if cache is not None:
            cache[key] = scalars
        return scalars

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        variable = _tf_variable(variable)
        lr, beta_1_power, beta_2_power, beta_1, beta_2, epsilon = self._adam_scalars(
            learning_rate, variable.dtype, variable.device)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=_tf_variable(self._momentums[index]).handle,
            v=_tf_variable(self._velocities[index]).handle, beta1_power=beta_1_power, beta2_power=beta_2_power,
            lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon, grad=tf.cast(gradient, variable.dtype))

    def _apply_weight_decay(self, variables):
        """θ −= η λ θ for the variables that take decay, η λ computed once per dtype and device."""
        if self.weight_decay is None:
            return
        decay = {}

        def decay_one(variable):
            if not self._use_weight_decay(variable):
                return
            key = (variable.dtype, variable.device)
            if key not in decay:
                decay[key] = tf.cast(self.learning_rate, variable.dtype) * _scalar(self.weight_decay, variable.dtype)
            variable.assign_sub(variable * decay[key])

        def decay_all(distribution, variables, **kwargs):
            for variable in variables:
                distribution.extended.update(_tf_variable(variable), decay_one, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(decay_all, self._distribution_strategy, variables)


@keras.saving.register_keras_serializable(package="capnas_tf")
class FusedAdam(FusedAdamUpdate, keras.optimizers.Adam):
    """`keras.optimizers.Adam`, one `ResourceApplyAdam` per variable (same arguments)."""


@keras.saving.register_keras_serializable(package="capnas_tf")
class FusedAdamW(FusedAdamUpdate, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, one `ResourceApplyAdam` and one decay per variable (same arguments)."""
