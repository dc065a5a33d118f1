"""Shared fixtures for the decoder tests: tiny configurations and random encoder features."""
import keras
import pytest
import tensorflow as tf

from capnas_tf.decoders import get_decoder

VOCAB = 13
MAX_LEN = 6
GRID = (3, 3, 8)  # h, w, C of the encoder grid
BATCH = 2

# Small enough for float64 finite differences, two Transformer layers to exercise per-layer caches, and
# counting attention (the retrain's transformer has it), so every decoder test covers it.
TINY = {
    "lstm": {"embedding_dim": 8, "units": 12, "dropout": 0.0},
    "transformer": {
        "model_dim": 8, "num_layers": 2, "num_heads": 2, "intermediate_dim": 16, "dropout": 0.0, "count_heads": 2
    },
}
DECODER_NAMES = sorted(TINY)


def random_features(batch=BATCH, grid=GRID, dtype=tf.float32, seed=0):
    """(grid [B, h, w, C], pooled [B, C]) as an encoder would return them."""
    g = tf.random.stateless_normal([batch, *grid], seed=[seed, 1], dtype=dtype)
    return g, tf.reduce_mean(g, axis=[1, 2])


def random_prefix(batch=BATCH, length=MAX_LEN, seed=0):
    """int32 [B, T] starting with <start>=1, other ids drawn from the non-reserved words."""
    words = tf.random.stateless_uniform(
        [batch, length - 1], seed=[seed, 2], minval=3, maxval=VOCAB, dtype=tf.int32
    )
    return tf.concat([tf.ones([batch, 1], tf.int32), words], axis=1)


def make_decoder(name, *, features=None, seed=0, **overrides):
    """A built tiny decoder with deterministic weights."""
    keras.utils.set_random_seed(seed)
    decoder = get_decoder(name, vocab_size=VOCAB, max_len=MAX_LEN, **{**TINY[name], **overrides})
    features = random_features() if features is None else features
    decoder(features, random_prefix(batch=features[1].shape[0]))
    return decoder


@pytest.fixture
def restore_dtype_policy():
    """Puts the global dtype policy back, whatever the test did to it."""
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
