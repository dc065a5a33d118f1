"""Greedy decoding and beam search: caches against recomputation, beam search against greedy and
against exhaustive search, end-token handling, and use inside XLA, StatelessScope and SavedModel."""
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.decoders.decoding import beam_search, gnmt_length_penalty, greedy_decode
from capnas_tf.search.stateless import bind
from tests.decoders.conftest import (
    BATCH,
    DECODER_NAMES,
    MAX_LEN,
    make_decoder,
    random_features,
    random_prefix,
)

PAD, START, END = 0, 1, 2


class BigramDecoder:
    """A hand-set decoder: p(w_t | w_{t−1}) = table[w_{t−1}, w_t], independent of the image."""

    def __init__(self, table, max_len=8):
        table = np.asarray(table, np.float64)
        self.log_table = tf.constant(np.log(table / table.sum(-1, keepdims=True)), tf.float32)
        self.vocab_size = table.shape[0]
        self.max_len = max_len

    def initial_cache(self, features):
        return {"steps": tf.zeros([tf.shape(features[1])[0]], tf.int32)}

    def decode_step(self, features, token_ids, index, cache):
        return tf.gather(self.log_table, token_ids), {"steps": cache["steps"] + 1}

    def __call__(self, features, tokens, training=False):
        return tf.gather(self.log_table, tokens)


TINY_P = 1e-6  # pad and start are (almost) never generated
# Greedy takes "a" (0.5) and then wanders (0.34 · 0.34); "b <end>" has probability 0.4 · 0.9 = 0.36.
TRAP = [
    [1, TINY_P, 1, 1, 1],  # after <pad>
    [TINY_P, TINY_P, 0.1, 0.5, 0.4],  # after <start>: a 0.5, b 0.4, <end> 0.1
    [1, TINY_P, 1, 1, 1],  # after <end>
    [TINY_P, TINY_P, 0.33, 0.34, 0.33],  # after a: nearly uniform
    [TINY_P, TINY_P, 0.9, 0.05, 0.05],  # after b: <end> 0.9
]


def _features(batch=1):
    return random_features(batch=batch)


def _log_likelihood(decoder, words):
    """Σ log p(w_t | w_{t−1}) of a word sequence under a BigramDecoder."""
    table = decoder.log_table.numpy()
    previous = [START, *words[:-1]]
    return sum(float(table[p, w]) for p, w in zip(previous, words))


def _exhaustive_best(decoder, max_len, alpha):
    """The sequence (ending at the first <end>, or using every position) with the best s(Y); <start> and
    <pad> are never generated."""
    best, best_score = None, -math.inf
    for words in itertools.product(range(decoder.vocab_size), repeat=max_len):
        words = list(words)
        if END in words:
            words = words[: words.index(END) + 1]
        if PAD in words or START in words:
            continue
        if END in words:
            words = words[: words.index(END) + 1]
        log_lik = _log_likelihood(decoder, words)
        score = log_lik / ((5 + len(words)) / 6) ** alpha
        if score > best_score + 1e-9:
            best, best_score = words, score
    return best + [PAD] * (max_len - len(best)), best


def test_greedy_follows_the_locally_best_word_and_sums_its_log_probabilities():
    decoder = BigramDecoder(TRAP)
    ids, scores = greedy_decode(decoder, _features(), max_len=3)
    np.testing.assert_array_equal(ids, [[3, 3, 3]])
    np.testing.assert_allclose(scores, [math.log(0.5 * 0.34 * 0.34)], rtol=1e-5)


def test_beam_search_finds_the_likelier_caption_greedy_misses():
    decoder = BigramDecoder(TRAP)
    greedy_ids, greedy_scores = greedy_decode(decoder, _features(), max_len=3)
    ids, scores = beam_search(decoder, _features(), beam_width=2, max_len=3)
    np.testing.assert_array_equal(ids, [[4, END, PAD]])
    np.testing.assert_allclose(scores, [math.log(0.4 * 0.9)], rtol=1e-5)
    assert float(scores[0]) > float(greedy_scores[0]) + 1.0


@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0])
def test_a_beam_wide_enough_to_keep_every_prefix_is_exhaustive_search(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    table = rng.dirichlet(np.ones(5) * 0.7, size=5)
    decoder = BigramDecoder(table)
    expected_ids, expected_words = _exhaustive_best(decoder, max_len=3, alpha=alpha)
    ids, scores = beam_search(decoder, _features(), beam_width=25, max_len=3, length_penalty=alpha)
    np.testing.assert_array_equal(ids[0], expected_ids)
    np.testing.assert_allclose(scores[0], _log_likelihood(decoder, expected_words), rtol=1e-5)


def test_length_penalty_can_prefer_the_longer_caption():
    # "<end>" at once: p = 0.5, s = log 0.5 = −0.69 for any α (lp(1) = 1).
    # "a <end>": p = 0.45 · 0.9 = 0.405; s = −0.90 at α = 0, −0.90 / (7/6)³ = −0.57 at α = 3.
    table = [[1] * 4, [TINY_P, TINY_P, 0.5, 0.45], [1] * 4, [TINY_P, TINY_P, 0.9, 0.1]]
    decoder = BigramDecoder(table)
    short, _ = beam_search(decoder, _features(), beam_width=4, max_len=3, length_penalty=0.0)
    long, _ = beam_search(decoder, _features(), beam_width=4, max_len=3, length_penalty=3.0)
    np.testing.assert_array_equal(short, [[END, PAD, PAD]])
    np.testing.assert_array_equal(long, [[3, END, PAD]])


def test_gnmt_length_penalty_formula():
    np.testing.assert_allclose(gnmt_length_penalty(tf.constant([1, 7]), 0.6), [1.0, 2.0**0.6], rtol=1e-6)


def _assert_pad_after_end(ids):
    for row in ids.numpy():
        row = row.tolist()
        if END in row:
            assert set(row[row.index(END) + 1 :]) <= {PAD}


def test_finished_beams_stay_finished_and_are_padded():
    rng = np.random.default_rng(5)
    table = rng.dirichlet(np.ones(6), size=6)
    table[:, END] += 0.5  # <end> likely, so captions finish at different steps
    decoder = BigramDecoder(table)
    features = _features(batch=4)
    for width in (1, 3, 6):
        ids, _ = beam_search(decoder, features, beam_width=width, max_len=6)
        _assert_pad_after_end(ids)
        assert all(END in row for row in ids.numpy().tolist())


# every decoder at its test defaults, and the transformer with each memory option that changes what M holds
@pytest.mark.parametrize("name, option", [(name, {}) for name in DECODER_NAMES]
                         + [("transformer", {"memory_layers": 1}), ("transformer", {"position_dims": 4})])
def test_decode_steps_reproduce_the_full_call_logits(name, option):
    decoder = make_decoder(name, **option)
    features, tokens = random_features(), random_prefix()
    full = decoder(features, tokens)
    cache = decoder.initial_cache(features)
    for t in range(MAX_LEN):
        logits, cache = decoder.decode_step(features, tokens[:, t], t, cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_cached_greedy_equals_full_recompute_greedy(name):
    decoder = make_decoder(name)
    features = random_features(batch=4, seed=3)
    ids, scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    ref_ids, ref_scores = greedy_decode(decoder, features, max_len=MAX_LEN, use_cache=False)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    _assert_pad_after_end(ids)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_greedy_scores_are_the_log_likelihood_of_the_caption_up_to_end(name):
    decoder = make_decoder(name)
    features = random_features(batch=3, seed=4)
    ids, scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    prefix = tf.concat([tf.fill([3, 1], START), ids[:, :-1]], axis=1)
    log_probs = tf.nn.log_softmax(decoder(features, prefix)).numpy()
    for b, row in enumerate(ids.numpy().tolist()):
        length = row.index(END) + 1 if END in row else MAX_LEN
        expected = sum(log_probs[b, t, row[t]] for t in range(length))
        np.testing.assert_allclose(scores[b], expected, rtol=1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_beam_width_one_is_greedy(name):
    decoder = make_decoder(name)
    features = random_features(batch=3, seed=5)
    ids, scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    beam_ids, beam_scores = beam_search(decoder, features, beam_width=1, max_len=MAX_LEN)
    np.testing.assert_array_equal(beam_ids, ids)
    np.testing.assert_allclose(beam_scores, scores, rtol=1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_wider_beams_never_score_below_greedy(name):
    decoder = make_decoder(name)
    features = random_features(batch=3, seed=6)
    _, greedy_scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    _, beam_scores = beam_search(decoder, features, beam_width=4, max_len=MAX_LEN)
    assert np.all(beam_scores.numpy() >= greedy_scores.numpy() - 1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_decoding_compiles_with_xla(name):
    decoder = make_decoder(name, **({"num_layers": 1} if name == "transformer" else {}))
    features = random_features(batch=3, seed=7)

    @tf.function(jit_compile=True)
    def decode(grid, pooled):
        return greedy_decode(decoder, (grid, pooled), max_len=MAX_LEN), beam_search(
            decoder, (grid, pooled), beam_width=2, max_len=MAX_LEN
        )

    (ids, scores), (beam_ids, beam_scores) = decode(*features)
    ref_ids, ref_scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    ref_beam_ids, ref_beam_scores = beam_search(decoder, features, beam_width=2, max_len=MAX_LEN)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(beam_ids, ref_beam_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    np.testing.assert_allclose(beam_scores, ref_beam_scores, rtol=1e-5)


def test_greedy_decoding_reads_bound_weights_inside_a_stateless_scope():
    """Pseudo-captions from unrolled weights F' (search/stateless.bind) without assigning them."""
    decoder = make_decoder("transformer")
    features = random_features(batch=4, seed=8)
    original = [v.numpy() for v in decoder.trainable_variables]
    rng = np.random.default_rng(0)
    shifted = [tf.constant(w + 0.3 * rng.normal(size=w.shape), w.dtype) for w in original]
    with bind((decoder.trainable_variables, shifted)):
        bound_ids, _ = tf.function(lambda g, p: greedy_decode(decoder, (g, p), max_len=MAX_LEN))(*features)
    for variable, value in zip(decoder.trainable_variables, original):
        np.testing.assert_array_equal(variable.numpy(), value)  # nothing was assigned
    decoder.set_weights([s.numpy() for s in shifted] + decoder.get_weights()[len(shifted):])
    expected_ids, _ = greedy_decode(decoder, features, max_len=MAX_LEN)
    np.testing.assert_array_equal(bound_ids, expected_ids)


def test_greedy_decoding_runs_from_a_saved_model(tmp_path):
    decoder = make_decoder("transformer")
    features = random_features(batch=BATCH, seed=9)
    module = tf.Module()
    module.decoder = decoder
    module.caption = tf.function(
        lambda grid, pooled: greedy_decode(decoder, (grid, pooled), max_len=MAX_LEN),
        input_signature=[
            tf.TensorSpec([None, *features[0].shape[1:]], tf.float32),
            tf.TensorSpec([None, features[1].shape[1]], tf.float32),
        ],
    )
    tf.saved_model.save(module, str(tmp_path / "captioner"))
    restored = tf.saved_model.load(str(tmp_path / "captioner"))
    ids, scores = restored.caption(*features)
    ref_ids, ref_scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_decoding_longer_than_the_decoder_positions_is_rejected():
    decoder = make_decoder("transformer")
    with pytest.raises(ValueError, match=f"max_len={MAX_LEN + 1} exceeds the decoder's max_len={MAX_LEN}"):
        greedy_decode(decoder, random_features(), max_len=MAX_LEN + 1)
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        beam_search(decoder, random_features(), beam_width=0, max_len=MAX_LEN)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_start_and_pad_are_never_generated_even_where_the_decoder_prefers_them(name):
    """A decoder whose output bias puts <pad> first and <start> second (an untrained or diverging teacher can):
    greedy and beam captions hold real words until <end>, and the greedy score is log p of those words."""
    decoder = make_decoder(name)
    kernel, bias = decoder.vocab_projection.get_weights()
    bias[PAD], bias[START] = 60.0, 50.0
    decoder.vocab_projection.set_weights([kernel, bias])
    features = random_features()
    greedy_ids, greedy_scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    beam_ids, _ = beam_search(decoder, features, beam_width=3, max_len=MAX_LEN)
    for ids in (greedy_ids.numpy(), beam_ids.numpy()):
        for row in ids:
            words = row[: list(row).index(END)] if END in row else row
            assert not np.isin(words, [PAD, START]).any(), row
    prefix = tf.concat([tf.fill([BATCH, 1], START), greedy_ids[:, :-1]], axis=1)
    log_probs = tf.nn.log_softmax(decoder(features, prefix), axis=-1).numpy()
    expected = [sum(log_probs[b, t, w] for t, w in enumerate(row) if w != PAD) for b, row in enumerate(greedy_ids.numpy())]
    np.testing.assert_allclose(greedy_scores.numpy(), expected, rtol=1e-4)
