"""The SavedModel export: loads and serves in a fresh process that imports only tensorflow, captions each item
of a batch on its own (bad items get an error status, the others their captions, an empty batch empty
outputs), refuses images over the pixel limit from their headers, lists both signatures, matches the Keras
captioner, and backs `capnas_tf.caption`."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from capnas_tf.data.text import PAD_ID
from capnas_tf.decoders.decoding import decode_captions
from tests.export.serving_fixtures import ENV, REPO, encoded, fresh_report, png_bomb
from tests.retrain_fixtures import TINY_RETRAIN, retrained, sample_test_images

MIXED_STATUS = ["ok", "error: not a JPEG, PNG, GIF, BMP or WebP image", "error: undecodable image data",
                "error: too large: 14000x14000 pixels, over the limit of 16777216",
                "error: too large: 20000x20000 pixels, over the limit of 16777216",
                "ok", "error: not a JPEG, PNG, GIF, BMP or WebP image", "ok", "ok", "ok",
                "error: bad image header (no width or height)", "error: undecodable image data",
                *["error: BMP of fewer than 24 bits per pixel (palette, 1-bit or 16-bit): send it as PNG"] * 2]


def test_saved_model_serves_in_a_fresh_tensorflow_only_process():
    run = retrained()
    images, _ = sample_test_images(run.data, count=4)
    report = fresh_report()

    assert report["signatures"] == ["caption_pixels", "serving_default"]
    assert report["modules"] == []  # nothing but TensorFlow was needed
    assert report["inputs"] == {"images": ["string", [None]]}
    assert report["outputs"] == {"captions": "string", "token_ids": "int32", "scores": "float32", "status": "string"}
    formats = report["batches"]["formats"]
    # Each item decoded (at least <end>: the tiny model may end a caption at once), none left at the error's <pad>s.
    assert formats["status"] == ["ok"] * 4 and all(set(ids) != {PAD_ID} for ids in formats["token_ids"])
    expected, _ = decode_captions(run.result.captioner, images, beam_width=TINY_RETRAIN.beam_width)
    np.testing.assert_array_equal(report["pixel_ids"], expected.numpy())
    # A lossless PNG at the model's size is exactly the pixel input: same tokens through both signatures.
    assert formats["token_ids"][0] == report["pixel_ids"][0]
    assert formats["captions"][0] == run.data.vocab.decode(expected.numpy()[0])


def test_each_item_of_a_batch_is_captioned_on_its_own_and_bad_items_get_an_error_status():
    """Text, empty bytes, a truncated PNG, a PNG without IHDR, a JPEG cut before its SOF, two images whose
    headers declare 196 M and 400 M pixels, and a palette and a 1-bit BMP (which TensorFlow's decoder would
    misread or fail on), in one batch with good PNG, JPEG, GIF, BMP and WebP images."""
    report = fresh_report()
    mixed = report["batches"]["mixed"]
    assert mixed["status"] == MIXED_STATUS
    for k, status in enumerate(mixed["status"]):
        alone = mixed["alone"][k]
        assert alone["status"] == [status]  # the same verdict without the rest of the batch
        if status == "ok":
            assert set(mixed["token_ids"][k]) != {PAD_ID} and mixed["captions"][k] == alone["captions"][0]
            assert mixed["token_ids"][k] == alone["token_ids"][0]
            np.testing.assert_allclose(mixed["scores"][k], alone["scores"][0], rtol=1e-5, atol=1e-5)
        else:
            assert mixed["captions"][k] == "" and set(mixed["token_ids"][k]) == {0} and mixed["scores"][k] == 0
    # The first and the good PNG of the "formats" batch are the same file: same caption in any batch.
    assert mixed["captions"][0] == report["batches"]["formats"]["captions"][0]


def test_an_empty_batch_gives_empty_outputs():
    empty = fresh_report()["batches"]["empty"]
    assert {k: v for k, v in empty.items() if k != "alone"} == {
        "captions": [], "token_ids": [], "scores": [], "status": []}


def test_the_pixel_bomb_png_is_a_real_png_of_14000_squared_pixels_in_about_23_kb(monkeypatch):
    """The refused PNG is not a fake header: Pillow reads it as 14000 × 14000, 1-bit, and its data inflates
    to the full image (decoded here row by row only in zlib, not as pixels)."""
    import io
    import zlib

    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard would refuse to open it
    data = png_bomb()
    assert 15_000 < len(data) < 40_000
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (14000, 14000) and image.mode == "1"
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 14000 * (1 + 14000 // 8)


def test_saved_model_cli_lists_both_signatures():
    run = retrained()
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--all", "--dir", run.result.exports["saved_model"]], check=True,
                         capture_output=True, text=True, env=ENV, timeout=300).stdout
    assert "signature_def['serving_default']" in out and "signature_def['caption_pixels']" in out
    for name in ("captions", "token_ids", "scores"):
        assert f"outputs['{name}']" in out


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_caption_cli_prints_one_caption_per_image_and_names_the_bad_files(tmp_path):
    run = retrained()
    images, _ = sample_test_images(run.data, count=2)
    paths = []
    for k in range(2):
        path = tmp_path / f"x{k}.png"
        path.write_bytes(encoded(images[k], "PNG"))
        paths.append(str(path))
    not_an_image, missing = tmp_path / "notes.png", tmp_path / "missing.png"
    not_an_image.write_text("not an image")
    command = [sys.executable, "-m", "capnas_tf.caption", f"--model={run.workdir}"]
    mixed = subprocess.run([*command, paths[0], str(not_an_image), str(missing), paths[1]], capture_output=True,
                           text=True, env=ENV, cwd=REPO, timeout=300)
    assert mixed.returncode == 1, mixed.stderr[-2000:]  # some captioned, some not
    expected, _ = decode_captions(run.result.captioner, images[:2], beam_width=TINY_RETRAIN.beam_width)
    assert mixed.stdout.splitlines() == [f"{p}\t{run.data.vocab.decode(row)}" for p, row in zip(paths, expected.numpy())]
    errors = [line for line in mixed.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(": ")[1] for line in errors] == [str(not_an_image), str(missing)], mixed.stderr
    assert "cannot read the file" in errors[1]
    none = subprocess.run([*command, str(missing)], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert none.returncode == 2 and none.stdout == ""


def test_an_export_deletes_the_temp_directories_of_killed_exports(tmp_path, monkeypatch):
    """A killed export leaves `saved_model/.tmp-1-pid<N>-…` (or, between its two renames, `.old-…`); the next
    export removes those of dead processes. (The server is stubbed: what is saved does not matter here.)"""
    import tensorflow as tf

    from capnas_tf.export import saved_model

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = tmp_path / "export" / "saved_model"
    for name in (f".tmp-1-pid{dead.pid}-abc", ".tmp-1-untagged", f".old-pid{dead.pid}-def"):
        (base / name).mkdir(parents=True)
        (base / name / "saved_model.pb").write_text("partial")

    class Server(tf.Module):
        def __init__(self, *args):
            super().__init__()
            self.caption_images = self.caption_pixels = tf.function(lambda: tf.constant(1.0))

    monkeypatch.setattr(saved_model, "CaptionServer", Server)
    monkeypatch.setattr(tf.saved_model, "save",
                        lambda obj, path, signatures: open(os.path.join(path, "saved_model.pb"), "w").close())
    target = saved_model.export_saved_model(None, None, str(base), image_size=16)
    assert target == str(base / "1") and os.listdir(base) == ["1"]
