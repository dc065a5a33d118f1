"""The ONNX export: onnxruntime gives the tokens of TensorFlow's decoding (the retrain's beam search) exactly,
and deploy/onnx_caption.py (onnxruntime + numpy + Pillow) captions the good files among bad ones, names each bad
file and why on stderr, refuses images over the pixel limit from their headers, and keeps stdout for the captions."""
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from capnas_tf.decoders.decoding import decode_captions
from tests.export.serving_fixtures import encoded, png_bomb, truncated_png, with_jpeg_size
from tests.retrain_fixtures import TINY_RETRAIN, retrained, sample_test_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "deploy", "onnx_caption.py")


def _script_module():
    spec = importlib.util.spec_from_file_location("onnx_caption", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 30–90 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_onnxruntime_token_ids_equal_tensorflows_on_test_images():
    run = retrained()
    images, _ = sample_test_images(run.data, count=8)
    session = ort.InferenceSession(run.result.exports["onnx"], providers=["CPUExecutionProvider"])
    onnx_ids, onnx_scores = session.run(["token_ids", "scores"], {"images": images})
    tf_ids, tf_scores = decode_captions(run.result.captioner, images, beam_width=TINY_RETRAIN.beam_width)
    np.testing.assert_array_equal(onnx_ids, tf_ids.numpy())
    np.testing.assert_allclose(onnx_scores, tf_scores.numpy(), rtol=1e-4, atol=1e-4)
    # The batch dimension is dynamic.
    np.testing.assert_array_equal(session.run(["token_ids"], {"images": images[:1]})[0], tf_ids.numpy()[:1])


def _run_script(model: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--model", model, *args], capture_output=True, text=True,
                          timeout=300)


def test_onnx_caption_script_captions_the_good_files_and_names_the_bad_ones(tmp_path):
    """stdout: `<path>\t<caption>` of the good files only, equal to TensorFlow's; stderr: the provider, then
    one line per bad file; exit status 1 (some captioned, some not)."""
    run = retrained()
    images, _ = sample_test_images(run.data, count=3)
    files = {"good0.png": encoded(images[0], "PNG"), "notes.png": b"not an image",
             "bomb.png": png_bomb(), "giant.jpg": with_jpeg_size(encoded(images[1], "JPEG"), 20000, 20000),
             "cut.png": truncated_png(), "good1.png": encoded(images[1], "PNG"), "good2.bmp": encoded(images[2], "BMP")}
    paths = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    missing = str(tmp_path / "missing.png")
    proc = _run_script(run.result.exports["onnx"], "--batch_size", "2", *paths.values(), missing)
    assert proc.returncode == 1, proc.stderr
    tf_ids, _ = decode_captions(run.result.captioner, images, beam_width=TINY_RETRAIN.beam_width)
    good = [paths["good0.png"], paths["good1.png"], paths["good2.bmp"]]
    assert proc.stdout.splitlines() == [f"{p}\t{run.data.vocab.decode(row)}" for p, row in zip(good, tf_ids.numpy())]
    err = proc.stderr.splitlines()
    assert err[0] in ("provider: CPUExecutionProvider", "provider: CUDAExecutionProvider") \
        or err[0].startswith("provider: CPUExecutionProvider (CUDAExecutionProvider did not start")
    assert err[1:] == [f"error: {paths['notes.png']}: not an image Pillow can read",
                       f"error: {paths['bomb.png']}: too large: 14000x14000 pixels, over the limit of 16777216",
                       f"error: {paths['giant.jpg']}: too large: 20000x20000 pixels, over the limit of 16777216",
                       f"error: {paths['cut.png']}: unreadable image (OSError: image file is truncated)",
                       f"error: {missing}: unreadable image (FileNotFoundError: [Errno 2] No such file or "
                       f"directory: '{missing}')"], proc.stderr


def test_onnx_caption_script_exits_2_when_no_file_is_captioned(tmp_path):
    run = retrained()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    proc = _run_script(run.result.exports["onnx"], str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"error: {bad}: not an image Pillow can read" in proc.stderr


def test_onnx_caption_pixel_limit_is_a_setting():
    from capnas_tf.config import RetrainConfig

    script = _script_module()
    assert script.MAX_PIXELS == RetrainConfig().export_max_pixels  # the SavedModel's default limit
    image = encoded(np.zeros([10, 20, 3]), "PNG")  # 200 pixels
    assert script.load_image(io.BytesIO(image), 16, max_pixels=200).shape == (16, 16, 3)
    with pytest.raises(script.ImageRejected, match="too large: 20x10 pixels, over the limit of 199"):
        script.load_image(io.BytesIO(image), 16, max_pixels=199)
    run = retrained()
    proc = _run_script(run.result.exports["onnx"], "--max_pixels", "0", "x.png")
    assert proc.returncode == 2 and "--max_pixels and --batch_size must be > 0" in proc.stderr


def test_onnx_caption_rejects_a_batch_of_the_wrong_rank_or_size():
    run = retrained()
    script = _script_module()
    session, _ = script.make_session(run.result.exports["onnx"])
    vocab = script.load_vocab(os.path.join(os.path.dirname(run.result.exports["onnx"]), "vocab.txt"))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 16, 16, 3\]; received \[16, 16, 3\]"):
        script.caption(session, vocab, np.zeros([16, 16, 3], np.float32))
    with pytest.raises(ValueError, match=r"received \[2, 20, 20, 3\]"):
        script.caption(session, vocab, np.zeros([2, 20, 20, 3], np.float32))
    assert len(script.caption(session, vocab, np.zeros([2, 16, 16, 3], np.float32))) == 2
