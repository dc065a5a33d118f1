"""Caption decoders F, their decoding loops, losses and scheduled sampling.

`get_decoder(name, vocab_size=…, max_len=…, **kw)` builds a registered decoder ("lstm",
"transformer"); every decoder is called as `decoder(features, tokens, training=False)` and supports
incremental decoding through `initial_cache` / `decode_step` (see `base.py`).
"""
from capnas_tf.decoders.base import CaptionDecoder
from capnas_tf.decoders.exact_layer_norm import ExactLayerNormalization
from capnas_tf.decoders.registry import DECODERS, get_decoder, register_decoder
from capnas_tf.decoders.show_and_tell import ShowAndTellDecoder
from capnas_tf.decoders.transformer import TransformerCaptionDecoder

__all__ = [
    "CaptionDecoder",
    "DECODERS",
    "ExactLayerNormalization",
    "ShowAndTellDecoder",
    "TransformerCaptionDecoder",
    "get_decoder",
    "register_decoder",
]
