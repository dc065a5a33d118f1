"""Caption decoders chosen by name.

Example:

    decoder = get_decoder("lstm", vocab_size=1000, max_len=15, units=128)
"""
from __future__ import annotations

from capnas_tf.registry import Registry

DECODERS = Registry("decoder", register_name="register_decoder", lookup_name="get_decoder")


def register_decoder(name: str, factory=None):
    """Makes `factory(vocab_size=…, max_len=…, **kwargs) -> decoder` available as `name`.

    Usable as a call, `register_decoder("mine", MyDecoder)`, or as a class decorator,
    `@register_decoder("mine")`. Registering a name twice is an error, so that two modules cannot
    silently shadow each other.
    """
    return DECODERS.register(name, factory)


def get_decoder(name: str, *, vocab_size: int, max_len: int, **kwargs):
    """Builds the decoder registered as `name`.

    Args:
      name: a key of `DECODERS` ("lstm", "transformer", …).
      vocab_size: V, the size of the output softmax (including the reserved ids).
      max_len: the longest token prefix the decoder reads (its number of positions); for captions
        of fixed length L, teacher forcing reads L − 1 tokens and greedy decoding writes L − 1.
      **kwargs: the decoder's own hyper-parameters (see its class).

    Returns:
      An unbuilt `CaptionDecoder`.
    """
    return DECODERS.lookup(name)(vocab_size=vocab_size, max_len=max_len, **kwargs)
