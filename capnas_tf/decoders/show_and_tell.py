"""Show and Tell: the image vector is the LSTM's first input, then the caption's words.

    x₋₁ = W_I · pooled,   x_t = W_e · S_t,   (h_t, c_t) = LSTM(x_t, h_{t−1}, c_{t−1}),
    p_{t+1} = softmax(W_o · dropout(h_t))

The recurrence is written as a Python loop over an `LSTMCell` unrolled along the static prefix
length, not as `keras.layers.LSTM`: a cell is plain matmuls and pointwise ops, so it has second
derivatives (the hypergradient differentiates through a gradient step of the decoder), compiles
under XLA without a TensorList crossing the XLA boundary, and never picks a fused cuDNN kernel.

Reference: Vinyals et al., "Show and Tell: A Neural Image Caption Generator", CVPR 2015,
arXiv:1411.4555.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from capnas_tf.decoders.base import CaptionDecoder, embed_token_rows, is_token_rows, per_caption, zeros_state
from capnas_tf.decoders.registry import register_decoder


@register_decoder("lstm")
@keras.saving.register_keras_serializable(package="capnas_tf")
class ShowAndTellDecoder(CaptionDecoder):
    """NIC caption decoder: pooled image vector → LSTM → softmax over the vocabulary.

    Args:
      vocab_size: V.
      max_len: the longest prefix accepted (the LSTM itself has no position limit).
      embedding_dim: size of the word embedding and of the projected image vector.
      units: LSTM state size.
      dropout: dropout rate on the LSTM outputs before the vocabulary projection.

    Call arguments:
      features: `(grid [B, h, w, C], pooled [B, C])`; only `pooled` is used.
      tokens: int32 `[B·k, T]`, prefixes starting with <start>.
      training: enables dropout.
      captions_per_image: k; the LSTM reads each image once and its state starts the image's k captions.

    Returns:
      logits `[B·k, T, V]`.

    Example:

        decoder = ShowAndTellDecoder(vocab_size=50, max_len=12)
        features = (tf.random.normal([2, 4, 4, 16]), tf.random.normal([2, 16]))
        logits = decoder(features, tf.ones([2, 12], tf.int32))  # (2, 12, 50)
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        embedding_dim: int = 64,
        units: int = 128,
        dropout: float = 0.3,
        **kwargs,
    ):
        super().__init__(vocab_size, max_len, **kwargs)
        self.embedding_dim = int(embedding_dim)
        self.units = int(units)
        self.dropout = float(dropout)
        policy = self.dtype_policy
        self.image_projection = keras.layers.Dense(
            self.embedding_dim, dtype=policy, name="image_projection"
        )
        self.token_embedding = keras.layers.Embedding(
            self.vocab_size, self.embedding_dim, dtype=policy, name="token_embedding"
        )
        self.cell = keras.layers.LSTMCell(self.units, dtype=policy, name="lstm_cell")
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=policy, name="output_dropout")
        self.vocab_projection = keras.layers.Dense(
            self.vocab_size, dtype=self.logits_dtype, name="vocab_projection"
        )

    def build(self, features_shape, tokens_shape=None):
        pooled_shape = tuple(features_shape[1])
        self.image_projection.build(pooled_shape)
        self.token_embedding.build((None, None))
        self.cell.build((None, self.embedding_dim))
        self.output_dropout.build((None, self.units))
        self.vocab_projection.build((None, self.units))
        self.built = True

    def _image_state(self, pooled, training=False):
        """(h₋₁, c₋₁) after the LSTM has read the projected image vector x₋₁ from a zero state."""
        x_image = self.image_projection(pooled)  # (B, E)
        batch = tf.shape(pooled)[0]
        zeros = zeros_state(batch, self.units, self.cell.compute_dtype)
        _, state = self.cell(x_image, [zeros, zeros], training=training)
        return state

    def call(self, features, tokens, training=False, captions_per_image: int = 1):
        _, pooled = self._unpack(features)
        self._check_prefix(tokens)
        state = [per_caption(s, captions_per_image) for s in self._image_state(pooled, training=training)]
        if is_token_rows(tokens):
            words = embed_token_rows(tokens, self.token_embedding)  # (B, T, E)
        else:
            words = self.token_embedding(tokens)  # (B, T, E)
        outputs = []
        for t in range(tokens.shape[1]):  # static T: the loop is unrolled into the graph
            h, state = self.cell(words[:, t], state, training=training)
            outputs.append(h)
        hidden = tf.stack(outputs, axis=1)  # (B, T, units)
        hidden = self.output_dropout(hidden, training=training)
        return self.vocab_projection(hidden)  # (B, T, V)

    def initial_cache(self, features):
        """`{"h": [B, units], "c": [B, units]}`, the LSTM state after the image vector."""
        _, pooled = self._unpack(features)
        h, c = self._image_state(pooled)
        return {"h": h, "c": c}

    def decode_step(self, features, token_ids, index, cache):
        """Feeds `token_ids [B]`; the image already sits in the state, so `index` is unused."""
        del features, index
        word = self.token_embedding(token_ids)  # (B, E)
        h, (h, c) = self.cell(word, [cache["h"], cache["c"]], training=False)
        return self.vocab_projection(h), {"h": h, "c": c}

    def get_config(self):
        config = super().get_config()
        config.update(
            {"embedding_dim": self.embedding_dim, "units": self.units, "dropout": self.dropout}
        )
        return config
