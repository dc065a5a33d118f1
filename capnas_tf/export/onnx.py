"""One ONNX graph from images to caption token ids, the whole decoding loop inside (greedy, or beam search of
width K: the same loop as the SavedModel's, so both write the same captions).

    export_onnx(captioner, vocab, "<workdir>/export", image_size=32, beam_width=3)
    # → <workdir>/export/captioner.onnx   images float32 [N, S, S, 3] in [0, 1] → token_ids int32 [N, T], scores [N]
    # → <workdir>/export/vocab.txt        one token per line, id = line number

`deploy/onnx_caption.py` (repo top level, outside the package) runs it with onnxruntime, numpy and
Pillow only. Conversion goes through tf2onnx with `ONNX_OPSET` and `ONNX_CUSTOM_OP_HANDLERS`.

keras-hub's cached attention writes its key/value cache with `keras.ops.slice_update`, which the
TensorFlow backend lowers to `XlaDynamicUpdateSlice`; tf2onnx 1.17 has no handler for that op
("Tensorflow op [...] XlaDynamicUpdateSlice is not supported"). `ONNX_CUSTOM_OP_HANDLERS` supplies
one, built from standard ONNX ops (opset >= 11):

    pads   = [s, shape(x) − shape(u) − s],  s = clamp(start, 0, shape(x) − shape(u))  (XLA clamps)
    out    = Where(Pad(1_u, pads) ≠ 0, Pad(u, pads), x)

Pass it to tf2onnx: `tf2onnx.convert.from_function(fn, input_signature, opset=ONNX_OPSET,
custom_op_handlers=ONNX_CUSTOM_OP_HANDLERS)`.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.decoders.decoding import decode_captions

# The opset the decoding loops are tested with (tests/decoders/test_onnx_export.py).
ONNX_OPSET = 17


def _dynamic_update_slice_handler(ctx, node, name, args):
    """Rewrites `XlaDynamicUpdateSlice(x, update, start)` into Pad/Where on standard ONNX ops."""
    from onnx import TensorProto, helper
    from tf2onnx import utils

    del name, args
    x, update, start = node.input[0], node.input[1], node.input[2]

    def op(op_type, inputs, **attr):
        return ctx.make_node(op_type, inputs, attr=attr, op_name_scope=node.name).output[0]

    def const(value):
        return ctx.make_const(utils.make_name(f"{node.name}_const"), np.array(value, np.int64)).output[0]

    x_shape = op("Shape", [x])
    room = op("Sub", [x_shape, op("Shape", [update])])  # shape(x) − shape(u)
    begin = op("Cast", [start], to=TensorProto.INT64)
    begin = op("Min", [op("Max", [begin, const([0])]), room])
    pads = op("Concat", [begin, op("Sub", [room, begin])], axis=0)
    padded_update = op("Pad", [update, pads])
    ones = op(
        "ConstantOfShape",
        [op("Shape", [update])],
        value=helper.make_tensor("value", TensorProto.INT32, [1], [1]),
    )
    inside = op("Cast", [op("Pad", [ones, pads])], to=TensorProto.BOOL)
    # Turn the XLA node itself into the final Where so that its consumers stay wired to it.
    node.type = "Where"
    ctx.replace_inputs(node, [inside, padded_update, x])
    for attr in list(node.attr):
        del node.attr[attr]


ONNX_CUSTOM_OP_HANDLERS = {"XlaDynamicUpdateSlice": (_dynamic_update_slice_handler, [])}


ONNX_FILE = "captioner.onnx"
VOCAB_FILE = "vocab.txt"


def onnx_model_proto(captioner, *, image_size: int, beam_width: int = 1):
    """The ONNX ModelProto of images `[N, S, S, 3]` → (`token_ids` int32 `[N, T]`, `scores` float32 `[N]`), decoded
    greedily (`beam_width` 1) or by beam search of width `beam_width` (`decoding.decode_captions`)."""
    import tf2onnx

    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")]

    @tf.function(input_signature=signature)
    def caption(images):
        ids, scores = decode_captions(captioner, images, beam_width=beam_width)
        return {"token_ids": tf.identity(ids, name="token_ids"), "scores": tf.identity(scores, name="scores")}

    _drop_eager_table_initializers()
    model, _ = tf2onnx.convert.from_function(caption, input_signature=signature, opset=ONNX_OPSET,
                                             custom_op_handlers=ONNX_CUSTOM_OP_HANDLERS)
    return model


def _drop_eager_table_initializers() -> None:
    """Removes the `None`s from the default graph's "table_initializer" collection.

    A lookup table created eagerly (the `Vocabulary`'s two) files the result of its initialising op,
    which is None in eager mode, in the global default graph's collection (`ops.add_to_collection` uses
    that graph even when executing eagerly). Every tf.function traced afterwards starts with a copy of
    that collection, and tf2onnx freezes `caption` with `convert_variables_to_constants_v2`, which exports
    the traced graph's meta graph and warns for the Nones: "Issue encountered when serializing
    table_initializer … 'NoneType' object has no attribute 'name'". They stand for nothing (an eager
    table is initialised when created), so they are dropped before tracing.
    """
    initializers = tf.compat.v1.get_default_graph().get_collection_ref(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)
    initializers[:] = [op for op in initializers if op is not None]


def export_onnx(captioner, vocab, export_dir: str, *, image_size: int, beam_width: int = 1) -> str:
    """Writes `<export_dir>/captioner.onnx` and `<export_dir>/vocab.txt` (both atomically).

    Args:
      captioner: a built `Captioner`.
      vocab: its `Vocabulary`.
      export_dir: output folder.
      image_size: S, the fixed input side of the graph (callers resize).
      beam_width: 1 = greedy decoding, K > 1 = beam search of width K.

    Returns:
      The path of the ONNX file.
    """
    model = onnx_model_proto(captioner, image_size=image_size, beam_width=beam_width)
    path = os.path.join(export_dir, ONNX_FILE)
    io_utils.remove_stale_temps(export_dir)  # temp files of a killed export
    io_utils.atomic_write_bytes(path, model.SerializeToString())
    vocab.save(os.path.join(export_dir, VOCAB_FILE))
    return path
