"""Building the models of a search from its config: the supernet E (with A), its decoder F, and, for a
strategy that trains one (`SearchStrategy.uses_student`), the Stage II student W — all built (variables
created) so that the strategies can snapshot their values."""
from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from capnas_tf.captioner import Captioner
from capnas_tf.decoders import get_decoder
from capnas_tf.encoders import get_encoder
from capnas_tf.search.captioning import SearchModels
from capnas_tf.search.precision import check_precision, dtype_policy
from capnas_tf.search.strategies import get_strategy
from capnas_tf.search_space.relaxations import relax_architecture
from capnas_tf.search_space.supernet import SupernetEncoder

if TYPE_CHECKING:  # annotations only: the search takes its config as an argument (config sits above it)
    from capnas_tf.config import SearchConfig


def build_search_models(config: SearchConfig, *, vocab_size: int, max_caption_len: int, image_size: int,
                        seed: int = 0) -> SearchModels:
    """E, A, F and, if the strategy `config.strategy` needs it, W for `config`, with every variable created.

    Decoders read prefixes of max_caption_len − 1 tokens (teacher forcing on tokens[:, :-1]). The models
    compute in `config.dtype_policy` (variables float32).
    """
    strategy = get_strategy(config.strategy)
    check_precision(config, strategy)
    with dtype_policy(config.dtype_policy):
        return _build_search_models(config, vocab_size=vocab_size, max_caption_len=max_caption_len,
                                    image_size=image_size, seed=seed, with_student=strategy.uses_student)


def _build_search_models(config: SearchConfig, *, vocab_size: int, max_caption_len: int, image_size: int,
                         seed: int, with_student: bool) -> SearchModels:
    net = config.supernet
    encoder = SupernetEncoder(channels=net.channels, num_cells=net.num_cells, num_nodes=net.num_nodes,
                              stem_multiplier=net.stem_multiplier, primitives=net.primitives, seed=seed,
                              partial_channels=net.partial_channels, name="supernet")
    dropout = {} if config.decoder_dropout is None else {"dropout": config.decoder_dropout}
    decoder = get_decoder(config.decoder, vocab_size=vocab_size, max_len=max_caption_len - 1, **dropout)
    # W is constructed for every strategy and built (variables created, one call) only for those that train
    # it. Its layers draw their initializers' seeds from the seeded random state when they are constructed,
    # between F's construction and F's build, where the transformer decoder's layers draw theirs: so every
    # strategy on the same seed starts from the same E, F (tests/search/test_search_models.py).
    student = Captioner(get_encoder(config.student_encoder),
                        get_decoder(config.student_decoder, vocab_size=vocab_size, max_len=max_caption_len - 1,
                                    **dropout),
                        name="student")
    encoder.build((None, image_size, image_size, 3))  # shape propagation: much faster than a call
    images = tf.zeros([1, image_size, image_size, 3])
    tokens = tf.ones([1, max_caption_len - 1], tf.int32)
    decoder(encoder(images), tokens)
    if with_student:
        student(images, tokens)

    relaxation = net.relaxation

    def relax(A):
        return relax_architecture(relaxation, A)

    return SearchModels(encoder=encoder, decoder=decoder, student=student if with_student else None, relax=relax)

