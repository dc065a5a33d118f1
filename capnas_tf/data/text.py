"""Caption text: normalisation, the vocabulary, and tokenisation in stock TensorFlow ops.

Normalisation (identical in Python and in the graph, and tested to be):
  1. ASCII letters are lowercased; other characters keep their case (TensorFlow's default
     `tf.strings.lower` is ASCII-only, and matching it exactly matters more than lowercasing "É").
  2. Apostrophes (' and ’) are deleted ("man's" -> "mans", as in the Karpathy tokens).
  3. Every other ASCII punctuation character becomes a space ("black-and-white" -> "black and white").
  4. Runs of ASCII whitespace become one space; leading and trailing spaces are removed.
Words are then the space-separated pieces.

Token ids: `<pad>`=0, `<start>`=1, `<end>`=2, `<unk>`=3, then the words of the training captions
seen at least `min_count` times, most frequent first (ties alphabetical, so the vocabulary is a
pure function of the captions). A tokenised caption has fixed length L = `max_len`:
`<start> w1 … wn <end> <pad> …`, with at most L − 2 words kept.

`Vocabulary` is a `tf.Module` that owns its two `tf.lookup.StaticHashTable`s, so `tokenize` and
`detokenize` work eagerly, inside `Dataset.map`, and inside a SavedModel served by plain TensorFlow
(no tensorflow_text).
"""
from __future__ import annotations

import collections
import os
import re
import string
from typing import Iterable, Sequence

import tensorflow as tf

from capnas_tf import io_utils

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
RESERVED_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

_APOSTROPHES = "'\u2019"
_OTHER_PUNCTUATION = "".join(c for c in string.punctuation if c not in _APOSTROPHES)
# The same three patterns feed Python's `re` and TensorFlow's RE2; they use only syntax on
# which the two agree (explicit character classes, no \s or \w whose meaning differs).
_APOSTROPHE_PATTERN = "[" + _APOSTROPHES + "]"
_PUNCTUATION_PATTERN = "[" + re.escape(_OTHER_PUNCTUATION) + "]"
_WHITESPACE_PATTERN = "[ \t\n\r\f\v]+"
_EDGE_SPACE_PATTERN = "^ +| +$"
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def normalize_caption(text: str) -> str:
    """Python normalisation of one caption; equal to `normalize_captions_tf` on every input."""
    text = text.translate(_ASCII_LOWER)
    text = re.sub(_APOSTROPHE_PATTERN, "", text)
    text = re.sub(_PUNCTUATION_PATTERN, " ", text)
    text = re.sub(_WHITESPACE_PATTERN, " ", text)
    return re.sub(_EDGE_SPACE_PATTERN, "", text)


def caption_words(text: str) -> list[str]:
    """The words of a caption after normalisation ([] for an empty or punctuation-only caption)."""
    normalized = normalize_caption(text)
    return normalized.split(" ") if normalized else []


def normalize_captions_tf(captions: tf.Tensor) -> tf.Tensor:
    """In-graph normalisation of a string tensor of any shape (stock `tf.strings` ops only)."""
    captions = tf.strings.lower(captions)  # ASCII-only, like _ASCII_LOWER
    captions = tf.strings.regex_replace(captions, _APOSTROPHE_PATTERN, "")
    captions = tf.strings.regex_replace(captions, _PUNCTUATION_PATTERN, " ")
    captions = tf.strings.regex_replace(captions, _WHITESPACE_PATTERN, " ")
    return tf.strings.regex_replace(captions, _EDGE_SPACE_PATTERN, "")


class Vocabulary(tf.Module):
    """Token ↔ id maps for captions of fixed length `max_len` (L).

    Args:
      tokens: the token of each id, starting with `RESERVED_TOKENS`; no duplicates, no empty
        tokens, no whitespace inside a token.
      max_len: L, the length of a tokenised caption including `<start>` and `<end>` (>= 2).

    Example:
      >>> vocab = Vocabulary.build(["A red circle.", "a red square"], min_count=1, max_len=6)
      >>> vocab.tokenize(tf.constant(["a red circle"])).numpy()
      array([[1, 4, 5, 6, 2, 0]], dtype=int32)
      >>> vocab.detokenize([[1, 4, 5, 6, 2, 0]]).numpy()
      array([b'a red circle'], dtype=object)
    """

    def __init__(self, tokens: Sequence[str], max_len: int, name: str = "vocabulary"):
        super().__init__(name=name)
        tokens = list(tokens)
        _check_tokens(tokens, source="Vocabulary(tokens=...)")
        if int(max_len) < 2:
            raise ValueError(f"Vocabulary max_len must be >= 2 (room for <start> and <end>), received {max_len}.")
        self.max_len = int(max_len)
        self._token_list = tuple(tokens)
        self._index = {token: i for i, token in enumerate(tokens)}
        ids = tf.range(len(tokens), dtype=tf.int64)
        keys = tf.constant(tokens, dtype=tf.string)
        self._word_to_id = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, ids), default_value=UNK_ID)
        self._id_to_word = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(ids, keys), default_value=UNK)

    # --- construction and files ----------------------------------------------------------------

    @classmethod
    def build(cls, captions: Iterable[str], *, min_count: int = 5, max_len: int = 20) -> "Vocabulary":
        """The vocabulary of `captions`: reserved tokens, then words seen >= `min_count` times.

        Args:
          captions: raw training captions (normalised here).
          min_count: a word seen fewer times maps to `<unk>`.
          max_len: L of the tokenised captions.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, received {min_count}.")
        counts = collections.Counter(word for caption in captions for word in caption_words(caption))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(RESERVED_TOKENS + tuple(words), max_len=max_len)

    def save(self, path: str) -> None:
        """Writes one token per line (id = line number), atomically (temp file + rename)."""
        io_utils.atomic_write_text(path, "".join(token + "\n" for token in self._token_list))

    @classmethod
    def load(cls, path: str, *, max_len: int) -> "Vocabulary":
        """Reads a file written by `save`; L is not stored in it, so it is passed again."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Vocabulary file {path!r} does not exist.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not text.endswith("\n"):
            raise ValueError(f"Vocabulary file {path!r} does not end with a newline: truncated write?")
        tokens = text[:-1].split("\n")
        _check_tokens(tokens, source=f"vocabulary file {path!r}")
        return cls(tokens, max_len=max_len)

    # --- python-side views ---------------------------------------------------------------------

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._token_list

    @property
    def size(self) -> int:
        """V, the number of tokens including the reserved ones."""
        return len(self._token_list)

    def __len__(self) -> int:
        return len(self._token_list)

    def token_to_id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        return self._token_list[token_id] if 0 <= token_id < len(self._token_list) else UNK

    def encode(self, caption: str) -> list[int]:
        """Python twin of `tokenize` for one caption: L ids."""
        words = caption_words(caption)[: self.max_len - 2]
        ids = [START_ID] + [self.token_to_id(w) for w in words] + [END_ID]
        return ids + [PAD_ID] * (self.max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Python twin of `detokenize` for one id sequence."""
        words = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == END_ID:
                break
            if token_id not in (PAD_ID, START_ID):
                words.append(self.id_to_token(token_id))
        return " ".join(words)

    # --- graph ops -----------------------------------------------------------------------------

    def tokenize(self, captions) -> tf.Tensor:
        """Raw captions `string [...]` -> token ids `int32 [..., L]`.

        Normalises, splits on spaces, maps unknown words to `<unk>`, keeps the first L − 2 words,
        and lays out `<start> w1 … wn <end> <pad> …`.
        """
        captions = tf.convert_to_tensor(captions, dtype=tf.string)
        flat = tf.reshape(captions, [-1])  # (N,)
        words = tf.strings.split(normalize_captions_tf(flat), sep=" ")  # (N, None)
        words = tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)  # "" -> no words
        words = words[:, : self.max_len - 2]
        ids = tf.ragged.map_flat_values(self._word_to_id.lookup, words)  # (N, None) int64
        n = tf.shape(flat, out_type=tf.int64)[0]
        start = tf.RaggedTensor.from_tensor(tf.fill([n, 1], tf.constant(START_ID, tf.int64)))
        end = tf.RaggedTensor.from_tensor(tf.fill([n, 1], tf.constant(END_ID, tf.int64)))
        dense = tf.concat([start, ids, end], axis=1).to_tensor(default_value=PAD_ID, shape=[None, self.max_len])
        out_shape = tf.concat([tf.shape(captions), [self.max_len]], axis=0)
        tokens = tf.reshape(tf.cast(dense, tf.int32), out_shape)  # (..., L)
        tokens.set_shape(captions.shape.concatenate([self.max_len]))
        return tokens

    def detokenize(self, ids) -> tf.Tensor:
        """Token ids `int [..., T]` -> captions `string [...]`.

        Reads up to the first `<end>`, drops `<start>` and `<pad>`, joins words with single
        spaces; ids outside the vocabulary read as `<unk>`. A leading `<start>` is optional, so
        decoder outputs without it work too.
        """
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"detokenize expects integer token ids, received dtype {ids.dtype.name}.")
        ids = tf.cast(ids, tf.int64)
        flat = tf.reshape(ids, tf.stack([-1, tf.shape(ids, out_type=tf.int64)[-1]]))  # (N, T)
        before_end = tf.cumsum(tf.cast(tf.equal(flat, END_ID), tf.int32), axis=1) == 0
        keep = before_end & tf.not_equal(flat, PAD_ID) & tf.not_equal(flat, START_ID)
        words = tf.ragged.boolean_mask(self._id_to_word.lookup(flat), keep)  # (N, None)
        text = tf.strings.reduce_join(words, axis=1, separator=" ")  # (N,)
        out = tf.reshape(text, tf.shape(ids)[:-1])
        out.set_shape(ids.shape[:-1])
        return out


def _check_tokens(tokens: list[str], *, source: str) -> None:
    """Raises ValueError naming `source` and the first bad line if `tokens` is not a valid vocabulary."""
    if tuple(tokens[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
        raise ValueError(f"{source}: the first tokens must be {list(RESERVED_TOKENS)} (ids 0-3), "
                         f"received {tokens[: len(RESERVED_TOKENS)]}.")
    seen: dict[str, int] = {}
    for line, token in enumerate(tokens, start=1):
        if not token or any(c in token for c in " \t\n\r\f\v"):
            raise ValueError(f"{source}: line {line} holds {token!r}; a token must be non-empty without whitespace.")
        if token in seen:
            raise ValueError(f"{source}: token {token!r} on line {line} repeats line {seen[token]}.")
        seen[token] = line
