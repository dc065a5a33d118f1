"""The decoding loops convert with tf2onnx (opset `ONNX_OPSET`) and give TensorFlow's tokens in
onnxruntime."""
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx

from capnas_tf.decoders.decoding import beam_search, greedy_decode
from capnas_tf.export.onnx import ONNX_CUSTOM_OP_HANDLERS, ONNX_OPSET
from tests.decoders.conftest import DECODER_NAMES, MAX_LEN, make_decoder, random_features


def _to_onnx(fn, input_signature):
    model, _ = tf2onnx.convert.from_function(
        tf.function(fn, input_signature=input_signature),
        input_signature=input_signature,
        opset=ONNX_OPSET,
        custom_op_handlers=ONNX_CUSTOM_OP_HANDLERS,
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feature_signature(features):
    return [
        tf.TensorSpec([None, *features[0].shape[1:]], tf.float32, name="grid"),
        tf.TensorSpec([None, features[1].shape[1]], tf.float32, name="pooled"),
    ]


def _run(session, features):
    return session.run(None, {"grid": features[0].numpy(), "pooled": features[1].numpy()})


def test_dynamic_update_slice_handler_matches_xla_semantics_including_clamping():
    from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

    signature = [
        tf.TensorSpec([2, 5, 3], tf.float32, name="x"),
        tf.TensorSpec([2, 2, 3], tf.float32, name="update"),
        tf.TensorSpec([3], tf.int32, name="start"),
    ]
    session = _to_onnx(lambda x, u, s: dynamic_update_slice(x, u, s), signature)
    x = np.arange(30, dtype=np.float32).reshape(2, 5, 3)
    update = -np.ones((2, 2, 3), np.float32)
    for start in ([0, 0, 0], [0, 2, 0], [0, 4, 0], [0, -3, 0]):  # 4 and −3 are clamped by XLA
        start = np.array(start, np.int32)
        (onnx_out,) = session.run(None, {"x": x, "update": update, "start": start})
        np.testing.assert_array_equal(onnx_out, dynamic_update_slice(x, update, start).numpy())


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_greedy_decoding_in_onnxruntime_gives_tensorflows_tokens(name):
    # One Transformer layer keeps the conversion fast; the slow beam test converts two.
    decoder = make_decoder(name, **({"num_layers": 1} if name == "transformer" else {}))
    features = random_features(batch=3, seed=11)
    session = _to_onnx(
        lambda grid, pooled: greedy_decode(decoder, (grid, pooled), max_len=MAX_LEN),
        _feature_signature(features),
    )
    ids, scores = _run(session, features)
    ref_ids, ref_scores = greedy_decode(decoder, features, max_len=MAX_LEN)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    # A different batch size through the same model: the batch dimension stays dynamic.
    more = random_features(batch=5, seed=12)
    np.testing.assert_array_equal(_run(session, more)[0], greedy_decode(decoder, more, max_len=MAX_LEN)[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODER_NAMES)
def test_beam_search_in_onnxruntime_gives_tensorflows_tokens(name):
    decoder = make_decoder(name)
    features = random_features(batch=3, seed=13)
    session = _to_onnx(
        lambda grid, pooled: beam_search(decoder, (grid, pooled), beam_width=3, max_len=MAX_LEN),
        _feature_signature(features),
    )
    ids, scores = _run(session, features)
    ref_ids, ref_scores = beam_search(decoder, features, beam_width=3, max_len=MAX_LEN)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
