"""A tiny retrained captioner shared by the retrain, evaluate and export tests (built once per session).

capnas_shapes TINY config (16×16 images, 24 training images), DARTS_V2 with C = 4 and 2 cells, the
default decoder, one epoch of 3 steps, the default beam search of width 3, BLEU + CIDEr only (no METEOR JVM).
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile

import numpy as np

from capnas_tf.config import RetrainConfig
from capnas_tf.data import shapes_tfds
from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data

TINY_RETRAIN = RetrainConfig(genotype="DARTS_V2", channels=4, num_cells=2, epochs=1, steps_per_epoch=3, batch_size=8,
                             final_metrics=("BLEU", "CIDEr"), log_every=1, export_saved_model=True,
                             export_onnx=True)


def _temp_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tfds_dir() -> str:
    path = _temp_dir("capnas-tfds-")
    shapes_tfds.prepare_capnas_shapes(shapes_tfds.TINY_SHAPES_CONFIG, data_dir=path)
    return path


def tiny_data_config(**overrides) -> DataConfig:
    return DataConfig(dataset="capnas_shapes", data_dir=tfds_dir(), image_size=16,
                      shapes=shapes_tfds.TINY_SHAPES_CONFIG, batch_size=8, min_word_count=1, **overrides)


def tiny_data(workdir: str | None = None):
    return load_caption_data(tiny_data_config(), workdir)


@dataclasses.dataclass
class Retrained:
    workdir: str
    data: object
    result: object
    log: list


@functools.cache
def retrained() -> Retrained:
    """One retrain of `TINY_RETRAIN` with both exports, in a temp workdir."""
    from capnas_tf.config import RunConfig
    from capnas_tf.retrain import retrain_job

    workdir = _temp_dir("capnas-retrain-")
    data = tiny_data(workdir)
    lines: list = []
    result = retrain_job(RunConfig(workdir=workdir), TINY_RETRAIN, data, log=lines.append)
    return Retrained(workdir, data, result, lines)


def copy_of_retrained(workdir: str) -> None:
    """Copies `retrained()`'s workdir, exports left out, into `workdir`: one finished epoch of `TINY_RETRAIN`,
    the model's and the blind baseline's, checkpointed, for a test that re-runs a retrain on it."""
    shutil.copytree(retrained().workdir, workdir, ignore=shutil.ignore_patterns("export"), dirs_exist_ok=True)


def sample_test_images(data, split: str = "test", count: int = 5) -> tuple[np.ndarray, list]:
    from capnas_tf.evaluation import first_images

    return first_images(data, split, count)
