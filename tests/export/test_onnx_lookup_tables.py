"""The ONNX conversion after a Vocabulary's lookup tables were created eagerly: no "Issue encountered when
serializing table_initializer" warning (capnas_tf.export.onnx._drop_eager_table_initializers)."""
import logging

import tensorflow as tf

from capnas_tf.captioner import Captioner
from capnas_tf.data.text import Vocabulary
from capnas_tf.decoders import get_decoder
from capnas_tf.encoders import get_encoder
from capnas_tf.export.onnx import onnx_model_proto


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_onnx_conversion_does_not_warn_about_the_vocabularys_table_initializers():
    vocab = Vocabulary.build(["a red square", "a blue circle"], min_count=1, max_len=6)  # two eager tables
    initializers = tf.compat.v1.get_default_graph().get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)
    assert None in initializers  # what TensorFlow files for an eagerly initialised table
    captioner = Captioner(get_encoder("conv", filters=(4,)),
                          get_decoder("lstm", vocab_size=vocab.size, max_len=5, embedding_dim=4, units=4))
    captioner(tf.zeros([1, 8, 8, 3]), tf.ones([1, 5], tf.int32))
    records = _Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(records)
    try:
        model = onnx_model_proto(captioner, image_size=8)
    finally:
        logger.removeHandler(records)
    assert {o.name for o in model.graph.output} == {"token_ids", "scores"}
    assert not [m for m in records.messages if "Issue encountered when serializing" in m], records.messages
