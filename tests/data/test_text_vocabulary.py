import os

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.data import text
from capnas_tf.data.text import END_ID, PAD_ID, START_ID, UNK_ID, Vocabulary

TRICKY = [
    "A man's dog, running!",
    "Black-and-white photo of a CAT.",
    "  multiple   spaces\tand\ttabs\nand newlines  ",
    "...",
    "",
    "?!,;:",
    "Café ÉCOLE naïve – dash’s quote “curly”",
    "under_score/slash\\back [brackets] {braces} (parens) <angle> ~tilde~ `tick` @at #hash $ % ^ & * + = |",
    "\u00a0non-breaking\u00a0space\u2003em space",
    "digits 123 and 4.5",
    "ALL CAPS ASCII",
    "\v\fvertical",
]

CAPTIONS = ["a red circle", "a red square", "a blue circle", "A red circle!", "a green star"]


@pytest.fixture
def vocab():
    return Vocabulary.build(CAPTIONS, min_count=2, max_len=6)


def test_python_and_graph_normalisation_agree_exactly():
    in_graph = text.normalize_captions_tf(tf.constant(TRICKY)).numpy()
    for raw, graph in zip(TRICKY, in_graph):
        assert text.normalize_caption(raw) == graph.decode("utf-8"), raw


def test_normalisation_lowercases_strips_punctuation_and_collapses_space():
    assert text.normalize_caption("  A Man's dog,  Black-and-white!! ") == "a mans dog black and white"
    assert text.normalize_caption("?!...") == ""
    assert text.caption_words(" , ") == []


def test_build_keeps_words_seen_min_count_times_most_frequent_first(vocab):
    # a: 5, red: 3, circle: 3, square/blue/green/star: 1
    assert vocab.tokens == ("<pad>", "<start>", "<end>", "<unk>", "a", "circle", "red")
    assert (vocab.token_to_id("<pad>"), vocab.token_to_id("<start>"), vocab.token_to_id("<end>"),
            vocab.token_to_id("<unk>")) == (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert len(Vocabulary.build(CAPTIONS, min_count=1, max_len=6)) == 4 + 7


def test_tokenize_lays_out_start_words_end_pad_and_maps_unknown_words(vocab):
    tokens = vocab.tokenize(tf.constant(["A red square.", ""])).numpy()
    a, red = vocab.token_to_id("a"), vocab.token_to_id("red")
    np.testing.assert_array_equal(tokens, [[START_ID, a, red, UNK_ID, END_ID, PAD_ID],
                                           [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    assert tokens.dtype == np.int32


def test_tokenize_truncates_to_max_len_keeping_end(vocab):
    tokens = vocab.tokenize(tf.constant(["a red circle a red circle a red"])).numpy()[0]
    assert len(tokens) == 6 and tokens[0] == START_ID and tokens[-1] == END_ID
    assert vocab.decode(tokens) == "a red circle a"


def test_tokenize_keeps_leading_dimensions_and_static_shape(vocab):
    captions = tf.constant([["a red circle", "a"], ["red", "circle"], ["", "a a"]])
    tokens = vocab.tokenize(captions)
    assert tokens.shape == (3, 2, 6)
    assert vocab.tokenize(tf.constant("a red")).shape == (6,)
    np.testing.assert_array_equal(tokens[1, 0], vocab.encode("red"))
    spec = tf.function(vocab.tokenize).get_concrete_function(tf.TensorSpec([None, 2], tf.string))
    assert spec.structured_outputs.shape.as_list() == [None, 2, 6]


def test_python_encode_decode_match_graph_tokenize_detokenize(vocab):
    tokens = vocab.tokenize(tf.constant(TRICKY + CAPTIONS)).numpy()
    for raw, row in zip(TRICKY + CAPTIONS, tokens):
        assert list(row) == vocab.encode(raw)
    texts = vocab.detokenize(tokens).numpy()
    assert [t.decode() for t in texts] == [vocab.decode(row) for row in tokens]


def test_detokenize_round_trips_normalised_in_vocabulary_captions():
    full = Vocabulary.build(CAPTIONS, min_count=1, max_len=8)
    captions = ["A red circle!", "a green star", "blue square"]
    decoded = full.detokenize(full.tokenize(tf.constant(captions))).numpy()
    assert [d.decode() for d in decoded] == [text.normalize_caption(c) for c in captions]


def test_detokenize_stops_at_end_skips_start_and_pad_and_reads_unknown_ids(vocab):
    a, red = vocab.token_to_id("a"), vocab.token_to_id("red")
    ids = tf.constant([[START_ID, a, PAD_ID, red, END_ID, a], [a, red, 999, END_ID, END_ID, a]])
    assert [t.decode() for t in vocab.detokenize(ids).numpy()] == ["a red", "a red <unk>"]
    assert vocab.detokenize(tf.constant([a, red], tf.int64)).numpy() == b"a red"
    assert vocab.detokenize(tf.zeros([2, 3, 4], tf.int32)).shape == (2, 3)
    with pytest.raises(TypeError, match="integer"):
        vocab.detokenize(tf.zeros([2, 3]))


def test_tokenize_and_detokenize_inside_dataset_map_equal_eager(vocab):
    captions = TRICKY + CAPTIONS
    eager = vocab.tokenize(tf.constant(captions)).numpy()
    mapped = tf.data.Dataset.from_tensor_slices(captions).map(vocab.tokenize)
    assert mapped.element_spec.shape == (6,)
    np.testing.assert_array_equal(np.stack(list(mapped.as_numpy_iterator())), eager)
    batched = tf.data.Dataset.from_tensor_slices(captions).batch(4).map(vocab.tokenize).unbatch()
    np.testing.assert_array_equal(np.stack(list(batched.as_numpy_iterator())), eager)
    back = tf.data.Dataset.from_tensor_slices(eager).map(vocab.detokenize)
    assert list(back.as_numpy_iterator()) == list(vocab.detokenize(eager).numpy())


def test_save_load_round_trip_is_one_token_per_line_and_atomic(vocab, tmp_path):
    path = str(tmp_path / "sub" / "vocab.txt")
    vocab.save(path)
    with open(path) as f:
        assert f.read().split("\n")[:-1] == list(vocab.tokens)
    assert os.listdir(tmp_path / "sub") == ["vocab.txt"]  # no temp file left behind
    loaded = Vocabulary.load(path, max_len=6)
    assert loaded.tokens == vocab.tokens
    np.testing.assert_array_equal(loaded.tokenize(tf.constant(CAPTIONS)), vocab.tokenize(tf.constant(CAPTIONS)))


@pytest.mark.parametrize("content, message", [
    ("<pad>\n<start>\n<end>\n", "first tokens"),
    ("<pad>\n<start>\n<end>\n<unk>\na\n\nb\n", "line 6"),
    ("<pad>\n<start>\n<end>\n<unk>\na\na\n", "repeats line 5"),
    ("<pad>\n<start>\n<end>\n<unk>\na b\n", "whitespace"),
    ("<pad>\n<start>\n<end>\n<unk>\na", "newline"),
])
def test_load_rejects_bad_files_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        Vocabulary.load(str(path), max_len=6)
    assert str(path) in str(error.value)


def test_load_of_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        Vocabulary.load(str(tmp_path / "nope.txt"), max_len=6)


def test_vocabulary_works_inside_a_saved_model_served_by_plain_tensorflow(vocab, tmp_path):
    class Serving(tf.Module):
        def __init__(self, vocab):
            super().__init__()
            self.vocab = vocab

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, captions):
            return self.vocab.tokenize(captions)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def detokenize(self, ids):
            return self.vocab.detokenize(ids)

    tf.saved_model.save(Serving(vocab), str(tmp_path / "model"))
    restored = tf.saved_model.load(str(tmp_path / "model"))
    captions = tf.constant(CAPTIONS)
    np.testing.assert_array_equal(restored.tokenize(captions), vocab.tokenize(captions))
    ids = vocab.tokenize(captions)
    np.testing.assert_array_equal(restored.detokenize(ids), vocab.detokenize(ids))


def test_constructor_validates_tokens_and_max_len():
    with pytest.raises(ValueError, match="max_len"):
        Vocabulary(text.RESERVED_TOKENS, max_len=1)
    with pytest.raises(ValueError, match="first tokens"):
        Vocabulary(["a", "b"], max_len=4)
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(CAPTIONS, min_count=0)
