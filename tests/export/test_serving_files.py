"""deploy/serving/ against TF Serving's own protos (tensorflow-serving-api): models.config is a valid
ModelServerConfig whose base_path is the folder that holds the export's numbered versions, and request.json
is a REST predict request for `serving_default` whose image the SavedModel, loaded in a fresh TensorFlow-only
process, captions like the Keras captioner."""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.decoders.decoding import decode_captions
from capnas_tf.export.saved_model import _to_model_pixels
from tests.export.serving_fixtures import SERVING_DIR, fresh_report, request_images
from tests.retrain_fixtures import TINY_RETRAIN, retrained

text_format = pytest.importorskip("google.protobuf.text_format")
model_server_config_pb2 = pytest.importorskip(
    "tensorflow_serving.config.model_server_config_pb2",
    reason="tensorflow-serving-api is not installed (it is in the `test` extra: pip install -e '.[test]')")
predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")


def _models_config():
    with open(os.path.join(SERVING_DIR, "models.config")) as f:
        text = f.read()
    return text, text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_models_config_parses_and_its_base_path_holds_the_numbered_versions():
    text, config = _models_config()
    (model,) = config.model_config_list.config
    assert (model.name, model.model_platform, model.base_path) == ("captioner", "tensorflow", "/models/captioner")
    # The docker mount named beside it maps the export's base directory (`<workdir>/export/saved_model`, which
    # holds `1/`, `2/`, …) onto base_path: TF Serving finds the versions directly under base_path.
    mounts = re.findall(r'-v "\$PWD/(?P<host>[^":]+):(?P<container>[^"]+)"', text)
    host = dict((c, h) for h, c in mounts)[model.base_path]
    workdir_part = "runs/quickstart/"
    assert host.startswith(workdir_part)
    run = retrained()
    base = os.path.join(run.workdir, host[len(workdir_part):])
    exported = run.result.exports["saved_model"]
    assert os.path.dirname(exported) == base
    versions = [d for d in os.listdir(base) if re.fullmatch(r"\d+", d)]
    assert versions == [os.path.basename(exported)]
    assert os.path.isfile(os.path.join(base, versions[0], "saved_model.pb"))


def test_request_json_is_a_predict_request_for_serving_default():
    """request.json in the REST API's row form: one input per instance, a string tensor as {"b64": …}. It
    becomes the official PredictRequest for the model of models.config, with the signature's input name."""
    with open(os.path.join(SERVING_DIR, "request.json")) as f:
        request = json.load(f)
    report = fresh_report()
    assert request["signature_name"] == "serving_default" and request["signature_name"] in report["signatures"]
    inputs = report["inputs"]
    assert list(inputs) == ["images"] and inputs["images"][0] == "string"  # one input: bare instances allowed
    assert request["instances"] and all(set(i) == {"b64"} for i in request["instances"])

    _, config = _models_config()
    proto = predict_pb2.PredictRequest()
    proto.model_spec.name = config.model_config_list.config[0].name
    proto.model_spec.signature_name = request["signature_name"]
    proto.inputs["images"].CopyFrom(tf.make_tensor_proto(request_images(), dtype=tf.string))
    parsed = predict_pb2.PredictRequest.FromString(proto.SerializeToString())
    assert tf.make_ndarray(parsed.inputs["images"]).tolist() == request_images()


def test_request_json_captions_like_the_keras_model_in_a_fresh_process():
    run = retrained()
    served = fresh_report()["batches"]["request"]
    assert served["status"] == ["ok"] * len(request_images())
    pixels = tf.stack([tf.cast(tf.io.decode_png(x, channels=3), tf.float32) / 255.0 for x in request_images()])
    assert pixels.shape[1:3] != (run.data.image_size, run.data.image_size)  # the signature resizes it
    ids, _ = decode_captions(run.result.captioner, _to_model_pixels(pixels, run.data.image_size),
                             beam_width=TINY_RETRAIN.beam_width)
    assert served["captions"] == [run.data.vocab.decode(row) for row in ids.numpy()]
    np.testing.assert_array_equal(served["token_ids"], ids.numpy())
