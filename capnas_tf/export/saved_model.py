"""A TF Serving SavedModel of a captioner: image bytes in, captions out, everything in-graph.

Layout `<base>/<version>/` (TF Serving's versioned model directory). Signatures:

  serving_default  images: string [N] (encoded JPEG / PNG / GIF / BMP, any size, RGB, grey or alpha)
  caption_pixels   images: float32 [N, H, W, 3] in [0, 1] (resized to S × S if H, W ≠ S)

both returning `captions` string [N], `token_ids` int32 [N, T] (`w1 … <end> <pad> …`) and
`scores` float32 [N] (log p of the caption). Decoding, resizing, caption decoding and
detokenisation are stock TensorFlow ops, so the model loads with `import tensorflow` alone.
Bytes that are not an image fail that request with TensorFlow's decode error
("Unknown image file format…"); the loaded model keeps serving.
"""
from __future__ import annotations

import os
import re

import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.evaluate import decode_captions

SIGNATURES = ("serving_default", "caption_pixels")


def _to_model_pixels(images: tf.Tensor, size: int) -> tf.Tensor:
    """float [N, H, W, 3] in [0, 1] → float32 [N, S, S, 3], resized like the training data."""
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[1] == size and images.shape[2] == size:
        return images
    # Same as the data pipeline: antialiased bilinear on 0..255 values, rounded to uint8 levels.
    resized = tf.image.resize(images * 255.0, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0) / 255.0


def _decode_one(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image bytes → float32 [S, S, 3] in [0, 1] (grey replicated, alpha dropped, GIF frame 1)."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    return _to_model_pixels(tf.cast(image, tf.float32)[None] / 255.0, size)[0]


class CaptionServer(tf.Module):
    """The exported module: a captioner, its vocabulary, and the two serving functions.

    Args:
      captioner: a built `Captioner`.
      vocab: its `Vocabulary` (a tf.Module with stock-op lookup tables).
      image_size: S, the input side the captioner was trained at.
      beam_width: 1 = greedy decoding, K > 1 = beam search.
    """

    def __init__(self, captioner, vocab, image_size: int, beam_width: int = 1):
        super().__init__(name="caption_server")
        # Only the captioner's variables are tracked (as keras.export.ExportArchive does); the model itself
        # stays in the closures below. A Keras model as a child of the saved object makes TF trace Keras'
        # default serving signature, which fails for the two-input Captioner ("missing argument 'tokens'").
        self.model_variables = list(captioner.variables)
        self.vocab = vocab
        self.image_size = int(image_size)
        self.beam_width = int(beam_width)
        size, width = self.image_size, self.beam_width

        def outputs(pixels):
            ids, scores = decode_captions(captioner, pixels, beam_width=width)  # (N, T), (N,)
            return {"captions": vocab.detokenize(ids), "token_ids": tf.cast(ids, tf.int32),
                    "scores": tf.cast(scores, tf.float32)}

        def caption_images(images):
            pixels = tf.map_fn(lambda x: _decode_one(x, size), images,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return outputs(pixels)

        def caption_pixels(images):
            return outputs(_to_model_pixels(images, size))

        self.caption_images = tf.function(
            caption_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.caption_pixels = tf.function(
            caption_pixels, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])


def export_saved_model(captioner, vocab, base_dir: str, *, image_size: int, version: int = 1,
                       beam_width: int = 1) -> str:
    """Writes `<base_dir>/<version>/` atomically (temp dir, then rename) and returns its path. The temp
    directories that killed exports left in `<base_dir>` are deleted first (`io_utils.remove_stale_temps`).

    Args:
      captioner: a built `Captioner`.
      vocab: the `Vocabulary` of its decoder.
      base_dir: the model's base path (TF Serving `base_path`).
      version: the version directory's number.
      beam_width: decoding of the exported functions (1 = greedy).
      image_size: S, the side the captioner was trained at; other inputs are resized to it.
    """
    server = CaptionServer(captioner, vocab, image_size, beam_width)
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
