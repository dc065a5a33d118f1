"""The search loop: drives any `SearchStrategy` over the three streams D_tr, U, D_val, and owns the
run's outputs (genotype.json, A's history, TensorBoard, checkpoints, resume).

The loop is thin on purpose: the math lives in `hypergradient.py` and `strategies.py`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from capnas_tf.checkpointing import (CheckpointKeeper, FiniteCheck, learning_rate_variables, model_state,
                                    named_variables, what_is_kept)
from capnas_tf.distribute import check_jit_compile, check_workers_agree, distribute_dataset
from capnas_tf.io_utils import atomic_write_text
from capnas_tf.search.captioning import SearchModels
from capnas_tf.search.strategies import SearchStrategy, get_strategy
from capnas_tf.search_space.genotypes import softmax_np

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig

STAGE_NAMES = {"stage1": "Stage I", "stage2": "Stage II", "stage3": "Stage III", "arch": "architecture",
               "darts": "DARTS"}


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm became NaN or Inf; the run stops without writing anything over the
    last good checkpoint and genotype."""


class NonFiniteStateError(NonFiniteLossError, FloatingPointError):
    """A variable of the search's state (E, F, W, A, an optimizer's slots, BatchNorm statistics) holds
    NaN or Inf after an update; nothing is written, the last good checkpoint stays the latest."""


# The parts of the checkpointed state, by `SearchStrategy.checkpoint_items` name.
SEARCH_PARTS = {"encoder": "supernet E", "decoder": "decoder F", "student": "student W",
                "weight_optimizer": "optimizer of E, F", "arch_optimizer": "optimizer of A",
                "student_optimizer": "optimizer of W", "controller": "controller",
                "controller_optimizer": "optimizer of the controller"}


def search_part(item: str, name: str) -> str:
    """Which model a checkpointed variable belongs to, from its checkpoint item and path: A lives in the
    supernet encoder as its `alpha_normal` / `alpha_reduce` variables."""
    if item == "encoder" and name.rsplit("/", 1)[-1].startswith("alpha_"):
        return "architecture A"
    return SEARCH_PARTS.get(item, item)


@dataclasses.dataclass
class SearchResult:
    genotype: object
    genotype_path: str
    steps: int
    final_metrics: dict
    strategy: object = None  # the searched state (models, A), e.g. to score other genotypes on its shared weights


def arch_entropy(alphas) -> float:
    """Mean entropy (nats) of softmax(A) over edges; log K at uniform, 0 when one-hot."""
    ps = [softmax_np(np.asarray(a, np.float64)) for a in alphas]
    return float(np.mean([-(p * np.log(p + 1e-12)).sum(-1).mean() for p in ps]))


def _reduce_metrics(dist: tf.distribute.Strategy, per_replica: dict) -> dict:
    """Losses come back as each replica's part of the global mean (local sum / global count), so they
    add up; norms are computed from all-reduced gradients and are the same on every replica."""
    return {k: dist.reduce(tf.distribute.ReduceOp.SUM if "loss" in k else tf.distribute.ReduceOp.MEAN,
                           v, axis=None)
            for k, v in per_replica.items()}


def make_step_function(strategy: SearchStrategy, dist: tf.distribute.Strategy, *,
                       update_architecture: bool, jit_compile: bool):
    """One traced search step over a (distributed) batch of each stream."""
    check_jit_compile(dist, jit_compile)

    def replica_step(batches):
        return strategy.step(batches, update_architecture=update_architecture)

    # AutoGraph off: the library's loops are explicit `tf.while_loop`s, and converting its functions was
    # a third of the trace time of a nested-tape step (docs/performance.md).
    @tf.function(jit_compile=jit_compile, autograph=False)
    def step(batches):
        return _reduce_metrics(dist, dist.run(replica_step, args=(batches,)))

    return step


def check_finite(metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            stage = STAGE_NAMES.get(name.split("/")[0], name.split("/")[0])
            raise NonFiniteLossError(
                f"{stage}: {name} is {value} at step {step}. The run stops here; the last good "
                f"checkpoint and genotype.json in the workdir are untouched.")


def progress_line(step: int, total: int, epoch: int, metrics: dict, rate: float, width: int = 20) -> str:
    done = int(width * step / max(total, 1))
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    return f"[{'#' * done}{'.' * (width - done)}] step {step}/{total} epoch {epoch} {shown} ({rate:.2f} steps/s)"


class SearchRun:
    """Outputs and resume state of one search in `workdir`."""

    def __init__(self, workdir: str, strategy: SearchStrategy, *, primitives, num_nodes: int,
                 max_skip_connect):
        self.workdir = workdir
        self.strategy = strategy
        self.primitives = tuple(primitives)
        self.num_nodes = num_nodes
        self.max_skip_connect = max_skip_connect
        os.makedirs(workdir, exist_ok=True)
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="search_step")
        # A Keras model given to a tf.train.Checkpoint as it is loses the variables of sublayers kept
        # in lists (see `model_state`), so any model a strategy lists goes in as all its variables.
        strategy_items = strategy.checkpoint_items()
        items = {name: model_state(obj) if isinstance(obj, keras.layers.Layer) else obj
                 for name, obj in strategy_items.items()}
        self.checkpoint = tf.train.Checkpoint(step=self.step_var, **items)
        self.finite = FiniteCheck(named_variables(strategy_items))
        # Two kept: a resume falls back to the older one if the newest cannot be read. The learning rates
        # are this run's, not the checkpoint's: a re-run after a divergence at a lower --weight_lr uses it.
        self.manager = CheckpointKeeper(self.checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=2,
                                        finite=self.finite, configured=learning_rate_variables(strategy_items))
        self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        self.genotype_path = os.path.join(workdir, "genotype.json")
        self.history_path = os.path.join(workdir, "alpha_history.jsonl")

    def restore(self, log=print) -> int:
        """Restores the newest checkpoint that reads back whole and finite; returns its step (0: none)."""
        path = self.manager.restore_latest()
        if path:
            log(f"Resuming from {path} at step {int(self.step_var)}")
        return int(self.step_var)

    def check_state(self, step: int) -> None:
        """Raises `NonFiniteStateError` if any variable of the checkpointed state is NaN or Inf after `step`;
        called before anything (checkpoint, genotype.json) is written."""
        bad = self.finite.first_non_finite()
        if bad is None:
            return
        item, name = bad
        kept = what_is_kept(self.manager.latest_checkpoint)
        raise NonFiniteStateError(
            f"{search_part(item, name)}: variable {name} is not finite (NaN or Inf) after step {step}; the "
            f"update diverged (lower --weight_lr / --student_lr / --arch_lr, or set --grad_clip). The run stops "
            f"here: nothing was written, {kept}; genotype.json is untouched.")

    def alphas(self):
        return [a.numpy() for a in self.strategy.A_values()]

    def genotype(self):
        return self.strategy.derive_genotype(primitives=self.primitives, num_nodes=self.num_nodes,
                                             max_skip_connect=self.max_skip_connect)

    def write_scalars(self, step: int, metrics: dict) -> None:
        with self.writer.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
            tf.summary.scalar("arch/entropy", arch_entropy(self.alphas()))

    def end_of_epoch(self, step: int, epoch: int, validation_score=None, log=print) -> None:
        """genotype.json (atomic), one line of A's history (with the epoch's mean cosine of successive A
        gradients, null without A steps), pictures, the validation caption score of the genotype (if
        `validation_score` is given), and a checkpoint."""
        from capnas_tf.search_space import plots

        self.check_state(step)
        genotype = self.genotype()
        genotype.save(self.genotype_path)
        if validation_score is not None:
            scores = validation_score(genotype)
            log(f"epoch {epoch}: validation captions of the genotype on shared weights: "
                + " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
            with self.writer.as_default(step=step):
                for name, value in scores.items():
                    tf.summary.scalar(name, value)
        alpha_normal, alpha_reduce = self.alphas()
        record = {"epoch": epoch, "step": step, "alpha_normal": alpha_normal.tolist(),
                  "alpha_reduce": alpha_reduce.tolist(), "genotype": json.loads(genotype.to_json()),
                  "successive_cosine": self.strategy.successive_cosines.take_mean()}
        lines = []
        if os.path.exists(self.history_path):
            with open(self.history_path) as f:
                lines = [ln for ln in f if json.loads(ln)["step"] < step]
        atomic_write_text(self.history_path, "".join(lines) + json.dumps(record) + "\n")
        cell_png = os.path.join(self.workdir, "genotype.png")
        heat_png = os.path.join(self.workdir, "alpha_heatmap.png")
        plots.render_genotype(genotype, cell_png)
        plots.render_alpha_heatmap(alpha_normal, alpha_reduce, self.primitives, heat_png)
        with self.writer.as_default(step=step):
            for name, path in (("genotype", cell_png), ("alpha_heatmap", heat_png)):
                image = tf.image.decode_png(tf.io.read_file(path), channels=3)[tf.newaxis]
                tf.summary.image(name, image)
        self.writer.flush()
        self.save_checkpoint(step)

    def save_checkpoint(self, step: int) -> None:
        self.check_state(step)
        self.step_var.assign(step)
        self.manager.save(checkpoint_number=step)


def run_search(strategy: SearchStrategy, streams: tf.data.Dataset, workdir: str, *, config: SearchConfig,
               steps_per_epoch: int, dist: tf.distribute.Strategy | None = None,
               primitives, num_nodes: int, validation_score=None, log=print) -> SearchResult:
    """Runs (or resumes) the search to `config.epochs` epochs.

    Args:
      strategy: the search strategy, built under `dist.scope()`.
      streams: a dataset of `{"train", "unlabeled", "val"}` batches, repeated, deterministic for a seed;
        the loop skips the batches already consumed when it resumes.
      steps_per_epoch: search steps per epoch.
      validation_score: optional genotype → {name: caption score}, run after each epoch
        (`validation.make_validation_scorer`).
    """
    dist = dist or tf.distribute.get_strategy()
    run = SearchRun(workdir, strategy, primitives=primitives, num_nodes=num_nodes,
                    max_skip_connect=config.supernet.max_skip_connect)
    start = run.restore(log)
    check_workers_agree(dist, start, "the step the search resumes from")
    total = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    strategy.begin_search(total_steps=total, warmup_steps=warmup_steps)
    search_step = make_step_function(strategy, dist, update_architecture=True, jit_compile=config.xla)
    warmup_step = make_step_function(strategy, dist, update_architecture=False, jit_compile=config.xla)
    batches = iter(distribute_dataset(dist, streams.skip(start)))

    metrics, t0, timed_from = {}, time.perf_counter(), start
    for step in range(start, total):
        step_fn = warmup_step if step < warmup_steps else search_step
        metrics = {k: float(v) for k, v in step_fn(next(batches)).items()}
        check_finite(metrics, step + 1)
        done = step + 1
        if done % config.log_every == 0 or done == total:
            rate = (done - timed_from) / max(time.perf_counter() - t0, 1e-9)
            log(progress_line(done, total, done // steps_per_epoch, metrics, rate))
            run.write_scalars(done, metrics)
        if done % steps_per_epoch == 0:
            run.end_of_epoch(done, done // steps_per_epoch, validation_score, log)
        elif config.checkpoint_every and done % config.checkpoint_every == 0:
            run.save_checkpoint(done)
    if start >= total:
        log(f"Search already complete in {workdir} ({total} steps); re-deriving the genotype.")
    run.check_state(max(start, total))
    genotype = run.genotype()
    genotype.save(run.genotype_path)
    return SearchResult(genotype=genotype, genotype_path=run.genotype_path, steps=total,
                        final_metrics=metrics, strategy=strategy)
