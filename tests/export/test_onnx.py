"""The ONNX export: onnxruntime gives TensorFlow's greedy tokens exactly, and export/onnx_caption.py
(onnxruntime + numpy + Pillow) captions image files and rejects bad input clearly."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from capnas_tf.evaluate import decode_captions
from tests.retrain_fixtures import retrained, sample_test_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "export", "onnx_caption.py")


def _script_module():
    spec = importlib.util.spec_from_file_location("onnx_caption", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnxruntime_token_ids_equal_tensorflows_on_test_images():
    run = retrained()
    images, _ = sample_test_images(run.data, count=8)
    session = ort.InferenceSession(run.result.exports["onnx"], providers=["CPUExecutionProvider"])
    onnx_ids, onnx_scores = session.run(["token_ids", "scores"], {"images": images})
    tf_ids, tf_scores = decode_captions(run.result.captioner, images)
    np.testing.assert_array_equal(onnx_ids, tf_ids.numpy())
    np.testing.assert_allclose(onnx_scores, tf_scores.numpy(), rtol=1e-4, atol=1e-4)
    # The batch dimension is dynamic.
    np.testing.assert_array_equal(session.run(["token_ids"], {"images": images[:1]})[0], tf_ids.numpy()[:1])


def test_onnx_caption_script_prints_provider_and_tensorflows_captions(tmp_path):
    run = retrained()
    images, _ = sample_test_images(run.data, count=3)
    paths = []
    for k in range(3):
        path = str(tmp_path / f"img{k}.png")
        Image.fromarray((images[k] * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    out = subprocess.run([sys.executable, SCRIPT, "--model", run.result.exports["onnx"], *paths],
                         check=True, capture_output=True, text=True, timeout=300).stdout.splitlines()
    assert out[0] in ("provider: CPUExecutionProvider", "provider: CUDAExecutionProvider")
    tf_ids, _ = decode_captions(run.result.captioner, images)
    assert out[1:] == [f"{p}\t{run.data.vocab.decode(row)}" for p, row in zip(paths, tf_ids.numpy())]


def test_onnx_caption_script_rejects_a_file_that_is_not_an_image(tmp_path):
    run = retrained()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    proc = subprocess.run([sys.executable, SCRIPT, "--model", run.result.exports["onnx"], str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"{bad}: not a readable image" in proc.stderr


def test_onnx_caption_rejects_a_batch_of_the_wrong_rank_or_size():
    run = retrained()
    script = _script_module()
    session = script.make_session(run.result.exports["onnx"])
    vocab = script.load_vocab(os.path.join(os.path.dirname(run.result.exports["onnx"]), "vocab.txt"))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 16, 16, 3\]; received \[16, 16, 3\]"):
        script.caption(session, vocab, np.zeros([16, 16, 3], np.float32))
    with pytest.raises(ValueError, match=r"received \[2, 20, 20, 3\]"):
        script.caption(session, vocab, np.zeros([2, 20, 20, 3], np.float32))
    assert len(script.caption(session, vocab, np.zeros([2, 16, 16, 3], np.float32))) == 2
