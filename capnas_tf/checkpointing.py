"""`tf.train.Checkpoint` for Keras 3 models: every variable, by position.

    checkpoint = tf.train.Checkpoint(model=model_state(captioner), optimizer=optimizer)
    restore_checkpoint(checkpoint, manager.latest_checkpoint)

Used by the search's resume state (E, F, W, A) and by the retrain's `checkpoints/` and `best/`.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def model_state(model: keras.layers.Layer) -> list:
    """Every variable of `model` as a list a `tf.train.Checkpoint` tracks by position: weights, BatchNorm
    moving statistics, A, and the dropout seed-generator states (which `weights` leaves out).

    A Keras 3 model handed to `tf.train.Checkpoint` as it is saves only the variables reachable through
    plain attributes: sublayers kept in a list (the supernet's and DiscreteEncoder's cells, a Sequential's
    layers) are not TF trackables, so their non-trainable variables are silently dropped (trainable ones
    happen to come back through the optimizer's slots). A resumed run then normalised with fresh BN
    statistics, and a restored best model was evaluated and exported with them.
    Positions are stable for a given config; a checkpoint of another config fails on the first
    mismatching shape or dtype, or on the count (`restore_checkpoint`)."""
    return [v.value for v in model.variables]


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores `path` into `checkpoint`: every object must find its value there and every value its object.

    Raises:
      ValueError: naming `path`, if the checkpoint does not fit: written for another config, or by
        capnas_tf before models were checkpointed through `model_state` (such checkpoints hold the
        variables by attribute name, not by position, and lack the BN statistics of cells).
    """
    try:  # consumed both ways: a checkpoint holding more variables than the model is no fit either
        checkpoint.restore(path).assert_consumed()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        first_line = str(e).strip().splitlines()[0][:300]
        raise ValueError(
            f"Checkpoint {path} does not fit this model: it was written for another configuration, or by "
            "capnas_tf before every model variable was checkpointed by position (checkpoints written "
            "before that are not readable; they lack the BatchNorm statistics of the cells anyway). "
            f"Delete its directory or use a new workdir. ({type(e).__name__}: {first_line})") from e
