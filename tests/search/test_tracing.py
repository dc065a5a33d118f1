"""The search step is traced once: an epoch of captions of different real lengths (padded to L by the
pipeline) must not retrace the loop's step functions (a retrace of the nested-tape step costs
minutes on a CPU)."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import SearchConfig, SupernetConfig
from capnas_tf.data import shapes_tfds
from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.jobs import search_streams
from capnas_tf.search import loop
from capnas_tf.search.captioning import PAD_ID
from capnas_tf.search.models import build_search_models
from capnas_tf.search.strategies import DartsStrategy, ThreeStageStrategy
from tests.search.toy_models import toy_search_models

L, BATCH, STEPS_PER_EPOCH = 16, 4, 4


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shapes_tracing")
    config = DataConfig(dataset="capnas_shapes", data_dir=str(root / "tfds"), image_size=16,
                        shapes=shapes_tfds.TINY_SHAPES_CONFIG, max_caption_len=L, min_word_count=1,
                        batch_size=BATCH, seed=0)
    return load_caption_data(config, str(root / "work"))


def _real_lengths(streams, steps):
    lengths = set()
    for batches in streams.take(steps):
        for split in ("train", "val"):
            lengths.update(np.sum(batches[split]["tokens"].numpy() != PAD_ID, axis=1).tolist())
    return lengths


class TinyDecoder(keras.layers.Layer):
    """F(features, tokens) -> logits [B, T, V] without a recurrence: the cheapest decoder that keeps the
    step's inputs and variables as the search has them (the trace count depends on those, not on F)."""

    def __init__(self, vocab_size, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(vocab_size, 8)
        self.image = keras.layers.Dense(8)
        self.out = keras.layers.Dense(vocab_size)

    def call(self, features, tokens, training=False):
        _, pooled = features  # (B, C)
        return self.out(tf.tanh(self.embed(tokens) + self.image(pooled)[:, None, :]))  # (B, T, V)


def test_search_step_is_traced_once_over_an_epoch_of_variable_length_captions(tiny_data):
    """The loop's step function (`loop.make_step_function`, as `run_search` builds it), fed an epoch of
    the real pipeline's batches the way `run_search` feeds them. Toy models, a recurrence-free decoder
    and the first-order DARTS strategy keep the trace short; the slow test below runs the three-stage
    step through `run_search` itself."""
    streams = search_streams(tiny_data, BATCH)
    assert len(_real_lengths(streams, STEPS_PER_EPOCH)) > 1, "the test needs captions of different real lengths"
    models = toy_search_models(len(tiny_data.vocab), L)
    decoder = TinyDecoder(len(tiny_data.vocab))
    decoder(models.encoder(tf.zeros([1, 16, 16, 3])), tf.ones([1, L - 1], tf.int32))
    models = dataclasses.replace(models, decoder=decoder)
    strategy = DartsStrategy(models, SearchConfig(strategy="darts", darts_order=1), max_caption_len=L)
    dist = tf.distribute.get_strategy()
    step = loop.make_step_function(strategy, dist, update_architecture=True, jit_compile=False)
    batches = iter(dist.experimental_distribute_dataset(streams))
    for _ in range(STEPS_PER_EPOCH):
        metrics = step(next(batches))
    assert np.isfinite(float(metrics["darts/val_loss"]))
    assert step.experimental_get_tracing_count() == 1


@pytest.mark.slow  # the tiny supernet's three-stage steps: ~3-4 minutes of tracing on 2 busy cores
def test_run_search_traces_each_step_function_once_and_another_shape_would_retrace(tiny_data, tmp_path,
                                                                                    monkeypatch):
    """The whole loop on a tiny supernet: the warm-up step and the search step are each traced once over
    an epoch; the same step called with captions of another padded length is traced again (so the
    counter can fail)."""
    config = SearchConfig(epochs=2, warmup_epochs=1, steps_per_epoch=STEPS_PER_EPOCH, log_every=100,
                          checkpoint_every=0, supernet=SupernetConfig(
                              channels=4, num_cells=2, num_nodes=2, primitives=("none", "skip_connect", "avg_pool_3x3")))
    streams = search_streams(tiny_data, BATCH)
    assert len(_real_lengths(streams, 2 * STEPS_PER_EPOCH)) > 1

    step_functions = []
    make_step_function = loop.make_step_function

    def recording_make_step_function(*args, **kwargs):
        step_functions.append(make_step_function(*args, **kwargs))
        return step_functions[-1]

    monkeypatch.setattr(loop, "make_step_function", recording_make_step_function)
    models = build_search_models(config, vocab_size=len(tiny_data.vocab), max_caption_len=L, image_size=16)
    strategy = ThreeStageStrategy(models, config, max_caption_len=L)
    loop.run_search(strategy, streams, str(tmp_path), config=config, steps_per_epoch=STEPS_PER_EPOCH,
                    primitives=models.encoder.primitives, num_nodes=models.encoder.num_nodes,
                    log=lambda line: None)

    assert len(step_functions) == 2  # the search step and the warm-up step
    assert [f.experimental_get_tracing_count() for f in step_functions] == [1, 1]
    warmup_step = step_functions[1]
    batches = next(iter(streams))
    warmup_step(dict(batches, train=dict(batches["train"], tokens=batches["train"]["tokens"][:, :L - 2])))
    assert warmup_step.experimental_get_tracing_count() == 2
