"""Reading captioned image collections into plain records, with bad inputs caught up front.

Sources:
  * COCO-format caption annotations (`{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}`) plus a folder of images: `read_coco_captions`. Images listed
    without any annotation come back with no captions (usable as unlabeled images).
  * Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`:
    `{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", "tokens"}], "imgid",
    "cocoid"?}]}`) plus the image root: `read_karpathy_split`.
  * A folder of images without captions: `read_image_folder`.
  * TFDS `coco_captions` (COCO 2014 with the Karpathy splits; downloads ~20 GB on first use):
    `load_tfds_coco_captions` / `read_tfds_coco_captions`.

Images are decoded by one function, `decode_image_rgb`, both when they are checked here and when
the tf.data pipeline trains on them: BMP files (whose 1-bit, palette, 16-bit and compressed variants
`tf.io.decode_image` rejects or misreads as grey palette indices) are decoded by Pillow and converted
to RGB; JPEG, PNG and GIF by `tf.io.decode_image(channels=3)`, as the exported SavedModel decodes
them. Grey, palette, 16-bit, CMYK and RGBA images all come out as their RGB colours (alpha dropped).

Bad inputs are found here, in Python, before any tf.data pipeline runs, so that the message names
the file and the problem. A missing or malformed annotation file (or one in the other format)
always raises. A bad example — an image entry without an integer id, a file name that is absolute
or leads out of the image folder, an annotation naming an unknown image, a missing, truncated,
corrupt or unsupported image, a caption that is not text, not valid Unicode, or empty after removing
punctuation — raises `BadExampleError` naming the file and entry under `on_bad_example="error"`, and
is dropped, logged and counted under `"skip"` (see `BadExamples`).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import math
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from capnas_tf.data.text import caption_words

logger = logging.getLogger(__name__)

# What the training decoder reads (`decode_image_rgb`), and the file names `read_image_folder` lists.
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
ON_BAD_EXAMPLE = ("error", "skip")
_MAX_ID = 2**63 - 1


class BadExampleError(ValueError):
    """One example (image or caption) cannot be used; the message names the file and the problem."""


class BadAnnotationFileError(ValueError):
    """An annotation file is unreadable, lacks the fields of its format, or is in the other format."""


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One image and its reference captions.

    Exactly one of `image_path` / `image_bytes` is set, except for records read from TFDS
    without images (references only). `split` is the Karpathy split name where known.
    """

    image_id: int
    captions: tuple[str, ...]
    image_path: str | None = None
    image_bytes: bytes | None = None
    split: str | None = None


class BadExamples:
    """The `on_bad_example` policy: raise `BadExampleError`, or drop the example, log it and count it.

    Args:
      on_bad_example: "error" or "skip".
    """

    def __init__(self, on_bad_example: str = "error"):
        if on_bad_example not in ON_BAD_EXAMPLE:
            raise ValueError(f"on_bad_example must be one of {ON_BAD_EXAMPLE}, received {on_bad_example!r}.")
        self.on_bad_example = on_bad_example
        self.counts: collections.Counter[str] = collections.Counter()

    def report(self, where: str, problem: str, *, kind: str) -> None:
        """Raises, or counts one skip of `kind` ("missing_image", "bad_image", "empty_caption", …)."""
        message = f"{where}: {problem}"
        if self.on_bad_example == "error":
            raise BadExampleError(message + " (--on_bad_example=skip drops such examples, logs and counts them)")
        self.counts[kind] += 1
        logger.warning("Skipping bad example: %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --- images: the one decoder ------------------------------------------------------------------------

def _is_bmp(head: bytes) -> bool:
    return head[:2] == b"BM"


def pillow_rgb(data: bytes) -> np.ndarray:
    """uint8 `[h, w, 3]` of an encoded image, decoded by Pillow (the BMP branch of `decode_image_rgb`).

    Palette and 1-bit images become their palette colours, grey is replicated, alpha is dropped
    (not composited, as `tf.io.decode_image` does), 16-bit values keep their high byte (as libpng).
    """
    import warnings  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode.startswith("I;16") or image.mode == "I":
            grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        with warnings.catch_warnings():  # "palette images with transparency …": alpha is dropped anyway
            warnings.simplefilter("ignore")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"image has shape {rgb.shape}")
    return rgb


def _pillow_rgb_op(data: bytes, where: bytes) -> np.ndarray:
    try:
        return pillow_rgb(data)
    except Exception as error:  # noqa: BLE001 (Pillow raises many types for corrupt data)
        raise ValueError(f"{where.decode('utf-8', 'replace')}: image cannot be decoded "
                         f"({type(error).__name__}: {error})") from error


def decode_image_rgb(encoded, where=""):
    """uint8 `[h, w, 3]` of an encoded image (a scalar string tensor); graph code.

    The decoder of training and of the up-front check alike: BMP through Pillow (`pillow_rgb`, in a
    `tf.numpy_function` whose errors name `where`), everything else through
    `tf.io.decode_image(channels=3, expand_animations=False)` (GIF: the first frame).
    """
    import tensorflow as tf  # noqa: PLC0415

    encoded = tf.convert_to_tensor(encoded, tf.string)
    where = tf.convert_to_tensor(where, tf.string)

    def with_pillow():
        image = tf.numpy_function(_pillow_rgb_op, [encoded, where], tf.uint8, stateful=False)
        return tf.ensure_shape(image, [None, None, 3])

    def with_tensorflow():
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    return tf.cond(tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"), with_pillow, with_tensorflow)


def image_problems(sources: Sequence[str | bytes]) -> dict[int, str]:
    """`{index: why it cannot be used}` for the image files (paths) or encoded images (bytes) that fail.

    Each image is decoded exactly as training decodes it (`decode_image_rgb`): BMPs by `pillow_rgb`
    here, the rest by one parallel tf.data pass of `tf.io.decode_image`. Missing files, truncated or
    corrupt data and formats the decoder does not read are all caught here rather than inside tf.data.
    """
    problems: dict[int, str] = {}
    by_tensorflow = []
    for i, source in enumerate(sources):
        if isinstance(source, str) and not os.path.isfile(source):
            problems[i] = "image file does not exist"
            continue
        try:
            data = _read(source, 2)
        except OSError as error:
            problems[i] = f"image file cannot be read ({error})"
            continue
        if _is_bmp(data):
            try:
                pillow_rgb(_read(source))
            except Exception as error:  # noqa: BLE001
                problems[i] = f"image cannot be decoded ({type(error).__name__}: {error})"
        else:
            by_tensorflow.append(i)
    for of_type in (str, bytes):  # one tf.data pass for the paths, one for the encoded images
        indices = [i for i in by_tensorflow if isinstance(sources[i], of_type)]
        if indices:
            for j in _tensorflow_failures([sources[i] for i in indices]):
                problems[indices[j]] = _decode_failure(sources[indices[j]])
    return dict(sorted(problems.items()))


def image_problem(source: str | bytes) -> str | None:
    """Why one image file (path) or encoded image (bytes) cannot be used, or None (see `image_problems`)."""
    return image_problems([source]).get(0)


def _read(source: str | bytes, size: int = -1) -> bytes:
    if isinstance(source, bytes):
        return source if size < 0 else source[:size]
    with open(source, "rb") as f:
        return f.read(size)


def _tensorflow_failures(sources: list[str | bytes]) -> list[int]:
    """Indices of the sources that `decode_image_rgb` fails on (or decodes to an empty image)."""
    import tensorflow as tf  # noqa: PLC0415

    from_files = isinstance(sources[0], str)

    def attempt(index, source):
        image = decode_image_rgb(tf.io.read_file(source) if from_files else source, source if from_files else "")
        return index, tf.reduce_min(tf.shape(image)[:2])  # (depends on the image: the decode is not pruned)

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(sources), dtype=tf.int64),
                                                  tf.constant(sources, tf.string)))
    dataset = dataset.map(attempt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    decoded = {int(i) for i, size in dataset.ignore_errors(log_warning=False).as_numpy_iterator() if size > 0}
    return [i for i in range(len(sources)) if i not in decoded]


def _decode_failure(source: str | bytes) -> str:
    """The message for an image `decode_image_rgb` fails on: TensorFlow's reason, and Pillow's view of it."""
    import tensorflow as tf  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    try:
        encoded = tf.io.read_file(source) if isinstance(source, str) else tf.constant(source)
        image = decode_image_rgb(encoded)
        reason = f"decoded to an empty image of shape {tuple(image.shape)}"
    except tf.errors.OpError as error:
        reason = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", error.message.strip().splitlines()[0])
        reason = re.sub(r"\s*name:\s*$", "", reason)
    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            if image.format not in DECODABLE_FORMATS:
                return (f"image format {image.format} is not one of {', '.join(DECODABLE_FORMATS)} "
                        f"(what the training decoder reads)")
            image.load()
            pillow = f"{image.format} {image.width}x{image.height} {image.mode}, which Pillow decodes"
    except Exception as error:  # noqa: BLE001
        pillow = f"{type(error).__name__}: {error}"
    return f"image cannot be decoded (TensorFlow: {reason}; Pillow: {pillow})"


# --- captions -------------------------------------------------------------------------------------

def clean_captions(captions: Iterable[str], where: str, bad: BadExamples) -> tuple[str, ...]:
    """The captions with at least one word after normalisation; each other one is reported."""
    kept = []
    for caption in captions:
        if not isinstance(caption, str):
            bad.report(where, f"caption {caption!r} is not a string", kind="bad_caption")
        elif not _is_unicode(caption):
            bad.report(where, f"caption {caption!r} is not valid Unicode text (it holds a lone surrogate "
                       "code point, e.g. a \\ud800 escape in the JSON)", kind="bad_caption")
        elif not caption_words(caption):
            bad.report(where, f"caption {caption!r} is empty after removing punctuation", kind="empty_caption")
        else:
            kept.append(caption.strip())
    return tuple(kept)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- image entries of an annotation file ------------------------------------------------------------

@dataclasses.dataclass
class _Entry:
    """One image of an annotation file, before its image and captions are checked."""

    image_id: int
    path: str
    captions: list
    had_captions: bool
    where: str
    split: str | None = None


def _image_id(value: Any) -> int | None:
    """The non-negative int64 image id written as `value` (int, integral float, or decimal string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and 0 <= value <= _MAX_ID:
        return value
    return None


def _entry_image_id(entry: Any, keys: tuple[str, ...], where: str, bad: BadExamples, *, needs: str,
                    id_key: str, id_name: str) -> int | None:
    """The image id `entry[id_key]` of an annotation-file entry that is a dict with `keys`; None, reported
    to `bad` as a bad annotation (`needs` or "<id_name> … is not a non-negative integer"), otherwise."""
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        bad.report(where, needs, kind="bad_annotation")
        return None
    image_id = _image_id(entry[id_key])
    if image_id is None:
        bad.report(where, f"{id_name} {entry[id_key]!r} is not a non-negative integer", kind="bad_annotation")
    return image_id


def _path_in(folder: str, name: Any) -> tuple[str | None, str | None]:
    """(the path of image `name` inside `folder`, None), or (None, why not): `name` must be a relative
    path that stays inside `folder` (judged on the names, so symbolic links inside it are followed)."""
    if not isinstance(name, str) or not name.strip():
        return None, f"file name {name!r} is not a file name"
    if os.path.isabs(name):
        return None, f"file name {name!r} is an absolute path; file names must be relative to the image folder {folder}"
    relative = os.path.normpath(name)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None, f"file name {name!r} leads outside the image folder {folder}"
    return os.path.join(folder, relative), None


def _finish(entries: list[_Entry], *, validate_images: bool, bad: BadExamples) -> list[CaptionRecord]:
    """The usable records of `entries` (in order); each unusable image or caption is reported."""
    if validate_images:
        problems = image_problems([e.path for e in entries])
    else:
        problems = {i: "image file does not exist" for i, e in enumerate(entries) if not os.path.isfile(e.path)}
    records = []
    for i, entry in enumerate(entries):
        if i in problems:
            bad.report(entry.where, problems[i],
                       kind="missing_image" if "does not exist" in problems[i] else "bad_image")
            continue
        kept = clean_captions(entry.captions, entry.where, bad)
        if entry.had_captions and not kept:
            bad.report(entry.where, "no usable caption left", kind="no_caption")
            continue
        records.append(CaptionRecord(image_id=entry.image_id, captions=kept, image_path=entry.path, split=entry.split))
    return records


# --- COCO format ----------------------------------------------------------------------------------

def read_coco_captions(annotation_file: str, image_dir: str, *, validate_images: bool = True,
                       bad: BadExamples | None = None) -> list[CaptionRecord]:
    """Reads COCO-format caption annotations and their image folder.

    Args:
      annotation_file: JSON with `images` (`id`, `file_name`) and `annotations` (`image_id`, `caption`).
      image_dir: folder that `file_name` is relative to (a name may not lead outside it).
      validate_images: decode every image once with the training decoder to catch bad files now.
      bad: the bad-example policy (default: raise).

    Returns:
      One record per usable image, sorted by image_id. Images without annotations have no captions.
    """
    bad = bad or BadExamples()
    data = _load_json(annotation_file, "COCO caption annotation file")
    _expect_format(data, "coco", annotation_file)
    images = _require_list(data, "images", annotation_file)
    annotations = _require_list(data, "annotations", annotation_file)
    files: dict[int, tuple[str, str]] = {}
    for i, entry in enumerate(images):
        where = f"{annotation_file}: images[{i}]"
        image_id = _entry_image_id(entry, ("id", "file_name"), where, bad, id_key="id", id_name="image id",
                                   needs="an image entry needs 'id' and 'file_name'")
        if image_id is None:
            continue
        if image_id in files:
            raise BadAnnotationFileError(f"{where}: image id {image_id} is listed twice.")
        path, problem = _path_in(image_dir, entry["file_name"])
        if problem:
            bad.report(where, problem, kind="bad_path")
            continue
        files[image_id] = (path, where)
    captions: dict[int, list[str]] = collections.defaultdict(list)
    for i, annotation in enumerate(annotations):
        where = f"{annotation_file}: annotations[{i}]"
        image_id = _entry_image_id(annotation, ("image_id", "caption"), where, bad, id_key="image_id",
                                   id_name="image_id", needs="an annotation needs 'image_id' and 'caption'")
        if image_id is None:
            continue
        if image_id not in files:
            bad.report(where, f"image_id {image_id} is not in 'images'", kind="missing_image")
            continue
        captions[image_id].append(annotation["caption"])
    entries = [_Entry(image_id, path, captions.get(image_id, []), had_captions=image_id in captions,
                      where=f"{where}: image {image_id} ({path})")
               for image_id, (path, where) in sorted(files.items())]
    records = _finish(entries, validate_images=validate_images, bad=bad)
    _log_skips(annotation_file, bad)
    return records


# --- Karpathy splits ------------------------------------------------------------------------------

def read_karpathy_split(json_file: str, image_root: str, *, splits: Iterable[str] | None = None,
                        validate_images: bool = True, bad: BadExamples | None = None) -> list[CaptionRecord]:
    """Reads a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`).

    Args:
      json_file: the split file.
      image_root: images are at `image_root/filepath/filename` (`filepath` is present for COCO,
        e.g. "val2014", absent for Flickr); the path may not lead outside `image_root`.
      splits: keep only these Karpathy splits (train, val, test, restval); default all.
      validate_images: decode every kept image once with the training decoder to catch bad files now.
      bad: the bad-example policy (default: raise).

    Returns:
      Records in file order with `split` set; image_id is `cocoid` when present, else `imgid`.
      Captions are the `raw` sentences (the space-joined `tokens` where `raw` is missing).
    """
    bad = bad or BadExamples()
    wanted = set(KARPATHY_SPLITS if splits is None else splits)
    unknown = wanted - set(KARPATHY_SPLITS)
    if unknown:
        raise ValueError(f"splits must be among {KARPATHY_SPLITS}, received {sorted(unknown)}.")
    data = _load_json(json_file, "Karpathy split file")
    _expect_format(data, "karpathy", json_file)
    images = _require_list(data, "images", json_file)
    entries, seen_ids = [], {}
    for i, entry in enumerate(images):
        where = f"{json_file}: images[{i}]"
        if not isinstance(entry, dict) or not {"filename", "split", "sentences"} <= entry.keys():
            bad.report(where, "an image entry needs 'filename', 'split' and 'sentences'", kind="bad_annotation")
            continue
        if entry["split"] not in KARPATHY_SPLITS:
            bad.report(where, f"split {entry['split']!r} is not one of {KARPATHY_SPLITS}", kind="bad_annotation")
            continue
        if entry["split"] not in wanted:
            continue
        raw_id = entry.get("cocoid", entry.get("imgid", i))
        image_id = _image_id(raw_id)
        if image_id is None:
            bad.report(where, f"image id {raw_id!r} is not a non-negative integer", kind="bad_annotation")
            continue
        if image_id in seen_ids:
            raise BadAnnotationFileError(f"{where}: image id {image_id} repeats images[{seen_ids[image_id]}].")
        seen_ids[image_id] = i
        filepath = entry.get("filepath", "")
        name = os.path.join(filepath, entry["filename"]) if isinstance(filepath, str) and isinstance(
            entry["filename"], str) else entry["filename"]
        path, problem = _path_in(image_root, name)
        if problem:
            bad.report(where, problem, kind="bad_path")
            continue
        if not isinstance(entry["sentences"], list):
            bad.report(where, "'sentences' is not a list", kind="bad_annotation")
            continue
        entries.append(_Entry(image_id, path, [_karpathy_sentence(s) for s in entry["sentences"]],
                              had_captions=True, where=f"{where}: image {image_id} ({path})", split=entry["split"]))
    records = _finish(entries, validate_images=validate_images, bad=bad)
    _log_skips(json_file, bad)
    return records


def _karpathy_sentence(sentence: Any) -> Any:
    if isinstance(sentence, dict):
        if isinstance(sentence.get("raw"), str):
            return sentence["raw"]
        tokens = sentence.get("tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return " ".join(tokens)
    return sentence  # not a string: clean_captions reports it


# --- a folder of images without captions ------------------------------------------------------------

def read_image_folder(folder: str, *, validate_images: bool = True,
                      bad: BadExamples | None = None) -> list[CaptionRecord]:
    """The image files under `folder` (recursively; names ending in `IMAGE_EXTENSIONS`, any case) as
    caption-less records, sorted by path; image_id is the position in that order."""
    bad = bad or BadExamples()
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist.")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder, followlinks=True)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))
    entries = [_Entry(i, path, [], had_captions=False, where=path) for i, path in enumerate(paths)]
    records = _finish(entries, validate_images=validate_images, bad=bad)
    _log_skips(folder, bad)
    return records


# --- TFDS coco_captions ---------------------------------------------------------------------------

# capnas split -> TFDS coco_captions split (COCO 2014 with Karpathy's splits; restval joins training).
TFDS_COCO_CAPTIONS_SPLITS = {"train": "train+restval", "validation": "val", "test": "test"}


def standardize_tfds_coco_captions(example: dict) -> dict:
    """Maps a TFDS `coco_captions` element to `{"image", "image_id", "captions"}` (graph code)."""
    return {"image": example["image"], "image_id": example["image/id"], "captions": example["captions"]["text"]}


def load_tfds_coco_captions(split: str, *, data_dir: str | None = None, download: bool = True):
    """TFDS `coco_captions` as a per-image `tf.data.Dataset` of `{"image", "image_id", "captions"}`.

    Args:
      split: "train" (Karpathy train + restval), "validation" or "test".
      data_dir: TFDS data_dir.
      download: let TFDS download and prepare it (about 20 GB) if absent.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415

    if split not in TFDS_COCO_CAPTIONS_SPLITS:
        raise ValueError(f"split must be one of {sorted(TFDS_COCO_CAPTIONS_SPLITS)}, received {split!r}.")
    dataset = tfds.load("coco_captions", split=TFDS_COCO_CAPTIONS_SPLITS[split], data_dir=data_dir,
                        download=download, shuffle_files=False)
    return dataset.map(standardize_tfds_coco_captions)


def read_tfds_coco_captions(split: str, *, data_dir: str | None = None, download: bool = True,
                            with_images: bool = False) -> list[CaptionRecord]:
    """TFDS `coco_captions` as records; images (still JPEG-encoded) only with `with_images`."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    if split not in TFDS_COCO_CAPTIONS_SPLITS:
        raise ValueError(f"split must be one of {sorted(TFDS_COCO_CAPTIONS_SPLITS)}, received {split!r}.")
    decoders = {"image": tfds.decode.SkipDecoding()}
    dataset = tfds.load("coco_captions", split=TFDS_COCO_CAPTIONS_SPLITS[split], data_dir=data_dir,
                        download=download, shuffle_files=False, decoders=decoders)
    records = []
    for example in dataset.as_numpy_iterator():
        records.append(CaptionRecord(
            image_id=int(example["image/id"]),
            captions=tuple(c.decode("utf-8") for c in example["captions"]["text"]),
            image_bytes=bytes(example["image"]) if with_images else None))
    return records


# --- helpers --------------------------------------------------------------------------------------

def annotation_format(data: Any) -> str | None:
    """What a parsed annotation file looks like: "coco" (COCO-format captions), "karpathy" (a
    Karpathy-split file), "coco_objects" (COCO instances / keypoints, no captions), or None."""
    if not isinstance(data, dict):
        return None
    images, annotations = data.get("images"), data.get("annotations")
    first_image = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
    first_annotation = (annotations[0] if isinstance(annotations, list) and annotations
                        and isinstance(annotations[0], dict) else {})
    if "caption" in first_annotation:
        return "coco"
    if {"bbox", "segmentation", "keypoints", "category_id"} & first_annotation.keys():
        return "coco_objects"
    if "sentences" in first_image or ("split" in first_image and "filename" in first_image):
        return "karpathy"
    if isinstance(annotations, list) and "file_name" in first_image:
        return "coco"
    return None


_FORMAT_NAMES = {
    "coco": "COCO-format caption annotations ('annotations' with 'image_id' and 'caption'; read with --dataset=coco)",
    "karpathy": "a Karpathy-split file (images with 'filename', 'split' and 'sentences'; read with --dataset=karpathy)",
    "coco_objects": "COCO object annotations (instances or keypoints: 'bbox', 'category_id'), which hold no "
                    "captions (the captions are in captions_*.json)",
}


def _expect_format(data: Any, expected: str, path: str) -> None:
    found = annotation_format(data)
    if found is not None and found != expected:
        raise BadAnnotationFileError(f"{path!r} looks like {_FORMAT_NAMES[found]}, not {_FORMAT_NAMES[expected]}.")


def _load_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadAnnotationFileError(f"{what} {path!r} is not valid JSON: {error}") from error


def _require_list(data: Any, key: str, path: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        keys = sorted(data)[:10] if isinstance(data, dict) else []
        raise BadAnnotationFileError(f"{path!r}: expected a JSON object with a list {key!r}, "
                                     f"received {type(data).__name__} with keys {keys}.")
    return data[key]


def _log_skips(source: str, bad: BadExamples) -> None:
    if bad.total:
        logger.warning("%s: skipped %d bad example(s) so far: %s", source, bad.total, dict(bad.counts))
