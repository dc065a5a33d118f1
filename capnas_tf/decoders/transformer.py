"""A Transformer caption decoder: causal self-attention over the words, cross-attention over the grid.

    M = W_m · flatten(grid) + P_m          # memory (B, h·w, D), with learned spatial positions
    x⁰ = TokenEmbedding(tokens) + P_t      # (B, T, D)
    xˡ = TransformerDecoderLayer(xˡ⁻¹, M)   # l = 1 … N, causal
    logits = W_o · xᴺ                      # (B, T, V)

The decoder layers are keras-hub `TransformerDecoder`s; their key/value caches make incremental
decoding cost one position per step: the self-attention cache `[B, 2, max_len, H, D/H]` is filled
one index at a time, the cross-attention cache `[B, 2, h·w, H, D/H]` is computed once from M.

keras-hub builds its layer norms as `keras.layers.LayerNormalization`, whose second derivative is
wrong on the TensorFlow backend (see `exact_layer_norm.py`); after building, each of them is
switched to `ExactLayerNormalization` — same weights, same function, exact Hessian.

Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.
"""
from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf

from capnas_tf.decoders.base import CaptionDecoder, embed_token_rows, is_token_rows, per_caption
from capnas_tf.decoders.exact_layer_norm import ExactLayerNormalization
from capnas_tf.decoders.registry import register_decoder


def _use_exact_layer_norms(layer: keras.layers.Layer) -> None:
    """Switches the built `LayerNormalization` sublayers of `layer` to `ExactLayerNormalization`.

    The subclass adds no state, so changing the instances' class keeps their variables, their
    tracking and the parent's weight order; only `call` changes.
    """
    for sublayer in vars(layer).values():
        if type(sublayer) is keras.layers.LayerNormalization:
            sublayer.__class__ = ExactLayerNormalization


@keras.saving.register_keras_serializable(package="capnas_tf")
class CountingAttention(keras.layers.Layer):
    """Attention that sums instead of averaging: per head h,

        c_h = (1/S) Σ_s σ(q_h · k_{h,s} / √d) v_{h,s},   out = W_o [c_1 … c_H]

    (q, k, v: per-head projections with biases; d: the head width.)

    Softmax weights sum to one, so a softmax read returns what the attended slots look like, not how many
    there are; sigmoid gates do not, so c grows with the number of slots that match the query — a count.

    Call arguments: `x` [B, T, D] (queries), `slots` [B, S, D] (keys and values). Returns [B, T, D].
    """

    def __init__(self, num_heads: int, head_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim = int(num_heads), int(head_dim)
        # Per-head projections as EinsumDense (as keras' MultiHeadAttention has them): no reshape of
        # activations, which tf2onnx's graph rewrites got wrong for a Dense output of rank 3.
        heads = (None, self.num_heads, self.head_dim)
        self.query, self.key, self.value = (
            keras.layers.EinsumDense("btd,dhk->bthk", output_shape=heads, bias_axes="hk",
                                     dtype=self.dtype_policy, name=name)
            for name in ("query", "key", "value"))
        self.output_projection = None

    def build(self, x_shape, slots_shape=None):
        model_dim = x_shape[-1]
        for projection in (self.query, self.key, self.value):
            projection.build((None, None, model_dim))
        self.output_projection = keras.layers.EinsumDense("bthk,hkd->btd", output_shape=(None, model_dim),
                                                          bias_axes="d", dtype=self.dtype_policy, name="output")
        self.output_projection.build((None, None, self.num_heads, self.head_dim))
        self.built = True

    def call(self, x, slots):
        q, k, v = self.query(x), self.key(slots), self.value(slots)  # (B, T|S, H, d)
        gates = tf.sigmoid(tf.einsum("bthd,bshd->bhts", q, k) / (self.head_dim ** 0.5))
        counts = tf.einsum("bhts,bshd->bthd", gates, v) / tf.cast(tf.shape(slots)[1], x.dtype)
        return self.output_projection(counts)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim}


@register_decoder("transformer")
@keras.saving.register_keras_serializable(package="capnas_tf")
class TransformerCaptionDecoder(CaptionDecoder):
    """Transformer decoder with cross-attention over the encoder's spatial grid.

    Args:
      vocab_size: V.
      max_len: number of token positions (position-embedding table size and cache length).
      model_dim: D, the width of embeddings and attention.
      num_layers: N, number of `keras_hub.layers.TransformerDecoder` layers.
      num_heads: H; must divide `model_dim`.
      intermediate_dim: width of each layer's feed-forward block.
      dropout: dropout rate inside the decoder layers.
      normalize_first: layer norm before each sublayer (pre-LN): post-LN layers of this width diverged
        at the retrain's learning rate with two layers.
      global_token: append W_g · pooled to the memory (see `_memory`).
      coordinates: append each grid slot's (row, col) to its features (see `_grid_coordinates`).
      count_heads: heads of a `CountingAttention` among the grid slots of M, added to M (0: none): each
        slot learns how many slots look like it, which softmax cross-attention cannot read (see `_memory`).
      position_dims: P > 0 reserves the last P of M's D channels for fixed Fourier features of each slot's
        (row, col) (see `_position_features`); the grid's features are projected to the other D − P. 0: every
        channel is W_m · [features, coordinates] and the position shares them with the features.
      memory_layers: keras-hub `TransformerEncoder` layers (self-attention among the grid slots, H heads,
        pre-LN as `normalize_first`) applied to M before the words read it (0: none): each slot can gather
        where the *other* objects are, so that reading one group returns its relation to the rest.

    Call arguments:
      features: `(grid [B, h, w, C], pooled [B, C])`.
      tokens: int32 `[B·k, T]`, prefixes starting with <start>, T <= max_len.
      training: enables dropout.
      captions_per_image: k; the memory M (and its counting attention) is computed once per image and
        read by its k captions.

    Returns:
      logits `[B·k, T, V]`.

    Example:

        decoder = TransformerCaptionDecoder(vocab_size=50, max_len=12)
        features = (tf.random.normal([2, 4, 4, 16]), tf.random.normal([2, 16]))
        logits = decoder(features, tf.ones([2, 12], tf.int32))  # (2, 12, 50)
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        model_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_dim: int = 128,
        dropout: float = 0.1,
        normalize_first: bool = True,
        global_token: bool = True,
        coordinates: bool = True,
        count_heads: int = 0,
        memory_layers: int = 0,
        position_dims: int = 0,
        **kwargs,
    ):
        super().__init__(vocab_size, max_len, **kwargs)
        if model_dim % num_heads:
            raise ValueError(
                f"TransformerCaptionDecoder: num_heads={num_heads} must divide "
                f"model_dim={model_dim}."
            )
        if count_heads < 0 or (count_heads and model_dim % count_heads):
            raise ValueError(
                f"TransformerCaptionDecoder: count_heads={count_heads} must be 0 or divide "
                f"model_dim={model_dim}."
            )
        self.model_dim = int(model_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.dropout = float(dropout)
        self.normalize_first = bool(normalize_first)
        self.global_token = bool(global_token)
        self.coordinates = bool(coordinates)
        self.count_heads = int(count_heads)
        if memory_layers < 0:
            raise ValueError(f"TransformerCaptionDecoder: memory_layers={memory_layers} must be >= 0.")
        self.memory_layers = int(memory_layers)
        if position_dims < 0 or position_dims % 4 or position_dims >= model_dim:
            raise ValueError(f"TransformerCaptionDecoder: position_dims={position_dims} must be 0 or a multiple of 4 "
                             f"below model_dim={model_dim}.")
        self.position_dims = int(position_dims)
        policy = self.dtype_policy
        self.counting = (CountingAttention(self.count_heads, self.model_dim // self.count_heads, dtype=policy,
                                           name="counting_attention") if self.count_heads else None)
        self.memory_projection = keras.layers.Dense(
            self.model_dim - self.position_dims, dtype=policy, name="memory_projection"
        )
        self.memory_position = None  # sized by the grid, so created in build()
        self.global_projection = (keras.layers.Dense(self.model_dim, dtype=policy, name="global_projection")
                                  if self.global_token else None)
        self.embedding = keras_hub.layers.TokenAndPositionEmbedding(
            vocabulary_size=self.vocab_size,
            sequence_length=self.max_len,
            embedding_dim=self.model_dim,
            dtype=policy,
            name="token_and_position_embedding",
        )
        self.memory_encoders = [
            keras_hub.layers.TransformerEncoder(
                intermediate_dim=self.intermediate_dim,
                num_heads=self.num_heads,
                dropout=self.dropout,
                normalize_first=self.normalize_first,
                dtype=policy,
                name=f"memory_encoder_{i}",
            )
            for i in range(self.memory_layers)
        ]
        self.decoder_layers = [
            keras_hub.layers.TransformerDecoder(
                intermediate_dim=self.intermediate_dim,
                num_heads=self.num_heads,
                dropout=self.dropout,
                normalize_first=self.normalize_first,
                dtype=policy,
                name=f"transformer_decoder_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.vocab_projection = keras.layers.Dense(
            self.vocab_size, dtype=self.logits_dtype, name="vocab_projection"
        )

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def build(self, features_shape, tokens_shape=None):
        grid_shape = tuple(features_shape[0])
        if len(grid_shape) != 4 or None in grid_shape[1:]:
            raise ValueError(
                "TransformerCaptionDecoder: features[0] must be a grid [B, h, w, C] with static "
                f"h, w, C; received shape {grid_shape}."
            )
        _, h, w, channels = grid_shape
        self.memory_projection.build((None, h * w, channels + 2 * int(self.coordinates)))
        self.memory_position = keras_hub.layers.PositionEmbedding(
            sequence_length=h * w, dtype=self.dtype_policy, name="memory_position"
        )
        self.memory_position.build((None, h * w, self.model_dim))
        if self.global_projection is not None:
            self.global_projection.build((None, channels))
        memory_length = h * w + int(self.global_token)
        self.embedding.build((None, self.max_len))
        for layer in self.decoder_layers:
            layer.build((None, None, self.model_dim), (None, memory_length, self.model_dim))
            _use_exact_layer_norms(layer)
        if self.counting is not None:
            self.counting.build((None, None, self.model_dim), (None, h * w, self.model_dim))
        for layer in self.memory_encoders:
            layer.build((None, h * w, self.model_dim))
            _use_exact_layer_norms(layer)
        self.vocab_projection.build((None, None, self.model_dim))
        self.built = True

    def _memory(self, features, training=False):
        """M = W_m · flatten(grid) + P_m, shape (B, h·w, D); with `count_heads`, M + CountingAttention(M, M);
        then the `memory_layers` self-attention layers over M; with `global_token`, W_g · pooled appended as
        one more slot (B, h·w + 1, D).

        Softmax cross-attention averages what it reads: it returns what a group of objects looks like, not
        how many there are. The pooled vector's per-channel mass grows with the count of all objects; the
        counting attention gives every slot the number of slots like it, so that reading a group's slots
        returns the group's own count (on perfect scene features, count accuracy .78 → 1.0 in two-group
        scenes, docs/recipe_variants.md)."""
        grid, pooled = self._unpack(features)
        channels = grid.shape[-1]
        flat = tf.reshape(grid, [tf.shape(grid)[0], -1, channels])  # (B, h·w, C)
        if self.coordinates:
            flat = tf.concat([flat, self._grid_coordinates(grid)], axis=-1)  # (B, h·w, C + 2)
        memory = self.memory_projection(flat)
        if self.position_dims:
            memory = tf.concat([memory, self._position_features(grid, self.position_dims)], axis=-1)
        memory = memory + self.memory_position(memory)
        if self.counting is not None:
            memory = memory + self.counting(memory, memory)
        for layer in self.memory_encoders:
            memory = layer(memory, training=training)
        if self.global_projection is None:
            return memory
        return tf.concat([memory, self.global_projection(pooled)[:, None]], axis=1)

    @classmethod
    def _position_features(cls, grid, dims: int):
        """[sin(2ᵏ·π/2·r), cos(2ᵏ·π/2·r), sin(2ᵏ·π/2·c), cos(2ᵏ·π/2·c)] for k < dims / 4, (B, h·w, dims), with
        (r, c) of `_grid_coordinates`: where a slot is, in channels no image feature is added to, so that an
        attention read of a group returns its position without the features' interference."""
        coords = cls._grid_coordinates(grid)  # (B, h·w, 2)
        angles = [coords * (2.0 ** k * 3.141592653589793 / 2) for k in range(dims // 4)]
        return tf.concat([f(a[..., i:i + 1]) for a in angles for i in (0, 1) for f in (tf.sin, tf.cos)], axis=-1)

    @staticmethod
    def _grid_coordinates(grid):
        """(row, col) of every grid position in [−1, 1], (B, h·w, 2): CoordConv's explicit coordinates, so
        that an attention read returns the mean position of what it attends to."""
        _, h, w, _ = grid.shape
        rows, cols = tf.meshgrid(tf.linspace(-1.0, 1.0, h), tf.linspace(-1.0, 1.0, w), indexing="ij")
        coords = tf.cast(tf.reshape(tf.stack([rows, cols], axis=-1), [1, h * w, 2]), grid.dtype)
        return tf.tile(coords, [tf.shape(grid)[0], 1, 1])

    def call(self, features, tokens, training=False, captions_per_image: int = 1):
        self._check_prefix(tokens)
        memory = per_caption(self._memory(features, training=training), captions_per_image)  # (B·k, S, D)
        if is_token_rows(tokens):
            x = embed_token_rows(tokens, self.embedding.token_embedding)  # (B, T, D)
            x = x + self.embedding.position_embedding(x)
        else:
            x = self.embedding(tokens)  # (B, T, D)
        for layer in self.decoder_layers:
            x = layer(x, memory, training=training)
        return self.vocab_projection(x)  # (B, T, V)

    def initial_cache(self, features):
        """Empty self-attention caches, cross-attention caches of M, and M itself.

        Returns:
          `{"memory": [B, S, D], "self_attention": (N × [B, 2, max_len, H, D/H]),
          "cross_attention": (N × [B, 2, S, H, D/H])}`.
        """
        memory = self._memory(features)
        batch, length = tf.shape(memory)[0], tf.shape(memory)[1]
        dtype = memory.dtype
        head_shape = [self.num_heads, self.head_dim]
        empty_self = tf.zeros(tf.stack([batch, 2, self.max_len, *head_shape]), dtype)
        empty_cross = tf.zeros(tf.stack([batch, 2, length, *head_shape]), dtype)
        # The public way to get a layer's cross-attention keys/values is a call with
        # cross_attention_cache_update_index=0; the one-position query it runs is discarded.
        probe = tf.zeros(tf.stack([batch, 1, self.model_dim]), dtype)
        cross = []
        for layer in self.decoder_layers:
            _, _, cross_cache = layer(
                probe,
                memory,
                self_attention_cache=empty_self,
                self_attention_cache_update_index=0,
                cross_attention_cache=empty_cross,
                cross_attention_cache_update_index=0,
            )
            cross.append(cross_cache)
        return {
            "memory": memory,
            "self_attention": tuple(empty_self for _ in self.decoder_layers),
            "cross_attention": tuple(cross),
        }

    def decode_step(self, features, token_ids, index, cache):
        """Runs position `index` only, reading and extending the key/value caches."""
        del features  # the grid is already in cache["memory"] and the cross-attention caches
        x = self.embedding(token_ids[:, None], start_index=index)  # (B, 1, D)
        self_caches = []
        for layer, self_cache, cross_cache in zip(
            self.decoder_layers, cache["self_attention"], cache["cross_attention"]
        ):
            x, self_cache, _ = layer(
                x,
                cache["memory"],
                self_attention_cache=self_cache,
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=None,
            )
            self_caches.append(self_cache)
        logits = self.vocab_projection(x[:, 0])  # (B, V)
        return logits, {
            "memory": cache["memory"],
            "self_attention": tuple(self_caches),
            "cross_attention": cache["cross_attention"],
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model_dim": self.model_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "normalize_first": self.normalize_first,
                "global_token": self.global_token,
                "coordinates": self.coordinates,
                "count_heads": self.count_heads,
                "memory_layers": self.memory_layers,
                "position_dims": self.position_dims,
            }
        )
        return config
