"""Fixtures shared by the search tests."""
import pytest

from capnas_tf.data import shapes_tfds
from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data

TINY_CAPTION_LEN = 16


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny capnas_shapes (16×16 images, L = 16), built once per session; tests only read it."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    config = DataConfig(dataset="capnas_shapes", data_dir=str(root / "tfds"), image_size=16,
                        shapes=shapes_tfds.TINY_SHAPES_CONFIG, max_caption_len=TINY_CAPTION_LEN, min_word_count=1,
                        batch_size=4, seed=0)
    return load_caption_data(config, str(root / "work"))


@pytest.fixture(scope="module")
def tiny_models(tiny_data):
    """E, A, F, W of TINY_SEARCH (tests/search/test_search_loop.py), built once per module for the tests
    that construct strategies around them without training them."""
    from capnas_tf.search.models import build_search_models
    from tests.search.test_search_loop import TINY_SEARCH

    return build_search_models(TINY_SEARCH, vocab_size=len(tiny_data.vocab), max_caption_len=TINY_CAPTION_LEN,
                               image_size=16)


@pytest.fixture(scope="session")
def supernet64():
    """(models, batches, A, E, F, W) of a float64 supernet captioner with the real layers
    (tests/search/real_supernet.py), built once per session; tests only read it."""
    from tests.search.real_supernet import build_supernet64

    return build_supernet64()
