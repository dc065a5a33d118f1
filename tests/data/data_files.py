"""Helpers of tests/data: tiny on-disk caption datasets with real image files written by Pillow."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from capnas_tf.data import shapes_tfds

TINY_SHAPES = shapes_tfds.TINY_SHAPES_CONFIG

WORDS = ["a", "dog", "cat", "runs", "on", "grass", "red", "ball", "the", "sits"]


def write_image(path: str, *, mode: str = "RGB", size: int = 20, seed: int = 0, fmt: str | None = None) -> str:
    """Writes a random image of `mode` (RGB, RGBA, L) at `path` and returns the path."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size, size + 4, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return path


def caption(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7)))).capitalize() + "."


def write_coco(root: str, num_images: int = 12, captions_per_image: int = 3, uncaptioned: int = 0) -> tuple[str, str]:
    """COCO-format annotations + JPEGs; the last `uncaptioned` images have no annotation."""
    image_dir = os.path.join(root, "images")
    images, annotations = [], []
    for i in range(num_images):
        name = f"img_{i:03d}.jpg"
        write_image(os.path.join(image_dir, name), seed=i)
        images.append({"id": 100 + i, "file_name": name, "width": 24, "height": 20})
        if i < num_images - uncaptioned:
            for j in range(captions_per_image):
                annotations.append({"id": len(annotations), "image_id": 100 + i, "caption": caption(10 * i + j)})
    path = os.path.join(root, "captions.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return path, image_dir


def write_karpathy(root: str, splits=("train",) * 8 + ("restval",) * 2 + ("val",) * 3 + ("test",) * 3,
                   with_filepath: bool = True) -> tuple[str, str]:
    """A Karpathy-split JSON (COCO style when `with_filepath`, else Flickr style) + JPEGs."""
    entries = []
    for i, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{i:04d}.jpg"
        write_image(os.path.join(root, folder if with_filepath else "", name), seed=50 + i)
        sentences = [{"raw": caption(100 * i + j), "tokens": caption(100 * i + j).lower().strip(".").split(),
                      "imgid": i, "sentid": 5 * i + j} for j in range(5)]
        entry = {"filename": name, "split": split, "sentences": sentences, "imgid": i,
                 "sentids": [s["sentid"] for s in sentences]}
        if with_filepath:
            entry.update(filepath=folder, cocoid=1000 + i)
        entries.append(entry)
    path = os.path.join(root, "dataset_coco.json")
    with open(path, "w") as f:
        json.dump({"images": entries, "dataset": "coco"}, f)
    return path, root
