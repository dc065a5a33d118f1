"""The SavedModel export: loads and serves in a fresh process that imports only tensorflow, survives a
non-image request, lists both signatures, matches the Keras captioner, and backs `capnas_tf.caption`."""
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

from capnas_tf.evaluate import decode_captions
from tests.retrain_fixtures import retrained, sample_test_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _encoded(pixels: np.ndarray, fmt: str, mode: str = "RGB", size: tuple | None = None) -> bytes:
    image = Image.fromarray((pixels * 255).round().astype(np.uint8)).convert(mode)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    args = json.load(open(sys.argv[1]))
    model = tf.saved_model.load(args["model"])
    serve = model.signatures["serving_default"]
    report = {"signatures": sorted(model.signatures)}
    files = [open(p, "rb").read() for p in args["files"]]
    out = serve(images=tf.constant(files))
    report["captions"] = [c.decode() for c in out["captions"].numpy()]
    report["ids"] = out["token_ids"].numpy().tolist()
    report["dtypes"] = {k: v.dtype.name for k, v in out.items()}
    try:
        serve(images=tf.constant([b"this is not an image"]))
        report["bad"] = "served"
    except tf.errors.InvalidArgumentError as err:
        report["bad"] = err.message
    report["after_bad"] = [c.decode() for c in serve(images=tf.constant(files[:1]))["captions"].numpy()]
    pixels = tf.constant(np.load(args["pixels"]))
    report["pixel_ids"] = model.signatures["caption_pixels"](images=pixels)["token_ids"].numpy().tolist()
    report["modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"capnas_tf", "tensorflow_text", "keras_hub"})
    json.dump(report, open(sys.argv[2], "w"))
""")


def test_saved_model_serves_in_a_fresh_tensorflow_only_process(tmp_path):
    run = retrained()
    images, ids = sample_test_images(run.data, count=4)
    files = []
    for k, (fmt, mode, size) in enumerate([("PNG", "RGB", None), ("JPEG", "RGB", (40, 30)),
                                           ("PNG", "L", None), ("PNG", "RGBA", (24, 24))]):
        path = tmp_path / f"image{k}.{fmt.lower()}"
        path.write_bytes(_encoded(images[k], fmt, mode, size))
        files.append(str(path))
    np.save(tmp_path / "pixels.npy", images)
    args = {"model": run.result.exports["saved_model"], "files": files, "pixels": str(tmp_path / "pixels.npy")}
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "serve.py").write_text(FRESH_PROCESS)
    subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(tmp_path / "args.json"),
                    str(tmp_path / "report.json")], check=True, env=ENV, cwd=str(tmp_path), timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())

    assert report["signatures"] == ["caption_pixels", "serving_default"]
    assert report["modules"] == []  # nothing but TensorFlow was needed
    assert report["dtypes"] == {"captions": "string", "token_ids": "int32", "scores": "float32"}
    assert len(report["captions"]) == 4
    assert "Unknown image file format" in report["bad"]
    assert report["after_bad"] == report["captions"][:1]
    expected, _ = decode_captions(run.result.captioner, images)
    np.testing.assert_array_equal(report["pixel_ids"], expected.numpy())
    # A lossless PNG at the model's size is exactly the pixel input: same tokens through both signatures.
    assert report["ids"][0] == report["pixel_ids"][0]
    assert report["captions"][0] == run.data.vocab.decode(expected.numpy()[0])


def test_saved_model_cli_lists_both_signatures():
    run = retrained()
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--all", "--dir", run.result.exports["saved_model"]], check=True,
                         capture_output=True, text=True, env=ENV, timeout=300).stdout
    assert "signature_def['serving_default']" in out and "signature_def['caption_pixels']" in out
    for name in ("captions", "token_ids", "scores"):
        assert f"outputs['{name}']" in out


def test_caption_cli_prints_one_caption_per_image(tmp_path):
    run = retrained()
    images, _ = sample_test_images(run.data, count=2)
    paths = []
    for k in range(2):
        path = tmp_path / f"x{k}.png"
        path.write_bytes(_encoded(images[k], "PNG"))
        paths.append(str(path))
    out = subprocess.run([sys.executable, "-m", "capnas_tf.caption", f"--model={run.workdir}", *paths],
                         check=True, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300).stdout
    lines = [line for line in out.splitlines() if "\t" in line]
    expected, _ = decode_captions(run.result.captioner, images[:2])
    assert lines == [f"{p}\t{run.data.vocab.decode(row)}" for p, row in zip(paths, expected.numpy())]


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
