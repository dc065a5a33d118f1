"""The header reading behind the SavedModel's pixel limit (`image_header`, `checked_images`): width and height of
every format TensorFlow decodes, read without decoding, the limit's edge, and the limit as a setting
(`RetrainConfig.export_max_pixels`, `--export_max_pixels`, `CaptionServer(max_pixels=…)`)."""
import struct

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import RetrainConfig
from capnas_tf.export import saved_model
from capnas_tf.export.saved_model import (BAD_HEADER, OK, TOO_LARGE, UNDECODABLE, UNKNOWN_FORMAT, checked_images,
                                          image_header, status_messages)
from tests.export.serving_fixtures import encoded, png_bomb, truncated_png, with_jpeg_size

PIXELS = np.random.default_rng(0).random([10, 20, 3])  # H = 10, W = 20
EXIF = b"Exif\0\0II*\0\x08\0\0\0\0\0"  # an empty EXIF block: Pillow then writes the extended (VP8X) WebP


def _size(data: bytes) -> tuple:
    known, width, height = image_header(tf.constant(data))
    return bool(known), int(width), int(height)


@pytest.mark.parametrize("fmt, options, chunk", [
    ("PNG", {}, None), ("JPEG", {}, None), ("JPEG", {"progressive": True}, None), ("GIF", {}, None),
    ("BMP", {}, None), ("WEBP", {}, b"VP8 "), ("WEBP", {"lossless": True}, b"VP8L"),
    ("WEBP", {"exif": EXIF}, b"VP8X")])
def test_the_header_gives_the_size_of_every_format(fmt, options, chunk):
    data = encoded(PIXELS, fmt, **options)
    if chunk:  # the WebP flavour that is read
        assert data[12:16] == chunk
    assert _size(data) == (True, 20, 10)


def test_giant_sizes_come_from_the_header_alone():
    """Headers that declare far more pixels than their files hold: read as declared, nothing decoded."""
    bmp = bytearray(encoded(PIXELS, "BMP"))
    bmp[18:26] = struct.pack("<ii", 30000, -30000)  # a negative height: rows top-down
    gif = bytearray(encoded(PIXELS, "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    webp = bytearray(encoded(PIXELS, "WEBP", exif=EXIF))
    webp[24:30] = (16383).to_bytes(3, "little") * 2
    assert _size(png_bomb()) == (True, 14000, 14000)
    assert _size(with_jpeg_size(encoded(PIXELS, "JPEG"), 20000, 20000)) == (True, 20000, 20000)
    assert _size(bytes(bmp)) == (True, 30000, 30000)
    assert _size(bytes(gif)) == (True, 65535, 65535)
    assert _size(bytes(webp)) == (True, 16384, 16384)


def test_bytes_that_are_no_image_read_as_unknown_without_raising():
    for data in (b"", b"x", b"this is not an image", b"GIF", b"RIFF\0\0\0\0WAVE"):
        assert _size(data) == (False, 0, 0), data
    assert _size(b"\x89PNG\r\n\x1a\n") == (True, 0, 0)  # a PNG signature without IHDR: no size


def test_checked_images_refuses_above_the_limit_and_decodes_up_to_it():
    png = encoded(PIXELS, "PNG")  # 200 pixels
    images = tf.constant([png, png, b"text", truncated_png(), b"\x89PNG\r\n\x1a\n" + b"\0" * 30, png_bomb()])
    codes, widths, heights, pixels = checked_images(images, 8, 48 * 48)  # the truncated PNG is 48 × 48
    assert codes.numpy().tolist() == [OK, OK, UNKNOWN_FORMAT, UNDECODABLE, BAD_HEADER, TOO_LARGE]
    assert widths.numpy().tolist()[:2] == [20, 20] and heights.numpy().tolist()[:2] == [10, 10]
    assert pixels.shape == (6, 8, 8, 3) and float(tf.reduce_max(pixels[0])) > 0
    assert not np.any(pixels.numpy()[2:])  # blank where nothing was decoded
    codes, *_ = checked_images(tf.constant([png]), 8, 200)
    assert codes.numpy().tolist() == [OK]  # the limit itself passes
    codes, *_ = checked_images(tf.constant([png]), 8, 199)
    assert codes.numpy().tolist() == [TOO_LARGE]
    codes, widths, heights, pixels = checked_images(tf.constant([], tf.string), 8, 199)
    assert codes.shape == (0,) and pixels.shape == (0, 8, 8, 3)
    status = status_messages(tf.constant([OK, TOO_LARGE]), tf.constant([20, 20], tf.int64),
                             tf.constant([10, 10], tf.int64), 199)
    assert status.numpy().tolist() == [b"ok", b"error: too large: 20x10 pixels, over the limit of 199"]


def test_the_pixel_limit_is_an_export_setting_validated_positive():
    assert RetrainConfig().export_max_pixels == saved_model.MAX_PIXELS == 4096 * 4096
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="RetrainConfig.export_max_pixels must be an integer > 0"):
            RetrainConfig(export_max_pixels=bad)
    with pytest.raises(ValueError, match="max_pixels must be an integer > 0"):
        saved_model.CaptionServer(None, None, 8, max_pixels=0)


def test_the_export_max_pixels_flag_sets_the_config():
    from absl import flags

    from capnas_tf import flags as capnas_flags

    assert capnas_flags.RETRAIN_FLAGS["export_max_pixels"] == "export_max_pixels"
    assert flags.FLAGS["export_max_pixels"].default == RetrainConfig().export_max_pixels
    try:
        RetrainConfig(export_max_pixels=0)
    except ValueError as err:
        message = capnas_flags.describe_config_error(err)
    assert message.startswith("--export_max_pixels=") and message.endswith(": must be an integer > 0")
