"""A captioner: an image encoder followed by a caption decoder.

Used for the Stage II student W, for the retrained final model, and for export. The searched
supernet E and its decoder F stay two models, because the method takes separate virtual steps
on them (η_e, η_f).
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="capnas_tf")
class Captioner(keras.Model):
    """Encoder + decoder, `call(images, tokens) -> logits [B, T, V]`.

    Args:
      encoder: maps images `[B, S, S, 3]` in [0, 1] to `(grid [B, h, w, C], pooled [B, C])`.
      decoder: maps `(features, tokens [B, T])` to logits `[B, T, V]`; `logits[:, t]` predicts
        `tokens[:, t + 1]`. Tokens may also be rows over the vocabulary `[B, T, V]` (one-hot or
        straight-through), which the decoder embeds by a matrix product.
    """

    def __init__(self, encoder: keras.layers.Layer, decoder: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def call(self, images, tokens, training=False):
        return self.decoder(self.encoder(images, training=training), tokens, training=training)

    def encode(self, images, training=False):
        return self.encoder(images, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
        )
        return config

    def build_from_config(self, config):
        """Rebuilds from the shapes of the first call. Keras' default would trace `call` on a float32
        placeholder for every argument, which the decoder's embedding refuses for token ids, and warn.

        A Captioner built by its first call records `{"input_shape": images}` alone, whatever the tokens
        were (Keras builds a layer without its own `build` from the first argument's shape); one rebuilt
        here records `{"shapes_dict": {images_shape, tokens_shape}}`, so a loaded and re-saved model comes
        back through the `shapes_dict` branch. One token per row builds the same variables as any
        caption length."""
        config = config or {}
        shapes = config.get("shapes_dict") or {}
        images_shape = tuple(shapes.get("images_shape") or config.get("input_shape") or ())
        if len(images_shape) != 4:
            return super().build_from_config(config)
        tokens_shape = tuple(shapes.get("tokens_shape") or (images_shape[0], 1))
        images = keras.KerasTensor(images_shape, dtype="float32")
        # [B, T] token ids, or [B, T, V] rows over the vocabulary (the straight-through path).
        tokens = keras.KerasTensor(tokens_shape, dtype="int32" if len(tokens_shape) == 2 else "float32")
        self.compute_output_spec(images, tokens)  # a symbolic call: builds every layer, runs nothing
        self._build_shapes_dict = {"images_shape": images_shape, "tokens_shape": tokens_shape}
        self.built = True

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)
