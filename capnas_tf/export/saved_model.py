"""A TF Serving SavedModel of a captioner: image bytes in, captions out, everything in-graph.

Layout `<base>/<version>/` (TF Serving's versioned model directory). Signatures:

  serving_default  images: string [N] (encoded JPEG / PNG / GIF / BMP / WebP, RGB, grey or alpha)
  caption_pixels   images: float32 [N, H, W, 3] in [0, 1] (resized to S × S if H, W ≠ S)

both returning `captions` string [N], `token_ids` int32 [N, T] (`w1 … <end> <pad> …`) and
`scores` float32 [N] (log p of the caption); `serving_default` also returns `status` string [N]:
"ok", or "error: <why>" for an item it could not caption:

  error: not a JPEG, PNG, GIF, BMP or WebP image     (unknown leading bytes, e.g. text)
  error: bad image header (no width or height)        (a zero side, a PNG without IHDR)
  error: too large: <W>x<H> pixels, over the limit of <max_pixels>
  error: undecodable image data                       (a corrupt or truncated file)
  error: BMP of fewer than 24 bits per pixel          (palette, 1-bit or 16-bit: send PNG)

Every item is captioned on its own: an item in error gets `captions` "", `token_ids` all 0 (<pad>) and
`scores` 0, the other items of the batch their captions as if sent alone, and an empty batch gives
empty outputs. No request raises. The pixel limit (`max_pixels`, `RetrainConfig.export_max_pixels`) is
checked against the width and height in the file's header (PNG IHDR, JPEG SOF, GIF logical screen,
BMP info header, WebP VP8/VP8L/VP8X), before anything is decoded, so a 23 KB PNG that declares
14000 × 14000 pixels is refused without allocating them. Decoding runs in a `tf.data` pipeline whose
`ignore_errors` drops the items a decoder rejects; the graph marks them undecodable. (A GIF's frames
after the first are still inflated by giflib before the first is kept; LZW bounds that to a few
thousand pixels per byte of the request.)
Decoding, resizing, caption decoding and detokenisation are stock TensorFlow ops, so the model loads
with `import tensorflow` alone.
"""
from __future__ import annotations

import functools
import os
import re

import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.decoders.decoding import decode_captions

SIGNATURES = ("serving_default", "caption_pixels")


def _to_model_pixels(images: tf.Tensor, size: int) -> tf.Tensor:
    """float [N, H, W, 3] in [0, 1] → float32 [N, S, S, 3], resized like the training data."""
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[1] == size and images.shape[2] == size:
        return images
    # Same as the data pipeline: antialiased bilinear on 0..255 values, rounded to uint8 levels.
    resized = tf.image.resize(images * 255.0, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0) / 255.0


MAX_PIXELS = 4096 * 4096  # default of `max_pixels` (RetrainConfig.export_max_pixels)
OK, UNKNOWN_FORMAT, BAD_HEADER, TOO_LARGE, UNDECODABLE, LOW_DEPTH_BMP = range(6)  # status codes, in-graph
_MESSAGES = ("ok", "error: not a JPEG, PNG, GIF, BMP or WebP image", "error: bad image header (no width or height)",
             "error: too large", "error: undecodable image data",
             "error: BMP of fewer than 24 bits per pixel (palette, 1-bit or 16-bit): send it as PNG")
_HEAD = 32  # leading bytes that hold the dimensions of every format read here (JPEG aside)


def _matches(head: tf.Tensor, offset: int, magic: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[offset:offset + len(magic)], tf.constant(list(magic), tf.int64)))


def _unsigned(head: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    digits = head[offset:offset + size]
    weights = [256 ** k for k in range(size)]
    return tf.reduce_sum(digits * tf.constant(weights[::-1] if big_endian else weights, tf.int64))


def _head_bytes(encoded: tf.Tensor) -> tf.Tensor:
    """The first `_HEAD` bytes of one encoded image as int64 [32], zero-padded (shorter strings: no raise)."""
    first = tf.strings.substr(encoded, 0, _HEAD)
    padded = tf.strings.substr(tf.strings.join([first, tf.constant(b"\0" * _HEAD)]), 0, _HEAD)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)


def low_depth_bmp(encoded: tf.Tensor) -> tf.Tensor:
    """Whether one encoded image is a BMP of fewer than 24 bits per pixel (info header, offset 28).
    TensorFlow's BMP decoder fails on 1-bit ones and reads 8-bit palette indices as grey levels, so
    these are refused rather than captioned from the wrong pixels (the training pipeline converts them
    with Pillow, which a SavedModel cannot call)."""
    head = _head_bytes(encoded)
    return _matches(head, 0, b"BM") & (_unsigned(head, 28, 2, False) < 24)


def image_header(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(`known` bool, `width` int64, `height` int64) of one encoded image, from its header alone.

    `known` is False for bytes that are no JPEG, PNG, GIF, BMP or WebP (0 × 0 then); a side that the
    header does not give reads 0. Nothing is decoded: the other formats are read from the first 32
    bytes, JPEG by `tf.io.extract_jpeg_shape` (libjpeg reading up to the SOF marker), which raises on a
    JPEG without one; the caller runs this where errors are contained.
    """
    head = _head_bytes(encoded)
    u = functools.partial(_unsigned, head)
    zero = tf.constant(0, tf.int64)

    def signed32(offset):  # BMP: a negative height means top-down rows
        value = u(offset, 4, False)
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded, output_type=tf.int64)  # [H, W, C]
        return shape[1], shape[0]

    def webp():
        vp8l = u(21, 4, False)
        return tf.case([(_matches(head, 12, b"VP8 "), lambda: (u(26, 2, False) % 2 ** 14, u(28, 2, False) % 2 ** 14)),
                        (_matches(head, 12, b"VP8L"), lambda: (vp8l % 2 ** 14 + 1, vp8l // 2 ** 14 % 2 ** 14 + 1)),
                        (_matches(head, 12, b"VP8X"), lambda: (u(24, 3, False) + 1, u(27, 3, False) + 1))],
                       default=lambda: (zero, zero))

    is_png = _matches(head, 0, b"\x89PNG\r\n\x1a\n")
    is_jpeg = _matches(head, 0, b"\xff\xd8\xff")
    is_gif = _matches(head, 0, b"GIF8")
    is_bmp = _matches(head, 0, b"BM")
    is_webp = _matches(head, 0, b"RIFF") & _matches(head, 8, b"WEBP")
    png_ihdr = _matches(head, 12, b"IHDR")
    width, height = tf.case(
        [(is_png, lambda: (tf.where(png_ihdr, u(16, 4, True), zero), tf.where(png_ihdr, u(20, 4, True), zero))),
         (is_jpeg, jpeg),
         (is_gif, lambda: (u(6, 2, False), u(8, 2, False))),
         (is_bmp, lambda: (signed32(18), signed32(22))),
         (is_webp, webp)],
        default=lambda: (zero, zero), exclusive=True)
    known = is_png | is_jpeg | is_gif | is_bmp | is_webp
    return known, width, height


def _checked_pixels(encoded: tf.Tensor, size: int, max_pixels: int):
    """(status code, width, height, float32 [S, S, 3]) of one item; decodes only an item that passed its
    header check (blank pixels otherwise). Raises (→ dropped by `ignore_errors`) for undecodable data."""
    known, width, height = image_header(encoded)
    too_large = tf.cast(width, tf.float64) * tf.cast(height, tf.float64) > float(max_pixels)
    code = tf.case([(tf.logical_not(known), lambda: tf.constant(UNKNOWN_FORMAT)),
                    ((width <= 0) | (height <= 0), lambda: tf.constant(BAD_HEADER)),
                    (too_large, lambda: tf.constant(TOO_LARGE)),
                    (low_depth_bmp(encoded), lambda: tf.constant(LOW_DEPTH_BMP))],
                   default=lambda: tf.constant(OK))

    def decode():
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        return _to_model_pixels(tf.cast(image, tf.float32)[None] / 255.0, size)[0]

    pixels = tf.cond(code == OK, decode, lambda: tf.zeros([size, size, 3], tf.float32))
    return code, width, height, pixels


def checked_images(images: tf.Tensor, size: int, max_pixels: int):
    """Encoded images string [N] → (codes int32 [N], widths, heights int64 [N], float32 [N, S, S, 3]).

    Item by item, in a `tf.data` pipeline whose `ignore_errors` drops the items whose header or data
    a decoder rejects: those come back as `UNDECODABLE` (0 × 0, blank pixels). Never raises.
    """
    n = tf.shape(images)[0]
    items = tf.data.Dataset.from_tensor_slices((tf.range(n), images))
    items = items.map(lambda k, x: (k, *_checked_pixels(x, size, max_pixels))).ignore_errors()
    empty = (tf.zeros([0], tf.int32), tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.zeros([0], tf.int64),
             tf.zeros([0, size, size, 3], tf.float32))
    kept = items.batch(tf.cast(tf.maximum(n, 1), tf.int64)).reduce(
        empty, lambda state, batch: tuple(tf.concat([s, b], 0) for s, b in zip(state, batch)))
    index, codes, widths, heights, pixels = kept
    at = index[:, None]
    codes = tf.tensor_scatter_nd_update(tf.fill([n], UNDECODABLE), at, codes)
    widths = tf.scatter_nd(at, widths, tf.cast([n], tf.int32))
    heights = tf.scatter_nd(at, heights, tf.cast([n], tf.int32))
    pixels = tf.scatter_nd(at, pixels, tf.stack([n, size, size, 3]))
    return codes, widths, heights, pixels


def status_messages(codes: tf.Tensor, widths: tf.Tensor, heights: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """The `status` output: "ok" or "error: …" per item (see the module docstring)."""
    plain = tf.gather(tf.constant(_MESSAGES), codes)
    too_large = tf.strings.join([f"{_MESSAGES[TOO_LARGE]}: ", tf.strings.as_string(widths), "x",
                                 tf.strings.as_string(heights), f" pixels, over the limit of {max_pixels}"])
    return tf.where(tf.equal(codes, TOO_LARGE), too_large, plain)


class CaptionServer(tf.Module):
    """The exported module: a captioner, its vocabulary, and the two serving functions.

    Args:
      captioner: a built `Captioner`.
      vocab: its `Vocabulary` (a tf.Module with stock-op lookup tables).
      image_size: S, the input side the captioner was trained at.
      beam_width: 1 = greedy decoding, K > 1 = beam search.
      max_pixels: `serving_default` refuses an image whose header gives more pixels (width × height).
    """

    def __init__(self, captioner, vocab, image_size: int, beam_width: int = 1, max_pixels: int = MAX_PIXELS):
        super().__init__(name="caption_server")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
            raise ValueError(f"max_pixels must be an integer > 0, received {max_pixels!r}.")
        # Only the captioner's variables are tracked (as keras.export.ExportArchive does); the model itself
        # stays in the closures below. A Keras model as a child of the saved object makes TF trace Keras'
        # default serving signature, which fails for the two-input Captioner ("missing argument 'tokens'").
        self.model_variables = list(captioner.variables)
        self.vocab = vocab
        self.image_size = int(image_size)
        self.beam_width = int(beam_width)
        self.max_pixels = int(max_pixels)
        size, width, limit = self.image_size, self.beam_width, self.max_pixels
        length = int(captioner.decoder.max_len)  # T, the caption length decode_captions returns

        def outputs(pixels):
            ids, scores = decode_captions(captioner, pixels, beam_width=width)  # (N, T), (N,)
            return {"captions": vocab.detokenize(ids), "token_ids": tf.cast(ids, tf.int32),
                    "scores": tf.cast(scores, tf.float32)}

        def caption_images(images):
            codes, widths, heights, pixels = checked_images(images, size, limit)
            good = tf.cast(tf.where(tf.equal(codes, OK)), tf.int32)  # [M, 1]: only these are captioned
            # The encoder cannot take an empty batch (oneDNN's batch norm fails on [0, S, S, C]).
            out = tf.cond(tf.size(good) > 0, lambda: outputs(tf.gather_nd(pixels, good)),
                          lambda: {"captions": tf.zeros([0], tf.string), "token_ids": tf.zeros([0, length], tf.int32),
                                   "scores": tf.zeros([0], tf.float32)})
            n = tf.shape(images)[0]
            return {"captions": tf.tensor_scatter_nd_update(tf.fill([n], ""), good, out["captions"]),
                    "token_ids": tf.scatter_nd(good, out["token_ids"], tf.stack([n, length])),
                    "scores": tf.scatter_nd(good, out["scores"], tf.stack([n])),
                    "status": status_messages(codes, widths, heights, limit)}

        def caption_pixels(images):
            return outputs(_to_model_pixels(images, size))

        self.caption_images = tf.function(
            caption_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.caption_pixels = tf.function(
            caption_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])


def export_saved_model(captioner, vocab, base_dir: str, *, image_size: int, version: int = 1,
                       beam_width: int = 1, max_pixels: int = MAX_PIXELS) -> str:
    """Writes `<base_dir>/<version>/` atomically (temp dir, then rename) and returns its path. The temp
    directories that killed exports left in `<base_dir>` are deleted first (`io_utils.remove_stale_temps`).

    Args:
      captioner: a built `Captioner`.
      vocab: the `Vocabulary` of its decoder.
      base_dir: the model's base path (TF Serving `base_path`).
      version: the version directory's number.
      beam_width: decoding of the exported functions (1 = greedy).
      image_size: S, the side the captioner was trained at; other inputs are resized to it.
      max_pixels: `serving_default` refuses images with more pixels than this (read from their headers).
    """
    server = CaptionServer(captioner, vocab, image_size, beam_width, max_pixels)
    signatures = {"serving_default": server.caption_images.get_concrete_function(),
                  "caption_pixels": server.caption_pixels.get_concrete_function()}
    target = os.path.join(base_dir, str(int(version)))
    # The temp and moved-aside directories of an export that was killed half-way (one per killed run).
    io_utils.remove_stale_temps(base_dir)
    # Built in a temp directory beside the target, then renamed over it, with os.mkdir's permissions
    # (not mkdtemp's 0700) so that a server running as another user can read it.
    with io_utils.atomic_directory(target, prefix=f".tmp-{version}-") as tmp:
        tf.saved_model.save(server, tmp, signatures=signatures)
    return target


def find_saved_model(path: str) -> str:
    """The SavedModel directory of `path`: itself, its newest version, or that of `saved_model/` or
    `export/saved_model/` under it."""
    for base in (path, os.path.join(path, "saved_model"), os.path.join(path, "export", "saved_model")):
        if os.path.isfile(os.path.join(base, "saved_model.pb")):
            return base
        if os.path.isdir(base):
            versions = [int(d) for d in os.listdir(base)
                        if re.fullmatch(r"\d+", d) and os.path.isfile(os.path.join(base, d, "saved_model.pb"))]
            if versions:
                return os.path.join(base, str(max(versions)))
    raise FileNotFoundError(f"no SavedModel under {path!r}: expected saved_model.pb in it, in a version "
                            "directory <n>/, or under saved_model/ or export/saved_model/.")
