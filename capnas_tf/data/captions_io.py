"""Reading captioned image collections into plain records, with bad inputs caught up front.

Three sources:
  * COCO-format caption annotations (`{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}`) plus a folder of images: `read_coco_captions`. Images listed
    without any annotation come back with no captions (usable as unlabeled images).
  * Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`:
    `{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", "tokens"}], "imgid",
    "cocoid"?}]}`) plus the image root: `read_karpathy_split`.
  * TFDS `coco_captions` (COCO 2014 with the Karpathy splits; downloads ~20 GB on first use):
    `load_tfds_coco_captions` / `read_tfds_coco_captions`.

Bad inputs are found here, in Python, before any tf.data pipeline runs, so that the message names
the file and the problem. A missing or malformed annotation file always raises. A bad example
(an annotation naming a missing image, an unreadable/truncated/unsupported image, an empty or
punctuation-only caption) raises `BadExampleError` under `on_bad_example="error"` and is dropped
and counted under `"skip"` (see `BadExamples`). Grey, palette and RGBA images are fine: the
pipeline decodes every image to 3 channels (alpha is dropped, grey is replicated).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import os
from typing import Any, Iterable

from capnas_tf.data.text import caption_words

logger = logging.getLogger(__name__)

# What `tf.io.decode_image` decodes, and the PIL modes it turns into RGB with channels=3.
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
SUPPORTED_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "I;16", "I;16B", "1")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
ON_BAD_EXAMPLE = ("error", "skip")


class BadExampleError(ValueError):
    """One example (image or caption) cannot be used; the message names the file and the problem."""


class BadAnnotationFileError(ValueError):
    """An annotation file is unreadable or lacks the fields of its format."""


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
    """The `on_bad_example` policy: raise `BadExampleError`, or drop the example and count it.

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
            raise BadExampleError(message + " (set on_bad_example='skip' to drop and count such examples)")
        self.counts[kind] += 1
        logger.warning("Skipping bad example: %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --- images ---------------------------------------------------------------------------------------

def image_problem(source: str | bytes) -> str | None:
    """Why an image file (path) or encoded image (bytes) cannot be used, or None if it can.

    Decodes it fully with Pillow (JPEG in reduced-size draft mode, which still reads every byte
    of the compressed stream), so missing files, truncated or corrupt data and formats that
    `tf.io.decode_image` cannot read are all caught here rather than inside tf.data.
    """
    from PIL import Image  # noqa: PLC0415 (Pillow is only needed when validating)

    if isinstance(source, str) and not os.path.isfile(source):
        return "image file does not exist"
    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"image format {image.format} is not one of {DECODABLE_FORMATS} (what tf.io.decode_image reads)"
            if image.mode not in SUPPORTED_MODES:
                return f"image colour mode {image.mode} is not supported (expected one of {SUPPORTED_MODES})"
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))
            image.load()
            if image.width < 1 or image.height < 1:
                return f"image has size {image.width}x{image.height}"
    except Exception as error:  # noqa: BLE001 (Pillow raises many types for corrupt data)
        return f"image cannot be decoded ({type(error).__name__}: {error})"
    return None


# --- captions -------------------------------------------------------------------------------------

def clean_captions(captions: Iterable[str], where: str, bad: BadExamples) -> tuple[str, ...]:
    """The captions with at least one word after normalisation; each other one is reported."""
    kept = []
    for caption in captions:
        if not isinstance(caption, str):
            bad.report(where, f"caption {caption!r} is not a string", kind="bad_caption")
        elif not caption_words(caption):
            bad.report(where, f"caption {caption!r} is empty after removing punctuation", kind="empty_caption")
        else:
            kept.append(caption.strip())
    return tuple(kept)


# --- COCO format ----------------------------------------------------------------------------------

def read_coco_captions(annotation_file: str, image_dir: str, *, validate_images: bool = True,
                       bad: BadExamples | None = None) -> list[CaptionRecord]:
    """Reads COCO-format caption annotations and their image folder.

    Args:
      annotation_file: JSON with `images` (`id`, `file_name`) and `annotations` (`image_id`, `caption`).
      image_dir: folder that `file_name` is relative to.
      validate_images: decode every image once with Pillow to catch bad files now.
      bad: the bad-example policy (default: raise).

    Returns:
      One record per usable image, sorted by image_id. Images without annotations have no captions.
    """
    bad = bad or BadExamples()
    data = _load_json(annotation_file, "COCO caption annotation file")
    images = _require_list(data, "images", annotation_file)
    annotations = _require_list(data, "annotations", annotation_file)
    files: dict[int, str] = {}
    for i, entry in enumerate(images):
        where = f"{annotation_file}: images[{i}]"
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            bad.report(where, "an image entry needs 'id' and 'file_name'", kind="bad_annotation")
            continue
        if entry["id"] in files:
            raise BadAnnotationFileError(f"{where}: image id {entry['id']} is listed twice.")
        files[int(entry["id"])] = entry["file_name"]
    captions: dict[int, list[str]] = collections.defaultdict(list)
    for i, annotation in enumerate(annotations):
        where = f"{annotation_file}: annotations[{i}]"
        if not isinstance(annotation, dict) or "image_id" not in annotation or "caption" not in annotation:
            bad.report(where, "an annotation needs 'image_id' and 'caption'", kind="bad_annotation")
            continue
        if annotation["image_id"] not in files:
            bad.report(where, f"image_id {annotation['image_id']} is not in 'images'", kind="missing_image")
            continue
        captions[int(annotation["image_id"])].append(annotation["caption"])
    records = []
    for image_id in sorted(files):
        path = os.path.join(image_dir, files[image_id])
        record = _checked_record(image_id, path, captions.get(image_id, []), had_captions=image_id in captions,
                                 where=f"{annotation_file}: image {image_id} ({path})",
                                 validate_images=validate_images, bad=bad)
        if record is not None:
            records.append(record)
    _log_skips(annotation_file, bad)
    return records


# --- Karpathy splits ------------------------------------------------------------------------------

def read_karpathy_split(json_file: str, image_root: str, *, splits: Iterable[str] | None = None,
                        validate_images: bool = True, bad: BadExamples | None = None) -> list[CaptionRecord]:
    """Reads a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`).

    Args:
      json_file: the split file.
      image_root: images are at `image_root/filepath/filename` (`filepath` is present for COCO,
        e.g. "val2014", absent for Flickr).
      splits: keep only these Karpathy splits (train, val, test, restval); default all.
      validate_images: decode every kept image once with Pillow to catch bad files now.
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
    images = _require_list(data, "images", json_file)
    records, seen_ids = [], {}
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
        image_id = entry.get("cocoid", entry.get("imgid", i))
        if image_id in seen_ids:
            raise BadAnnotationFileError(f"{where}: image id {image_id} repeats images[{seen_ids[image_id]}].")
        seen_ids[image_id] = i
        path = os.path.join(image_root, entry.get("filepath", ""), entry["filename"])
        sentences = [_karpathy_sentence(s) for s in entry["sentences"]]
        record = _checked_record(int(image_id), path, sentences, had_captions=True,
                                 where=f"{json_file}: image {image_id} ({path})",
                                 validate_images=validate_images, bad=bad, split=entry["split"])
        if record is not None:
            records.append(record)
    _log_skips(json_file, bad)
    return records


def _karpathy_sentence(sentence: Any) -> Any:
    if isinstance(sentence, dict):
        if "raw" in sentence:
            return sentence["raw"]
        if "tokens" in sentence:
            return " ".join(sentence["tokens"])
    return sentence  # not a string: clean_captions reports it


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

def _checked_record(image_id: int, path: str, captions: list, *, had_captions: bool, where: str,
                    validate_images: bool, bad: BadExamples, split: str | None = None) -> CaptionRecord | None:
    """The record, or None after reporting why it is unusable."""
    problem = image_problem(path) if validate_images else (
        None if os.path.isfile(path) else "image file does not exist")
    if problem is not None:
        bad.report(where, problem, kind="missing_image" if "does not exist" in problem else "bad_image")
        return None
    kept = clean_captions(captions, where, bad)
    if had_captions and not kept:
        bad.report(where, "no usable caption left", kind="no_caption")
        return None
    return CaptionRecord(image_id=image_id, captions=kept, image_path=path, split=split)


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
        logger.warning("%s: skipped %d bad example(s): %s", source, bad.total, dict(bad.counts))
