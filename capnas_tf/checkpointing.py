"""`tf.train.Checkpoint` for Keras 3 models: every variable, by position; only finite states are saved,
and a resume falls back past a checkpoint that cannot be read (or holds NaN / Inf).

    checkpoint = tf.train.Checkpoint(model=model_state(captioner), optimizer=optimizer)
    finite = FiniteCheck(named_variables({"model": captioner, "optimizer": optimizer}))
    keeper = CheckpointKeeper(checkpoint, "<workdir>/checkpoints", max_to_keep=2, finite=finite)
    keeper.restore_latest()            # the newest checkpoint that reads back whole and finite
    ...
    bad = finite.first_non_finite()    # (item, variable name) or None: one fused check
    if bad is None:
        keeper.save(checkpoint_number=epoch)

Used by the search's resume state (E, F, W, A) and by the retrain's `checkpoints/` and `best/`.
"""
from __future__ import annotations

import glob
import os
import time

import keras
import tensorflow as tf
from absl import logging


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


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint's files are missing, truncated or corrupt (not: written for another model)."""


# What TensorFlow raises reading a checkpoint whose files are truncated, corrupt or gone: a truncated data
# file gives a bare IndexError ("Read less bytes than requested"), a corrupt one DataLossError.
_UNREADABLE_ERRORS = (IndexError, OSError, EOFError, tf.errors.DataLossError, tf.errors.OutOfRangeError,
                      tf.errors.NotFoundError, tf.errors.UnknownError, tf.errors.InternalError)


def checkpoint_files(path: str) -> list[str]:
    """The files of checkpoint `path` (its `.index` and `.data-*` files), sorted."""
    return sorted(glob.glob(glob.escape(path) + ".index") + glob.glob(glob.escape(path) + ".data-*"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def read_checkpoint(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """`restore_checkpoint`, but files that cannot be read raise `UnreadableCheckpointError` (naming them)."""
    files = checkpoint_files(path)
    if not any(f.endswith(".index") for f in files) or not any(".data-" in f for f in files):
        raise UnreadableCheckpointError(f"{path}: files missing (found {[os.path.basename(f) for f in files]})")
    try:
        restore_checkpoint(checkpoint, path)
    except ValueError as e:
        cause = e.__cause__
        if isinstance(cause, _UNREADABLE_ERRORS):
            raise UnreadableCheckpointError(f"{', '.join(files)}: {_first_line(cause)}") from cause
        raise
    except _UNREADABLE_ERRORS as e:
        raise UnreadableCheckpointError(f"{', '.join(files)}: {_first_line(e)}") from e


# --- finiteness -----------------------------------------------------------------------------------------

def _named(item: str, obj) -> list:
    """(item, name, tf variable) of every variable of `obj`: a Keras layer or optimizer, a Keras or TF
    variable, or a list of them (`model_state`)."""
    if isinstance(obj, (keras.layers.Layer, keras.optimizers.Optimizer)):
        return [(item, v.path, v.value) for v in obj.variables]
    if isinstance(obj, keras.Variable):
        return [(item, obj.path, obj.value)]
    if isinstance(obj, tf.Variable):
        return [(item, obj.name.split(":")[0], obj)]
    if isinstance(obj, (list, tuple)):
        return [entry for i, x in enumerate(obj) for entry in _named(item, x)]
    return []


def named_variables(items: dict) -> list:
    """[(item, variable name, variable)] of every variable of `items` (name → Keras layer, optimizer,
    variable, or list of them), as `FiniteCheck` takes them. Keras variables are named by their path."""
    return [entry for item, obj in items.items() for entry in _named(item, obj)]


class FiniteCheck:
    """Whether every floating-point variable of a state (weights, optimizer slots, BatchNorm moving
    statistics, A) is finite: one traced function reduces each variable to one flag, and one call
    brings the flags back.

    Args:
      named: [(item, name, variable)] (`named_variables`); integer variables (step counters, seed states)
        are left out.
    """

    def __init__(self, named: list):
        self.named = [(item, name, v) for item, name, v in named if v.dtype.is_floating]
        variables = [v for _, _, v in self.named]

        @tf.function(autograph=False)
        def flags():
            return tf.stack([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for v in variables])

        self._flags = flags

    def first_non_finite(self) -> tuple[str, str] | None:
        """(item, variable name) of the first variable holding a NaN or Inf, or None if all are finite."""
        if not self.named:
            return None
        flags = self._flags().numpy()
        if flags.all():
            return None
        item, name, _ = self.named[int((~flags).argmax())]
        return item, name


def learning_rate_variables(items: dict) -> list:
    """The learning-rate variables of the Keras optimizers among `items` (a learning-rate schedule has none).
    A checkpoint holds them like any other variable; `CheckpointKeeper(configured=…)` puts this run's
    values back after a restore, so that a run resumed with another learning rate uses it."""
    rates = []
    for obj in items.values():
        if isinstance(obj, keras.optimizers.Optimizer):
            rate = obj.learning_rate
            if isinstance(rate, keras.Variable):
                rates.append(rate)
    return rates


# --- a CheckpointManager that falls back --------------------------------------------------------------

def what_is_kept(latest_checkpoint: str | None) -> str:
    """The sentence a stop on a non-finite state ends with: which checkpoint a re-run resumes from."""
    if latest_checkpoint:
        return f"the latest checkpoint stays {latest_checkpoint}, and a re-run resumes from it"
    return "no checkpoint was written, and a re-run starts over"


class CheckpointKeeper:
    """A `tf.train.CheckpointManager` whose restore takes the newest checkpoint that reads back whole (and
    finite, with `finite`): a truncated or corrupt one (a crash while writing, a full disk) is skipped
    with a warning naming its files, and left out of the directory's list of checkpoints.

    Args:
      checkpoint: the `tf.train.Checkpoint`.
      directory: where the checkpoints are.
      max_to_keep: how many to keep; 2 or more leaves something to fall back to.
      finite: a `FiniteCheck` of the checkpointed state: a restored checkpoint holding NaN / Inf (written
        before saves were checked) is skipped like an unreadable one.
      configured: variables (Keras or TF) whose values are this run's settings, not state: the learning
        rates (`learning_rate_variables`). A restore puts their values back, so that a run re-started with
        a saner learning rate after a divergence uses it.
      warn: where the warnings go (absl's `logging.warning`).
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, *, max_to_keep: int,
                 finite: FiniteCheck | None = None, configured=(), warn=logging.warning):
        self.checkpoint, self.directory, self.max_to_keep = checkpoint, directory, max_to_keep
        self.finite, self.configured, self.warn = finite, list(configured), warn
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest_checkpoint(self) -> str | None:
        return self.manager.latest_checkpoint

    @property
    def checkpoints(self) -> list[str]:
        return list(self.manager.checkpoints)

    def save(self, checkpoint_number: int) -> str:
        return self.manager.save(checkpoint_number=checkpoint_number)

    def restore_latest(self) -> str | None:
        """Restores the newest usable checkpoint and returns its path (None: there is none, nothing restored).

        Raises:
          ValueError: the newest readable checkpoint was written for another model (`restore_checkpoint`).
          RuntimeError: there are checkpoints, and none reads back whole and finite.
        """
        settings = [(v, v.numpy()) for v in self.configured]
        candidates = self.checkpoints
        if self.latest_checkpoint and self.latest_checkpoint not in candidates:
            candidates.append(self.latest_checkpoint)
        rejected = []
        for path in reversed(candidates):
            try:
                read_checkpoint(self.checkpoint, path)
            except UnreadableCheckpointError as e:
                rejected.append(path)
                self.warn(f"Checkpoint {path} cannot be read ({e}); falling back to the one before it.")
                continue
            bad = self.finite.first_non_finite() if self.finite is not None else None
            if bad is not None:
                rejected.append(path)
                self.warn(f"Checkpoint {path} holds a non-finite value ({bad[0]}: {bad[1]}); falling back "
                          "to the one before it.")
                continue
            if rejected:
                self.forget(rejected)
                self.warn(f"Resuming from {path}, the newest usable checkpoint in {self.directory}.")
            for variable, value in settings:
                if variable.numpy() != value:
                    logging.info("%s: %s in %s, %s in this run (used)", getattr(variable, "path", variable.name),
                                 variable.numpy(), path, value)
                variable.assign(value)
            return path
        if rejected:
            raise RuntimeError(
                f"No usable checkpoint in {self.directory}: {', '.join(rejected)} cannot be read or hold "
                f"NaN / Inf (warnings above). Delete {self.directory} to start this part over.")
        return None

    def forget(self, paths) -> None:
        """Leaves `paths` out of the directory's list of checkpoints (their files stay until a save of the
        same number replaces them); the newest remaining one becomes the latest."""
        paths = set(paths)
        kept = [p for p in self.checkpoints if p not in paths]
        if len(kept) == len(self.checkpoints):
            return
        state_file = os.path.join(self.directory, "checkpoint")
        if kept:
            from tensorflow.python.checkpoint import checkpoint_management

            # The manager re-reads only checkpoints stamped after `last_preserved_timestamp`: keep the stamps.
            state = tf.train.get_checkpoint_state(self.directory)
            stamps = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
            now = time.time()
            checkpoint_management.update_checkpoint_state_internal(
                self.directory, model_checkpoint_path=kept[-1], all_model_checkpoint_paths=kept,
                all_model_checkpoint_timestamps=[stamps.get(p, now) for p in kept],
                last_preserved_timestamp=min(state.last_preserved_timestamp, now - 1.0), save_relative_paths=True)
        elif os.path.exists(state_file):
            os.remove(state_file)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep)

    def forget_after(self, number: int) -> None:
        """Leaves out the checkpoints numbered above `number` (written after the state a resume fell back to)."""
        self.forget([p for p in self.checkpoints if int(p.rsplit("-", 1)[-1]) > number])
