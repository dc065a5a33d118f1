"""One ONNX graph from images to caption token ids, the whole greedy decoding loop inside.

    export_onnx(captioner, vocab, "<workdir>/export", image_size=32)
    # → <workdir>/export/captioner.onnx   images float32 [N, S, S, 3] in [0, 1] → token_ids int32 [N, T], scores [N]
    # → <workdir>/export/vocab.txt        one token per line, id = line number

`export/onnx_caption.py` (repo top level) runs it with onnxruntime, numpy and Pillow only.
Conversion goes through tf2onnx with `ONNX_OPSET` and `ONNX_CUSTOM_OP_HANDLERS` (keras-hub's
cached attention lowers to XlaDynamicUpdateSlice, which tf2onnx cannot convert by itself).
"""
from __future__ import annotations

import os

import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.decoders.onnx import ONNX_CUSTOM_OP_HANDLERS, ONNX_OPSET
from capnas_tf.decoders.decoding import greedy_decode

ONNX_FILE = "captioner.onnx"
VOCAB_FILE = "vocab.txt"


def onnx_model_proto(captioner, *, image_size: int):
    """The ONNX ModelProto of images `[N, S, S, 3]` → (`token_ids` int32 `[N, T]`, `scores` float32 `[N]`)."""
    import tf2onnx

    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")]

    @tf.function(input_signature=signature)
    def caption(images):
        features = captioner.encode(images, training=False)
        ids, scores = greedy_decode(captioner.decoder, features, max_len=captioner.decoder.max_len)
        return {"token_ids": tf.identity(ids, name="token_ids"), "scores": tf.identity(scores, name="scores")}

    model, _ = tf2onnx.convert.from_function(caption, input_signature=signature, opset=ONNX_OPSET,
                                             custom_op_handlers=ONNX_CUSTOM_OP_HANDLERS)
    return model


def export_onnx(captioner, vocab, export_dir: str, *, image_size: int) -> str:
    """Writes `<export_dir>/captioner.onnx` and `<export_dir>/vocab.txt` (both atomically).

    Args:
      captioner: a built `Captioner`.
      vocab: its `Vocabulary`.
      export_dir: output folder.
      image_size: S, the fixed input side of the graph (callers resize).

    Returns:
      The path of the ONNX file.
    """
    model = onnx_model_proto(captioner, image_size=image_size)
    path = os.path.join(export_dir, ONNX_FILE)
    io_utils.atomic_write_bytes(path, model.SerializeToString())
    vocab.save(os.path.join(export_dir, VOCAB_FILE))
    return path
