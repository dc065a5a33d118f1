"""What every caption decoder shares: the call contract and the incremental-decoding contract.

A decoder F reads encoder features `(grid [B, h, w, C], pooled [B, C])` and a token prefix
`tokens [B, T]` starting with <start>, and returns `logits [B, T, V]` where `logits[:, t]` is the
distribution of `tokens[:, t + 1]`. Logits are in the policy's variable dtype: float32 under
"float32" and "mixed_float16" (the softmax over V is too wide for float16), float64 under "float64"
(used by the finite-difference tests).

Training on k captions of each image passes `captions_per_image=k` to the call, with `tokens [B·k, T]`
(caption i of image i // k) and the features of the B images: what a decoder derives from the image alone
(the transformer's memory, the LSTM's initial state) is computed once per image and repeated k times,
instead of being computed again for each caption.

For decoding, `initial_cache(features)` returns a nest of batch-major tensors and
`decode_step(features, token_ids [B], index, cache) -> (logits [B, V], cache)` advances it by one
token, so a caption of T tokens costs T steps. Feeding `tokens[:, t]` at `index = t` after t earlier
steps gives `logits[:, t]` of the full call.
"""
from __future__ import annotations

import keras
import tensorflow as tf


class CaptionDecoder(keras.Model):
    """Base class: stores `vocab_size` and `max_len`, and checks the prefix length.

    Args:
      vocab_size: V, the size of the output softmax.
      max_len: the number of positions the decoder can read; prefixes are at most this long.
      **kwargs: `keras.Model` arguments (`name`, `dtype`).
    """

    def __init__(self, vocab_size: int, max_len: int, **kwargs):
        super().__init__(**kwargs)
        if int(vocab_size) < 4:
            raise ValueError(
                f"{type(self).__name__}: vocab_size must be >= 4 (pad, start, end, unk are "
                f"reserved); received {vocab_size}."
            )
        if int(max_len) < 1:
            raise ValueError(f"{type(self).__name__}: max_len must be >= 1; received {max_len}.")
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)

    @property
    def logits_dtype(self) -> str:
        """The dtype of the vocabulary projection: the policy's variable dtype (never float16)."""
        return self.dtype_policy.variable_dtype

    def _check_prefix(self, tokens) -> None:
        """Tokens are ids `[B, T]` or rows over the vocabulary `[B, T, V]`, at most max_len long."""
        length = tokens.shape[1]
        if length is not None and length > self.max_len:
            raise ValueError(
                f"{type(self).__name__}: the token prefix has {length} positions but the decoder "
                f"was built with max_len={self.max_len}."
            )

    @staticmethod
    def _unpack(features):
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            length = len(features) if hasattr(features, "__len__") else "?"
            raise ValueError(
                "features must be the pair (grid [B, h, w, C], pooled [B, C]); received "
                f"{type(features).__name__} of length {length}."
            )
        return features[0], features[1]

    def initial_cache(self, features):
        """The decoding state before the <start> token is fed: a nest of batch-major tensors."""
        raise NotImplementedError

    def decode_step(self, features, token_ids, index, cache):
        """One incremental step: `(logits [B, V], cache)` for `token_ids [B]` at position `index`."""
        raise NotImplementedError

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "vocab_size": self.vocab_size,
            "max_len": self.max_len,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def is_token_rows(tokens) -> bool:
    """True for rows over the vocabulary `[B, T, V]` (one-hot or straight-through) instead of ids."""
    return tokens.shape.rank == 3 and tokens.dtype.is_floating


def embed_token_rows(rows, embedding_layer) -> tf.Tensor:
    """Σ_v rows[b, t, v] · E[v]: the embedding of a one-hot row is that token's embedding, and a
    straight-through row passes gradient into the row (Stage II `straight_through`). [B, T, D]"""
    table = embedding_layer.embeddings
    return tf.matmul(tf.cast(rows, table.dtype), table)


def per_caption(x, captions_per_image: int):
    """x `[B, …]` repeated for the k = `captions_per_image` captions of each image: `[B·k, …]`, row i of
    the result being row i // k of x (the order of `CaptionData.train_groups`' tokens, flattened)."""
    if captions_per_image == 1:
        return x
    return tf.repeat(x, captions_per_image, axis=0)


def zeros_state(batch_size, units: int, dtype) -> tf.Tensor:
    """A [B, units] zero tensor (B may be a dynamic scalar)."""
    return tf.zeros(tf.stack([batch_size, units]), dtype=dtype)
