"""Fixtures of tests/data (helpers that write tiny datasets live in data_files.py)."""
from __future__ import annotations

import pytest

import capnas_tf  # noqa: F401  (registers capnas_shapes)
from capnas_tf.data import shapes_tfds


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding the tiny capnas_shapes config, prepared once per session."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes_tfds.prepare_capnas_shapes(shapes_tfds.TINY_SHAPES_CONFIG, data_dir=data_dir)
    return data_dir
