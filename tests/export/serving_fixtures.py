"""Encoded test images (good, corrupt, and header-declared giants) and one fresh TensorFlow-only process that
serves the tiny retrained captioner's SavedModel for every test of tests/export that needs one (run once).

`serve_fresh(requests)` loads `tf.saved_model.load(path)` in a new Python that imports nothing but TensorFlow
and NumPy, sends each named batch of encoded images to `serving_default` (and each item of it alone), and
returns its outputs as lists. The requests of all tests are gathered in `fresh_report()` so that TensorFlow
starts and the model loads once.
"""
from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib

import numpy as np
from PIL import Image

from tests.retrain_fixtures import retrained, sample_test_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVING_DIR = os.path.join(REPO, "deploy", "serving")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def encoded(pixels: np.ndarray, fmt: str, mode: str = "RGB", size: tuple | None = None, **options) -> bytes:
    """float [H, W, 3] in [0, 1] → the bytes of an image file of format `fmt` (Pillow)."""
    image = Image.fromarray((pixels * 255).round().astype(np.uint8)).convert(mode)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(side: int = 14000) -> bytes:
    """A valid 1-bit grey PNG of side × side black pixels: ~23 KB for 14000 × 14000 (196 M pixels)."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(row * side, 9)) + _png_chunk(b"IEND", b""))


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size in its baseline SOF0 marker replaced (the entropy-coded data untouched)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def noise_png(seed: int = 0, side: int = 48) -> bytes:
    return encoded(np.random.default_rng(seed).random([side, side, 3]), "PNG")


def truncated_png() -> bytes:
    """A noisy PNG cut in the middle of its image data: a valid header, undecodable data."""
    data = noise_png()
    return data[:len(data) // 2]


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    args = json.load(open(sys.argv[1]))
    model = tf.saved_model.load(args["model"])
    serve = model.signatures["serving_default"]
    report = {"signatures": sorted(model.signatures)}
    report["inputs"] = {name: [spec.dtype.name, spec.shape.as_list()]
                        for name, spec in serve.structured_input_signature[1].items()}
    report["outputs"] = {name: spec.dtype.name for name, spec in serve.structured_outputs.items()}

    def as_lists(out):
        return {k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()] for k, v in out.items()}

    report["batches"] = {}
    for name, paths in args["batches"].items():
        items = [open(p, "rb").read() for p in paths]
        batch = as_lists(serve(images=tf.constant(items, tf.string)))
        batch["alone"] = [as_lists(serve(images=tf.constant([x], tf.string))) for x in items]
        report["batches"][name] = batch
    pixels = tf.constant(np.load(args["pixels"]))
    report["pixel_ids"] = model.signatures["caption_pixels"](images=pixels)["token_ids"].numpy().tolist()
    report["modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"capnas_tf", "tensorflow_text", "keras_hub"})
    json.dump(report, open(sys.argv[2], "w"))
""")


def serve_fresh(model: str, batches: dict[str, list[bytes]], pixels: np.ndarray) -> dict:
    """The fresh process's report for `batches` (name → encoded images) and the `caption_pixels` input."""
    with tempfile.TemporaryDirectory(prefix="capnas-serve-") as tmp:
        files = {}
        for name, items in batches.items():
            files[name] = []
            for k, data in enumerate(items):
                path = os.path.join(tmp, f"{name}-{k}")
                with open(path, "wb") as f:
                    f.write(data)
                files[name].append(path)
        np.save(os.path.join(tmp, "pixels.npy"), pixels)
        args = {"model": model, "batches": files, "pixels": os.path.join(tmp, "pixels.npy")}
        with open(os.path.join(tmp, "args.json"), "w") as f:
            json.dump(args, f)
        with open(os.path.join(tmp, "serve.py"), "w") as f:
            f.write(FRESH_PROCESS)
        subprocess.run([sys.executable, os.path.join(tmp, "serve.py"), os.path.join(tmp, "args.json"),
                        os.path.join(tmp, "report.json")], check=True, env=ENV, cwd=tmp, timeout=600)
        with open(os.path.join(tmp, "report.json")) as f:
            return json.load(f)


def request_images() -> list[bytes]:
    """The images of deploy/serving/request.json (TF Serving REST `instances`, `{"b64": …}` each)."""
    import base64

    with open(os.path.join(SERVING_DIR, "request.json")) as f:
        request = json.load(f)
    return [base64.b64decode(instance["b64"]) for instance in request["instances"]]


@functools.cache
def fresh_batches() -> dict[str, list[bytes]]:
    run = retrained()
    images, _ = sample_test_images(run.data, count=4)
    formats = [encoded(images[0], "PNG"), encoded(images[1], "JPEG", size=(40, 30)),
               encoded(images[2], "PNG", "L"), encoded(images[3], "PNG", "RGBA", size=(24, 24))]
    mixed = [encoded(images[0], "PNG"),                                    # 0 ok
             b"this is not an image",                                      # 1 unknown format
             truncated_png(),                                              # 2 undecodable
             png_bomb(),                                                   # 3 too large (PNG IHDR)
             with_jpeg_size(encoded(images[1], "JPEG"), 20000, 20000),     # 4 too large (JPEG SOF)
             encoded(images[1], "JPEG"),                                   # 5 ok
             b"",                                                          # 6 unknown format (empty)
             encoded(images[2], "GIF"),                                    # 7 ok
             encoded(images[2], "BMP"),                                    # 8 ok
             encoded(images[3], "WEBP", lossless=True),                    # 9 ok
             b"\x89PNG\r\n\x1a\n" + b"\0" * 30,                            # 10 bad header (no IHDR)
             encoded(images[1], "JPEG")[:100],                             # 11 JPEG without SOF: undecodable
             encoded(images[2], "BMP", "P"),                               # 12 palette BMP: refused
             encoded(images[2], "BMP", "1")]                               # 13 1-bit BMP: refused
    return {"formats": formats, "mixed": mixed, "empty": [], "request": request_images()}


@functools.cache
def fresh_report() -> dict:
    run = retrained()
    images, _ = sample_test_images(run.data, count=4)
    return serve_fresh(run.result.exports["saved_model"], fresh_batches(), images)
