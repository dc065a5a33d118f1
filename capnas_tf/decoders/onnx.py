"""ONNX conversion help for the decoding loops.

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

import numpy as np

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
