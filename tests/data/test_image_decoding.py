"""One decoder for the up-front check and for training: every image the check accepts enters training
with its own colours (1-bit and palette BMPs, palette PNGs, grey, RGBA, 16-bit, CMYK), and every image
it refuses is one training could not decode."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from capnas_tf.data import captions_io
from capnas_tf.data.captions_io import BadExampleError
from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data

SIZE = 16
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _two_colour_palette(top, bottom) -> Image.Image:
    """A palette image whose top half is colour index 0 and bottom half index 1."""
    image = Image.new("P", (SIZE, SIZE), 0)
    image.putpalette([*top, *bottom] + [0, 0, 0] * 254)
    image.paste(1, (0, SIZE // 2, SIZE, SIZE))
    return image


def _one_bit_left_white() -> Image.Image:
    image = Image.new("1", (SIZE, SIZE), 0)
    image.paste(1, (0, 0, SIZE // 2, SIZE))
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _grey16_png(value: int) -> bytes:
    return tf.io.encode_png(np.full((SIZE, SIZE, 1), value * 257, np.uint16)).numpy()


def _half(top, bottom) -> np.ndarray:
    expected = np.empty((SIZE, SIZE, 3), np.float64)
    expected[: SIZE // 2], expected[SIZE // 2:] = top, bottom
    return expected


def _left(left, right) -> np.ndarray:
    expected = np.empty((SIZE, SIZE, 3), np.float64)
    expected[:, : SIZE // 2], expected[:, SIZE // 2:] = left, right
    return expected


def _solid(colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float64), (SIZE, SIZE, 3))


# name -> (encoded file, the RGB pixels training must see, tolerance). Each is something Pillow reads
# and `tf.io.decode_image` alone rejects (1-bit BMP) or misreads (palette BMP: indices as grey).
CASES = {
    "bmp_1bit.bmp": (lambda: _encode(_one_bit_left_white(), "BMP"), _left((255,) * 3, (0,) * 3), 0),
    "bmp_palette.bmp": (lambda: _encode(_two_colour_palette(RED, GREEN), "BMP"), _half(RED, GREEN), 0),
    "bmp_grey.bmp": (lambda: _encode(Image.new("L", (SIZE, SIZE), 100), "BMP"), _solid((100,) * 3), 0),
    "bmp_rgb.bmp": (lambda: _encode(Image.new("RGB", (SIZE, SIZE), BLUE), "BMP"), _solid(BLUE), 0),
    "bmp_rgba.bmp": (lambda: _encode(Image.new("RGBA", (SIZE, SIZE), (*RED, 64)), "BMP"), _solid(RED), 0),
    "png_palette.png": (lambda: _encode(_two_colour_palette(BLUE, RED), "PNG"), _half(BLUE, RED), 0),
    "png_grey.png": (lambda: _encode(Image.new("L", (SIZE, SIZE), 100), "PNG"), _solid((100,) * 3), 0),
    "png_rgba.png": (lambda: _encode(Image.new("RGBA", (SIZE, SIZE), (*RED, 64)), "PNG"), _solid(RED), 0),
    "png_1bit.png": (lambda: _encode(_one_bit_left_white(), "PNG"), _left((255,) * 3, (0,) * 3), 0),
    "png_grey16.png": (lambda: _grey16_png(100), _solid((100,) * 3), 0),
    "gif_palette.gif": (lambda: _encode(_two_colour_palette(GREEN, BLUE), "GIF"), _half(GREEN, BLUE), 0),
    "jpeg_grey.jpg": (lambda: _encode(Image.new("L", (SIZE, SIZE), 100), "JPEG"), _solid((100,) * 3), 2),
    "jpeg_cmyk.jpg": (lambda: _encode(Image.new("RGB", (SIZE, SIZE), RED).convert("CMYK"), "JPEG"), _solid(RED), 8),
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """COCO-format annotations over one file per case, ids 100, 101, … in CASES order."""
    root = tmp_path_factory.mktemp("formats")
    images, annotations = [], []
    for i, (name, (encode, _, _)) in enumerate(CASES.items()):
        (root / name).write_bytes(encode())
        images.append({"id": 100 + i, "file_name": name})
        annotations.append({"image_id": 100 + i, "caption": f"a picture number {i}"})
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return str(path), str(root)


def test_every_accepted_format_enters_training_with_its_colours(image_folder):
    annotations, image_dir = image_folder
    for name in CASES:  # the up-front check accepts each
        assert captions_io.image_problem(os.path.join(image_dir, name)) is None, name
    data = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir,
                                        image_size=SIZE, min_word_count=1, batch_size=4, split_fractions=(1, 0, 0)))
    batches = list(data.eval_dataset("train", 4, pad_remainder=False).as_numpy_iterator())
    ids = np.concatenate([b["image_id"] for b in batches])
    images = np.concatenate([b["image"] for b in batches]) * 255.0
    assert ids.tolist() == list(range(100, 100 + len(CASES)))
    for (name, (_, expected, tolerance)), image in zip(CASES.items(), images):
        np.testing.assert_allclose(image, expected, atol=tolerance + 1e-3, err_msg=name)
    red_square = images[list(CASES).index("bmp_rgba.bmp")]
    np.testing.assert_allclose(red_square.mean(axis=(0, 1)), RED, atol=1e-3)
    assert next(iter(data.train_dataset(4)))["image"].shape == (4, SIZE, SIZE, 3)  # the training stream runs


def _damaged_bmp() -> bytes:
    return _encode(Image.new("RGB", (SIZE, SIZE), RED), "BMP")[:100]


def _tiff() -> bytes:
    return _encode(Image.new("RGB", (SIZE, SIZE), RED), "TIFF")


def _truncated_png() -> bytes:
    return _encode(Image.new("RGB", (SIZE, SIZE), RED), "PNG")[:60]


@pytest.mark.parametrize("encode", [*(encode for encode, _, _ in CASES.values()), _damaged_bmp, _tiff,
                                    _truncated_png, lambda: b"BM", lambda: b"<html>not found</html>"])
def test_the_check_accepts_exactly_what_training_decodes(tmp_path, encode):
    path = tmp_path / "image"
    path.write_bytes(encode())
    dataset = tf.data.Dataset.from_tensors(str(path)).map(
        lambda p: captions_io.decode_image_rgb(tf.io.read_file(p), p))
    try:
        list(dataset)
        trains = True
    except tf.errors.OpError:
        trains = False
    assert (captions_io.image_problem(str(path)) is None) == trains
    assert (captions_io.image_problem(encode()) is None) == trains  # encoded bytes: the same verdict


def test_a_broken_bmp_is_named_by_the_check_and_skipped_and_counted(tmp_path):
    from data_files import write_coco

    annotations, image_dir = write_coco(str(tmp_path), num_images=3, captions_per_image=1)
    with open(annotations) as f:
        coco = json.load(f)
    coco["images"][1]["file_name"] = "broken.bmp"
    with open(annotations, "w") as f:
        json.dump(coco, f)
    with open(os.path.join(image_dir, "broken.bmp"), "wb") as f:
        f.write(_damaged_bmp())
    config = DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir, image_size=8,
                        min_word_count=1, batch_size=1, split_fractions=(1, 0, 0))
    with pytest.raises(BadExampleError, match=r"images\[1\]: image 101 .*broken.bmp.*cannot be decoded"):
        load_caption_data(config)
    data = load_caption_data(DataConfig(**{**config.__dict__, "on_bad_example": "skip"}))
    assert data.skipped == {"bad_image": 1} and sorted(data.references("train")) == [100, 102]
    # Without the check, the decoder inside tf.data still names the file.
    unchecked = load_caption_data(DataConfig(**{**config.__dict__, "validate_images": False}))
    with pytest.raises(tf.errors.OpError, match="broken.bmp"):
        list(unchecked.eval_dataset("train", 1))
