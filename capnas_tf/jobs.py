"""The jobs behind `python -m capnas_tf.train --mode=…`: each takes typed configs and a workdir.

    search    data → three-stage (or baseline) search → genotype.json
    retrain   genotype → discrete captioner trained from scratch → metrics.json → exports
    pipeline  search, then retrain the genotype it found
"""
from __future__ import annotations

import contextlib
import dataclasses
import os

import tensorflow as tf

from capnas_tf.config import RetrainConfig, RunConfig, SearchConfig
from capnas_tf.distribute import (check_global_batch, collective_error_message, configure_runtime,
                                  get_distribution_strategy, is_chief, num_workers, worker_workdir)
from capnas_tf.locking import WorkdirLockedError, workdir_lock  # noqa: F401  (WorkdirLockedError: for callers)
from capnas_tf.search.loop import SearchResult, run_search
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import get_strategy


class WorkerLostError(RuntimeError):
    """A multi-worker run lost a worker (killed, crashed, unreachable): the collectives of the others were
    aborted. Restarting every worker resumes from the chief's last checkpoint."""


def search_streams(data, batch_size: int) -> tf.data.Dataset:
    """One batch each of D_tr, U, D_val per step, as one repeated, deterministic stream."""
    return tf.data.Dataset.zip({
        "train": data.train_dataset(batch_size, repeat=True),
        "unlabeled": data.unlabeled_dataset(batch_size, repeat=True),
        "val": data.validation_dataset(batch_size, repeat=True),
    }).prefetch(tf.data.AUTOTUNE)


def search_job(run: RunConfig, search: SearchConfig, data, *, batch_size: int, dist=None,
               log=print) -> SearchResult:
    """Runs (or resumes) a search in `<run.workdir>/search`; returns the genotype it derived.

    Args:
      dist: the tf.distribute strategy, created before any other TensorFlow op (`run` does); default:
        `get_distribution_strategy(run.distribution)`, which works for the single-process strategies only.
      batch_size: the global batch, split over all replicas.
    """
    warning = configure_runtime(run.seed, run.deterministic)
    if warning:
        log(f"Warning: {warning}")
    dist = dist or get_distribution_strategy(run.distribution)
    check_global_batch(dist, batch_size)
    steps_per_epoch = search.steps_per_epoch or max(1, data.num_train_examples // batch_size)
    with dist.scope():
        models = build_search_models(search, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                     image_size=data.image_size, seed=run.seed)
        strategy = get_strategy(search.strategy)(models, search, max_caption_len=data.max_caption_len)
    workdir = os.path.join(run.workdir, "search")
    log(f"Search: {strategy.describe()}, {search.epochs} epochs × "
        f"{steps_per_epoch} steps, batch {batch_size}, {dist.num_replicas_in_sync} replica(s) → {workdir}")
    validation_score = None
    if search.eval_images:
        from capnas_tf.search.validation import make_validation_scorer

        validation_score = make_validation_scorer(models, data, num_images=search.eval_images,
                                                  batch_size=batch_size, max_caption_len=data.max_caption_len)
    return run_search(strategy, search_streams(data, batch_size), workdir, config=search,
                      steps_per_epoch=steps_per_epoch, dist=dist, primitives=models.encoder.primitives,
                      num_nodes=models.encoder.num_nodes, validation_score=validation_score, log=log)


def load_data(run: RunConfig, data_config, log=print):
    from capnas_tf.data.pipeline import load_caption_data

    data = load_caption_data(data_config, run.workdir, log=log)
    log(f"Data: {data_config.dataset}, {data.num_train_images} training images "
        f"({data.num_train_examples} captions), vocabulary of {len(data.vocab)} → {run.workdir}/vocab.txt")
    return data


def holds_workdir_lock(run: RunConfig, dist=None) -> bool:
    """Whether this process takes the workdir's lock: always, except for the workers of a multi-worker job
    other than the chief (they write a temporary directory of their own: `distribute.worker_workdir`).
    Decided by `dist`'s cluster, or without it from TF_CONFIG (`distribute.is_chief`)."""
    return run.distribution != "multi_worker" or is_chief(dist)


def run(mode: str, *, run: RunConfig, data, search: SearchConfig, retrain=None, log=print) -> dict:
    """Runs `mode` and prints the artifacts it wrote. In `pipeline` mode the retrain uses the genotype
    the search derived, whatever `retrain.genotype` says.

    The workdir is this run's alone while it runs (`<workdir>/.lock`, `capnas_tf.locking`).

    Under `--strategy=multi_worker` every worker runs this with the same flags; only the chief writes
    `run.workdir` (and takes its lock), the others write a temporary directory removed at the end
    (`distribute.worker_workdir`).

    Raises:
      WorkdirLockedError: another run holds the workdir (before anything is read or written).
    """
    configure_runtime(run.seed, run.deterministic)  # before TensorFlow's first op (thread pools, seeds)
    # Then the strategy: a multi-worker one configures the collective ops, which must precede any other op.
    dist = get_distribution_strategy(run.distribution)
    lock = workdir_lock(run.workdir) if holds_workdir_lock(run, dist) else contextlib.nullcontext()
    with lock, worker_workdir(run.workdir, dist) as workdir:
        if workdir != run.workdir:
            log(f"Worker {dist.cluster_resolver.task_type} {dist.cluster_resolver.task_id}: the chief writes "
                f"{run.workdir}; this worker writes {workdir} (removed at the end)")
        try:
            return _run(mode, run=dataclasses.replace(run, workdir=workdir), data=data, search=search,
                        retrain=retrain, dist=dist, log=log)
        except tf.errors.OpError as error:
            message = collective_error_message(error) if num_workers(dist) > 1 else None
            if message is None:
                raise
            raise WorkerLostError(message) from error


def _run(mode: str, *, run: RunConfig, data, search: SearchConfig, retrain=None, dist, log=print) -> dict:
    os.makedirs(run.workdir, exist_ok=True)
    caption_data = load_data(run, data, log)
    artifacts = {"vocabulary": os.path.join(run.workdir, "vocab.txt")}
    if mode in ("search", "pipeline"):
        result = search_job(run, search, caption_data, batch_size=data.batch_size, dist=dist, log=log)
        artifacts.update(genotype=result.genotype_path,
                         genotype_diagram=os.path.join(os.path.dirname(result.genotype_path), "genotype.png"),
                         alpha_heatmap=os.path.join(os.path.dirname(result.genotype_path), "alpha_heatmap.png"),
                         alpha_history=os.path.join(os.path.dirname(result.genotype_path), "alpha_history.jsonl"))
        log(f"Derived genotype: {result.genotype}")
    if mode in ("retrain", "pipeline"):
        from capnas_tf.retrain import retrain_job

        retrain = retrain or RetrainConfig()
        if mode == "pipeline":
            retrain = dataclasses.replace(retrain, genotype=artifacts["genotype"])
        result = retrain_job(run, retrain, caption_data, dist=dist, log=log)
        artifacts.update(metrics=result.metrics_path, sample_captions=result.samples_path, **result.exports)
        log(f"Retrained captioner: best validation {result.selection_metric} {result.best_validation_score:.3f} "
            f"(epoch {result.best_epoch}); test metrics in {result.metrics_path}")
    log("Artifacts:\n" + "\n".join(f"  {k:18s} {v}" for k, v in artifacts.items()))
    return artifacts
