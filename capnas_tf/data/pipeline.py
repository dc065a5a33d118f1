"""The tf.data streams of a caption dataset: D_tr, U, D_val, and the evaluation splits.

    data = load_caption_data(DataConfig(dataset="capnas_shapes"), workdir)
    data.train_dataset(32)        # D_tr: {"image": float32 [32, S, S, 3] in [0, 1], "tokens": int32 [32, L]}
    data.unlabeled_dataset(32)    # U:    {"image": float32 [32, S, S, 3]}
    data.validation_dataset(32)   # D_val: like D_tr
    data.eval_dataset("test", 32) # {"image": float32 [32, S, S, 3], "image_id": int64 [32]}, each image once
    data.references("test")       # {image_id: [raw caption, ...]}
    data.scenes("test")           # {image_id: scene dict} (capnas_shapes), else None

Training streams hold one (image, caption) pair per element (each image appears once per
reference caption per epoch), are shuffled with seeds derived from `DataConfig.seed` alone (TF's global
seed, e.g. `keras.utils.set_random_seed`, does not change them: see `seeded_shuffle`), and batch
with `drop_remainder=True` so every batch has the static shape XLA wants. Evaluation batches are
padded to full size with images of `image_id` −1 (`pad_remainder=True`): drop those rows.

Each stream decodes (or reads from TFDS), resizes to S × S (squashing, no crop) and tokenises
once, caches the uint8 images and int32 tokens (`DataConfig.cache`), and only then shuffles,
converts to float32 in [0, 1] per batch, and prefetches.

Datasets are picked by name from `DATASET_SOURCES`:
  * `capnas_shapes`: the TFDS builder of `shapes_tfds`, generated at `image_size` into `data_dir`;
    its `unlabeled` split is U and `test_novel` is an extra evaluation split.
  * `coco`: COCO-format annotation files + `image_dir`. `annotations` holds the training images;
    validation and test come from `val_annotations` / `test_annotations` where given, else they are
    cut from `annotations` by a fixed hash of the image_id (`split_fractions`, default 0.1 to each
    split without a file of its own). Images listed in `annotations` without captions are U.
  * `karpathy`: a Karpathy-split JSON (`annotations`) + image root (`image_dir`); train + restval
    are D_tr, val is D_val, test is test.
  * `coco_captions_tfds`: TFDS `coco_captions` (Karpathy splits; downloads only with `download=True`).

Unlabeled images U (`DataConfig.unlabeled_source`):
  "auto" (default) uses the dataset's own images without captions if it has them, else "train";
  "train" uses the training images with their captions dropped (the same images as D_tr: the
  method's stage II still sees only pseudo-captions on them); "holdout" moves a fixed hash-chosen
  `unlabeled_fraction` of the training images out of D_tr into U, so U is disjoint from D_tr;
  "folder" reads every image file under `unlabeled_dir`.

`load_caption_data` logs one line per split: its images, its captions, and where they came from
(`CaptionData.split_summary()`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zlib
from typing import TYPE_CHECKING, Callable

import tensorflow as tf

from capnas_tf.data import captions_io, shapes
from capnas_tf.data.captions_io import BadExamples, CaptionRecord
from capnas_tf.data.text import Vocabulary
from capnas_tf.registry import Registry

if TYPE_CHECKING:  # annotations only: the config sits above the data it describes
    from capnas_tf.config import DataConfig

logger = logging.getLogger(__name__)

_TRAINING_STREAMS = ("train", "unlabeled", "validation")


# --- one split of a dataset -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SplitSource:
    """The images of one split in a fixed order, with their cleaned captions known in Python.

    `elements()` yields, in the order of `image_ids`, `{"image": uint8 [S, S, 3], "image_id":
    int64, "captions": string [n]}`; `captions[i]` are the references of `image_ids[i]`, and
    `scenes[i]` (datasets that know what their images show, like capnas_shapes; None elsewhere) is
    `shapes.scene_to_dict` of its scene. `origin` says where the split came from (a file, a share of
    one, a folder), for the log.
    """

    name: str
    image_ids: tuple[int, ...]
    captions: tuple[tuple[str, ...], ...]
    elements: Callable[[], tf.data.Dataset]
    scenes: tuple[dict, ...] | None = None
    origin: str = ""

    def subset(self, keep_ids: set[int], name: str | None = None, origin: str | None = None) -> "SplitSource":
        """The images of this split whose id is in `keep_ids` (order kept)."""
        keep = [i for i, image_id in enumerate(self.image_ids) if image_id in keep_ids]
        ids = tuple(self.image_ids[i] for i in keep)
        parent = self.elements

        def elements() -> tf.data.Dataset:
            kept = _id_set_table(ids)
            return parent().filter(lambda ex: kept.lookup(ex["image_id"]) > 0)

        scenes = None if self.scenes is None else tuple(self.scenes[i] for i in keep)
        return SplitSource(name or self.name, ids, tuple(self.captions[i] for i in keep), elements, scenes,
                           self.origin if origin is None else origin)

    def without_captions(self, name: str, origin: str | None = None) -> "SplitSource":
        return dataclasses.replace(self, name=name, captions=tuple(() for _ in self.image_ids),
                                   origin=self.origin if origin is None else origin)


def _id_set_table(ids) -> tf.lookup.StaticHashTable:
    keys = tf.constant(list(ids) or [-1], tf.int64)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys)), 0)


def _resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 `[h, w, 3]` -> uint8 `[size, size, 3]` (antialiased bilinear; aspect ratio not kept)."""
    if image.shape[:2] == (size, size):
        return image
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(resized, [size, size, 3])


def records_split(name: str, records: list[CaptionRecord], image_size: int, *,
                  skip_undecodable: bool = False, origin: str = "") -> SplitSource:
    """A split read from image files (or encoded bytes) named by `records`.

    Images are decoded to RGB by `captions_io.decode_image_rgb`, the decoder the up-front check ran:
    grey is replicated, palettes give their colours, alpha is dropped, GIFs give their first frame.
    With `skip_undecodable` (on_bad_example="skip" without up-front validation) an image that still
    fails to decode is dropped by `ignore_errors`.
    """
    ids = tuple(r.image_id for r in records)
    captions = tuple(r.captions for r in records)
    use_bytes = any(r.image_bytes is not None for r in records)
    sources = [r.image_bytes if use_bytes else r.image_path for r in records]
    if any(s is None for s in sources):
        raise ValueError(f"split {name!r}: every record needs an image_path (or every one image_bytes).")
    wheres = [f"image {r.image_id}" if use_bytes else r.image_path for r in records]

    def elements() -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices({
            "source": tf.constant(sources, tf.string),
            "where": tf.constant(wheres, tf.string),
            "image_id": tf.constant(ids, tf.int64),
            "captions": tf.ragged.constant([list(c) for c in captions], dtype=tf.string, ragged_rank=1),
        })

        def decode(ex):
            encoded = ex["source"] if use_bytes else tf.io.read_file(ex["source"])
            image = captions_io.decode_image_rgb(encoded, ex["where"])
            return {"image": _resize_uint8(image, image_size), "image_id": ex["image_id"],
                    "captions": ex["captions"]}

        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.ignore_errors(log_warning=True) if skip_undecodable else dataset

    return SplitSource(name, ids, captions, elements, origin=origin)


def tfds_split(name: str, builder, tfds_split_name: str, image_size: int, *,
               standardize: Callable[[dict], dict] = lambda ex: ex, bad: BadExamples | None = None,
               seed: int = 0, origin: str = "") -> SplitSource:
    """A split of a prepared TFDS builder whose elements standardise to {image, image_id, captions}.

    Captions are read once in Python (images skipped), cleaned like file-based captions, and
    zipped back in graph order; an id check guards that both reads agree. A builder with a `scene`
    feature (JSON text, like capnas_shapes) has its scenes decoded in the same pass.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415

    bad = bad or BadExamples()
    has_scenes = "scene" in builder.info.features
    ids, captions, scenes = [], [], []
    text_only = builder.as_dataset(split=tfds_split_name, shuffle_files=False,
                                   decoders={"image": tfds.decode.SkipDecoding()}).map(standardize)
    text_only = text_only.map(lambda ex: {"image_id": ex["image_id"], "captions": ex["captions"]}
                              | ({"scene": ex["scene"]} if has_scenes else {}))
    for batch in text_only.ragged_batch(1024):  # batched: one Python round trip per 1024 images
        for image_id, raw in zip(batch["image_id"].numpy().tolist(), batch["captions"].to_list()):
            where = f"TFDS {builder.info.full_name} split {tfds_split_name}, image {image_id}"
            ids.append(image_id)
            captions.append(captions_io.clean_captions([c.decode("utf-8") for c in raw], where, bad))
        if has_scenes:
            scenes.extend(json.loads(s.decode("utf-8")) for s in batch["scene"].numpy().tolist())
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)

    def elements() -> tf.data.Dataset:
        images = builder.as_dataset(split=tfds_split_name, shuffle_files=False, read_config=read_config)
        images = images.map(standardize)
        cleaned = tf.data.Dataset.from_tensor_slices({
            "image_id": tf.constant(ids, tf.int64),
            "captions": tf.ragged.constant([list(c) for c in captions], dtype=tf.string, ragged_rank=1)})

        def join(ex, py):
            same_image = tf.debugging.assert_equal(
                ex["image_id"], py["image_id"], message=f"TFDS {builder.name} {tfds_split_name}: read order changed")
            with tf.control_dependencies([same_image]):
                image = tf.identity(_resize_uint8(ex["image"], image_size))
            return {"image": image, "image_id": py["image_id"], "captions": py["captions"]}

        return tf.data.Dataset.zip(images, cleaned).map(join, num_parallel_calls=tf.data.AUTOTUNE)

    return SplitSource(name, tuple(ids), tuple(captions), elements, tuple(scenes) if has_scenes else None,
                       origin or f"TFDS {builder.info.full_name} split {tfds_split_name}")


# --- dataset sources (a registry by name) -----------------------------------------------------------

def _capnas_shapes_source(config: DataConfig, bad: BadExamples) -> dict[str, SplitSource]:
    from capnas_tf.data import shapes_tfds  # noqa: PLC0415

    shapes_config = dataclasses.replace(config.shapes, image_size=config.image_size)
    builder = shapes_tfds.prepare_capnas_shapes(shapes_config, data_dir=config.data_dir)
    return {split: tfds_split(split, builder, split, config.image_size, bad=bad, seed=config.seed)
            for split in shapes.SPLITS if shapes.split_size(shapes_config, split) > 0}


def _hash_unit(image_id: int, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per image id: split membership that never changes."""
    return zlib.crc32(f"{salt}:{image_id}".encode()) / 2**32


def _percent(share: float) -> str:
    return f"{100 * share:.4g}%"


def _naming_flag(flag: str, read: Callable[[], list[CaptionRecord]]) -> list[CaptionRecord]:
    """`read()`, whose error about a whole annotation file is prefixed with the flag that named it."""
    try:
        return read()
    except captions_io.BadAnnotationFileError as error:
        raise captions_io.BadAnnotationFileError(f"--{flag}: {error}") from error


def _coco_source(config: DataConfig, bad: BadExamples) -> dict[str, SplitSource]:
    def read(path: str, flag: str = "annotations") -> list[CaptionRecord]:
        return _naming_flag(flag, lambda: captions_io.read_coco_captions(
            path, config.image_dir, validate_images=config.validate_images, bad=bad))

    train_share, val_share, test_share = config.resolved_split_fractions()
    records = read(config.annotations)
    cut: dict[str, list[CaptionRecord]] = {"train": [], "validation": [], "test": []}
    for record in records:
        if record.captions:
            u = _hash_unit(record.image_id, "split")
            cut["validation" if u < val_share else "test" if u < val_share + test_share else "train"].append(record)
    fractions = ",".join(f"{f:g}" for f in (train_share, val_share, test_share))
    shares = {"train": train_share, "validation": val_share, "test": test_share}

    def share_of_annotations(split: str) -> str:
        if shares[split] == 1.0:
            return f"{config.annotations} (--annotations)"
        return (f"{config.annotations} (--annotations): {_percent(shares[split])} of its captioned images, "
                f"by a hash of the image id (--split_fractions={fractions})")

    parts = {"train": (cut["train"], share_of_annotations("train"))}
    train_paths = {r.image_path for r in records}
    for split, field in config.SPLIT_FILES.items():
        path = getattr(config, field)
        if not path:
            parts[split] = (cut[split], share_of_annotations(split))
            continue
        own = read(path, field)
        captioned = [r for r in own if r.captions]
        if len(captioned) < len(own):
            logger.warning("%s (--%s): %d image(s) without captions are not used", path, field,
                           len(own) - len(captioned))
        shared = sum(r.image_path in train_paths for r in captioned)
        if shared:
            logger.warning("%s (--%s): %d of its images are also in %s (--annotations): their %s scores are "
                           "not on held-out images", path, field, shared, config.annotations, split)
        parts[split] = (captioned, f"{path} (--{field})")
    uncaptioned = [r for r in records if not r.captions]
    if uncaptioned:
        parts["unlabeled"] = (uncaptioned, f"{config.annotations} (--annotations): its images without captions")
    return {name: records_split(name, rs, config.image_size, skip_undecodable=_skip_undecodable(config),
                                origin=origin) for name, (rs, origin) in parts.items()}


def _skip_undecodable(config: DataConfig) -> bool:
    return config.on_bad_example == "skip" and not config.validate_images


def _karpathy_source(config: DataConfig, bad: BadExamples) -> dict[str, SplitSource]:
    records = _naming_flag("annotations", lambda: captions_io.read_karpathy_split(
        config.annotations, config.image_dir, validate_images=config.validate_images, bad=bad))
    parts = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
    return {name: records_split(name, [r for r in records if r.split in karpathy], config.image_size,
                                skip_undecodable=_skip_undecodable(config),
                                origin=f"{config.annotations} (--annotations): Karpathy split {'+'.join(karpathy)}")
            for name, karpathy in parts.items()}


def _coco_captions_tfds_source(config: DataConfig, bad: BadExamples) -> dict[str, SplitSource]:
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = tfds.builder("coco_captions", data_dir=config.data_dir)
    if config.download:
        builder.download_and_prepare()
    return {split: tfds_split(split, builder, tfds_name, config.image_size, bad=bad, seed=config.seed,
                              standardize=captions_io.standardize_tfds_coco_captions)
            for split, tfds_name in captions_io.TFDS_COCO_CAPTIONS_SPLITS.items()}


# name → source(config, bad) -> {split: SplitSource}
DATASET_SOURCES = Registry("dataset", register_name="register_dataset", lookup_name="get_dataset_source", entries={
    "capnas_shapes": _capnas_shapes_source,
    "coco": _coco_source,
    "karpathy": _karpathy_source,
    "coco_captions_tfds": _coco_captions_tfds_source,
})


def register_dataset(name: str, source: Callable[[DataConfig, BadExamples], dict[str, SplitSource]] | None = None):
    """Adds a dataset: `source(config, bad)` returns SplitSources for train, validation, … . Usable as a
    decorator; another source under a taken name is an error."""
    return DATASET_SOURCES.register(name, source)


def get_dataset_source(name: str) -> Callable[[DataConfig, BadExamples], dict[str, SplitSource]]:
    """The source registered as `name`; a ValueError naming the datasets otherwise."""
    return DATASET_SOURCES.lookup(name)


def _with_unlabeled(splits: dict[str, SplitSource], config: DataConfig, bad: BadExamples) -> dict[str, SplitSource]:
    """Makes sure `splits["unlabeled"]` exists, per `config.unlabeled_source` (see module doc)."""
    splits = dict(splits)
    source = config.unlabeled_source
    if source == "auto":
        if "unlabeled" in splits:
            return splits
        source = "train"
    train = splits["train"]
    if source == "train":
        splits["unlabeled"] = train.without_captions(
            "unlabeled", f"the training images, captions dropped (--unlabeled_source={config.unlabeled_source})")
    elif source == "holdout":
        held = {i for i in train.image_ids if _hash_unit(i, "unlabeled") < config.unlabeled_fraction}
        splits["unlabeled"] = train.subset(held, "unlabeled").without_captions(
            "unlabeled", f"{_percent(config.unlabeled_fraction)} of the training images by a hash of the image "
            f"id, captions dropped and moved out of train (--unlabeled_source=holdout, "
            f"--unlabeled_fraction={config.unlabeled_fraction:g})")
        splits["train"] = train.subset(set(train.image_ids) - held,
                                       origin=f"{train.origin}, less the images held out for unlabeled")
    else:  # folder
        records = captions_io.read_image_folder(config.unlabeled_dir, validate_images=config.validate_images, bad=bad)
        if not records:
            raise ValueError(f"--unlabeled_dir={config.unlabeled_dir}: no usable image files "
                             f"({', '.join(captions_io.IMAGE_EXTENSIONS)}) in it.")
        splits["unlabeled"] = records_split("unlabeled", records, config.image_size,
                                            skip_undecodable=_skip_undecodable(config),
                                            origin=f"{config.unlabeled_dir} (--unlabeled_source=folder)")
    return splits


# --- the streams ------------------------------------------------------------------------------------

class CaptionData:
    """The vocabulary and the streams of one dataset (built by `load_caption_data`).

    Attributes:
      config: the DataConfig.
      vocab: the Vocabulary built from the training captions.
      skipped: bad examples dropped under on_bad_example="skip", by kind.
      image_size: S.  max_caption_len: L.
      num_train_images: images in D_tr.  num_train_examples: (image, caption) pairs in D_tr,
        i.e. one epoch of `train_dataset`.
    """

    def __init__(self, config: DataConfig, splits: dict[str, SplitSource], vocab: Vocabulary,
                 skipped: dict[str, int]):
        self.config = config
        self.vocab = vocab
        self.skipped = dict(skipped)
        self._splits = splits

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def max_caption_len(self) -> int:
        return self.vocab.max_len

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the available splits (train, unlabeled, validation, test, and e.g. test_novel)."""
        return tuple(self._splits)

    def num_images(self, split: str) -> int:
        return len(self._split(split).image_ids)

    def num_examples(self, split: str) -> int:
        """(image, caption) pairs of `split`: one epoch of its training stream."""
        return sum(len(c) for c in self._split(split).captions)

    @property
    def num_train_images(self) -> int:
        return self.num_images("train")

    @property
    def num_train_examples(self) -> int:
        return self.num_examples("train")

    def references(self, split: str) -> dict[int, list[str]]:
        """`{image_id: [raw caption, …]}` of `split` (cleaned of empty captions, otherwise as written)."""
        source = self._split(split)
        return {image_id: list(caps) for image_id, caps in zip(source.image_ids, source.captions)}

    def split_summary(self) -> list[str]:
        """One line per split: its images, its captions, and where it came from."""
        lines = []
        for name, source in self._splits.items():
            line = f"{name}: {len(source.image_ids)} images, {sum(len(c) for c in source.captions)} captions"
            lines.append(f"{line}, from {source.origin}" if source.origin else line)
        return lines

    def scenes(self, split: str) -> dict[int, dict] | None:
        """`{image_id: scene}` of `split` (`shapes.scene_to_dict` form), or None if the dataset has no scenes."""
        source = self._split(split)
        if source.scenes is None:
            return None
        return dict(zip(source.image_ids, source.scenes, strict=True))

    def train_dataset(self, batch_size: int | None = None, *, repeat: bool = True,
                      shuffle: bool = True) -> tf.data.Dataset:
        """D_tr: `{"image": float32 [B, S, S, 3], "tokens": int32 [B, L]}`, one caption per element."""
        return self._pair_stream("train", batch_size, repeat=repeat, shuffle=shuffle)

    def train_groups(self, batch_size: int | None = None, captions_per_image: int = 2, *, repeat: bool = True,
                     shuffle: bool = True) -> tf.data.Dataset:
        """D_tr by image: `{"image": float32 [B, S, S, 3], "tokens": int32 [B, k, L]}`, k = `captions_per_image`
        of each image's captions, drawn without replacement while it has k (else every one, then again).

        One encoder pass then serves k captions: the decoder, which learns counts and relations slowly, sees k
        times the captions per step for the encoder's cost of one.
        """
        if captions_per_image < 1:
            raise ValueError(f"train_groups: captions_per_image must be >= 1, received {captions_per_image}.")
        batch_size = self._check_batch("train", batch_size, self.num_images("train"), repeat)
        images = self._image_stream("train", with_tokens=True, shuffle=shuffle, repeat=repeat, level=2)
        seed = tf.constant(self._seeds("train", 3), tf.int64)
        groups = images.enumerate().map(
            lambda i, ex: _caption_group(ex, captions_per_image, tf.random.experimental.stateless_fold_in(seed, i),
                                         shuffle=shuffle),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return self._finish(groups.batch(batch_size, drop_remainder=True))

    def validation_dataset(self, batch_size: int | None = None, *, repeat: bool = True, shuffle: bool = True,
                           drop_remainder: bool = True) -> tf.data.Dataset:
        """D_val: `{"image": float32 [B, S, S, 3], "tokens": int32 [B, L]}`; without `drop_remainder` (and
        `repeat`) the last batch holds the remaining pairs, so every pair comes once."""
        return self._pair_stream("validation", batch_size, repeat=repeat, shuffle=shuffle,
                                 drop_remainder=drop_remainder)

    def unlabeled_dataset(self, batch_size: int | None = None, *, repeat: bool = True,
                          shuffle: bool = True) -> tf.data.Dataset:
        """U: `{"image": float32 [B, S, S, 3]}`, each image once per epoch."""
        batch_size = self._check_batch("unlabeled", batch_size, self.num_images("unlabeled"), repeat)
        images = self._image_stream("unlabeled", with_tokens=False, shuffle=shuffle, repeat=repeat, level=0)
        images = images.map(lambda ex: {"image": ex["image"]})
        return self._finish(images.batch(batch_size, drop_remainder=True))

    def eval_dataset(self, split: str, batch_size: int | None = None, *,
                     pad_remainder: bool = True) -> tf.data.Dataset:
        """Each image of `split` once, in order: `{"image": float32 [B, S, S, 3], "image_id": int64 [B]}`.

        With `pad_remainder` the last batch is filled up with black images of image_id −1, so every
        batch has the static size B; without it the last batch may be smaller.
        """
        batch_size = batch_size or self.config.batch_size
        images = self._cached_images(split, with_tokens=False)
        images = images.map(lambda ex: {"image": ex["image"], "image_id": ex["image_id"]})
        padding = -self.num_images(split) % batch_size
        if pad_remainder and padding:
            size = self.config.image_size
            filler = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8),
                                                   "image_id": tf.constant(-1, tf.int64)}).repeat(padding)
            images = images.concatenate(filler)
        return self._finish(images.batch(batch_size, drop_remainder=pad_remainder))

    # --- internals ---------------------------------------------------------------------------------

    def _split(self, split: str) -> SplitSource:
        if split not in self._splits:
            raise ValueError(f"split must be one of {list(self._splits)} for dataset "
                             f"{self.config.dataset!r}, received {split!r}.")
        return self._splits[split]

    def _seeds(self, stream: str, level: int) -> tuple[int, int]:
        # seed2 ≥ 1: the shuffle op draws a nondeterministic seed for (0, 0).
        return self.config.seed, 1 + 10 * _TRAINING_STREAMS.index(stream) + level

    def _buffer(self, n: int) -> int:
        return max(1, min(n, self.config.shuffle_buffer))

    def _check_batch(self, split: str, batch_size: int | None, n: int, repeat: bool) -> int:
        batch_size = batch_size or self.config.batch_size
        if n == 0:
            raise ValueError(f"split {split!r} of dataset {self.config.dataset!r} has no usable examples.")
        if not repeat and n < batch_size:
            raise ValueError(f"split {split!r} has {n} examples, fewer than batch_size={batch_size}: "
                             "with drop_remainder=True and repeat=False it would yield no batch.")
        return batch_size

    def _cached_images(self, split: str, *, with_tokens: bool) -> tf.data.Dataset:
        """Per image uint8 image, image_id (and int32 tokens [n, L]), cached per `config.cache`."""
        if not self.num_images(split):
            raise ValueError(f"split {split!r} of dataset {self.config.dataset!r} has no usable images.")
        dataset = self._split(split).elements()
        if with_tokens:
            vocab = self.vocab
            dataset = dataset.map(lambda ex: {"image": ex["image"], "image_id": ex["image_id"],
                                              "tokens": vocab.tokenize(ex["captions"])},
                                  num_parallel_calls=tf.data.AUTOTUNE)
        else:
            dataset = dataset.map(lambda ex: {"image": ex["image"], "image_id": ex["image_id"]})
        cache = self.config.cache
        if cache == "memory":
            return dataset.cache()
        if cache == "none":
            return dataset
        # The file name carries a digest of everything the cached tensors depend on, so a changed
        # configuration or vocabulary never reads a stale cache.
        digest = hashlib.sha1(repr((self.config, split, with_tokens and self.vocab.tokens)).encode()).hexdigest()[:12]
        return dataset.cache(f"{cache}-{self.config.dataset}-{split}-{digest}")

    def _image_stream(self, split: str, *, with_tokens: bool, shuffle: bool, repeat: bool, level: int) -> tf.data.Dataset:
        """Each image of `split` (`_cached_images`), in an order seeded by (`split`, `level`), repeated if asked."""
        images = self._cached_images(split, with_tokens=with_tokens)
        if shuffle:
            images = seeded_shuffle(images, self._buffer(self.num_images(split)), self._seeds(split, level))
        return images.repeat() if repeat else images

    def _pair_stream(self, split: str, batch_size: int | None, *, repeat: bool, shuffle: bool,
                     drop_remainder: bool = True) -> tf.data.Dataset:
        # a split smaller than one batch still yields a batch unless it is dropped
        batch_size = self._check_batch(split, batch_size, self.num_examples(split), repeat or not drop_remainder)
        images = self._cached_images(split, with_tokens=True)
        if shuffle:  # first the images, then the pairs, so the captions of an image spread apart
            images = seeded_shuffle(images, self._buffer(self.num_images(split)), self._seeds(split, 0))
        pairs = images.flat_map(_image_caption_pairs)
        if shuffle:
            pairs = seeded_shuffle(pairs, self._buffer(self.num_examples(split)), self._seeds(split, 1))
        if repeat:
            pairs = pairs.repeat()
        return self._finish(pairs.batch(batch_size, drop_remainder=drop_remainder))

    def _finish(self, batches: tf.data.Dataset) -> tf.data.Dataset:
        options = tf.data.Options()
        options.deterministic = self.config.deterministic
        batches = batches.map(_images_to_float, num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def seeded_shuffle(dataset: tf.data.Dataset, buffer_size: int, seeds: tuple[int, int]) -> tf.data.Dataset:
    """`dataset.shuffle(buffer_size, reshuffle_each_iteration=True)` whose order depends on `seeds` only.

    `Dataset.shuffle(seed=s)` runs its op with the seed pair (TF's global seed, s), or (87654321, s) when
    no global seed is set, so the same `s` gave other batches after `keras.utils.set_random_seed`. Here
    the same shuffle op gets both seeds explicitly. Each re-iteration (e.g. each epoch under `repeat`)
    reshuffles, in an order fixed by `seeds`. Elements must be dense tensors.

    Args:
      dataset: the elements to shuffle (a structure of dense tensors).
      buffer_size: the shuffle buffer, in elements.
      seeds: two int64 seeds, not both 0 (the op reads (0, 0) as "draw a random seed").
    """
    specs = tf.nest.flatten(dataset.element_spec)
    if not all(isinstance(spec, tf.TensorSpec) for spec in specs):
        raise TypeError(f"seeded_shuffle takes datasets of dense tensors, received element_spec {dataset.element_spec}.")
    if tuple(seeds) == (0, 0):
        raise ValueError("seeded_shuffle: seeds (0, 0) would make the shuffle op draw a random seed.")
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(dataset),
        buffer_size=tf.constant(buffer_size, tf.int64), seed=tf.constant(seeds[0], tf.int64),
        seed2=tf.constant(seeds[1], tf.int64), seed_generator=tf.raw_ops.DummySeedGenerator(),
        reshuffle_each_iteration=True, output_types=[spec.dtype for spec in specs],
        output_shapes=[spec.shape for spec in specs])
    return tf.data.experimental.from_variant(variant, dataset.element_spec)


def _image_caption_pairs(ex: dict) -> tf.data.Dataset:
    """One image with n captions -> n elements {"image", "tokens"}."""
    n = tf.shape(ex["tokens"])[0]
    images = tf.repeat(ex["image"][None], n, axis=0)  # (n, S, S, 3)
    return tf.data.Dataset.from_tensor_slices({"image": images, "tokens": ex["tokens"]})


def _caption_group(ex: dict, k: int, seed, *, shuffle: bool) -> dict:
    """One image and k of its n captions: a permutation of the n (seeded by `seed`) repeated to length k,
    its first k; {"image": [S, S, 3], "tokens": [k, L]}."""
    n = tf.shape(ex["tokens"])[0]
    order = tf.range(n)
    if shuffle:
        order = tf.random.experimental.stateless_shuffle(order, seed)
    picks = tf.reshape(tf.tile(order, [(k + n - 1) // n])[:k], [k])  # static k: the step reshapes by it
    return {"image": ex["image"], "tokens": tf.gather(ex["tokens"], picks)}


def _images_to_float(batch: dict) -> dict:
    """uint8 images -> float32 in [0, 1] (the toolkit's image convention)."""
    batch = dict(batch)
    batch["image"] = tf.cast(batch["image"], tf.float32) / 255.0
    return batch


def load_caption_data(config: DataConfig, workdir: str | None = None, *, vocab: Vocabulary | None = None,
                      log: Callable[[str], None] | None = None) -> CaptionData:
    """Reads (and checks) the dataset of `config` and builds its vocabulary.

    Args:
      config: the DataConfig.
      workdir: if given, the vocabulary is written to `<workdir>/vocab.txt`. If that file already
        exists (a resumed run) it must hold the same vocabulary, else ValueError: a checkpoint's
        embedding rows would no longer match its words.
      vocab: use this vocabulary instead of building one (e.g. the search run's, for retraining).
      log: where the line per split goes (`CaptionData.split_summary`); default: this module's logger
        at INFO.

    Returns:
      The CaptionData. Bad examples skipped under on_bad_example="skip" are logged and counted
      in `CaptionData.skipped`.
    """
    bad = BadExamples(config.on_bad_example)
    splits = _with_unlabeled(get_dataset_source(config.dataset)(config, bad), config, bad)
    if not splits["train"].image_ids:  # other empty splits fail only when their stream is asked for
        raise ValueError(f"--dataset={config.dataset}: no usable training images (from "
                         f"{splits['train'].origin or 'its train split'}).")
    if vocab is None:
        vocab = Vocabulary.build((c for caps in splits["train"].captions for c in caps),
                                 min_count=config.min_word_count, max_len=config.max_caption_len)
    elif vocab.max_len != config.max_caption_len:
        raise ValueError(f"--max_caption_len={config.max_caption_len} differs from the length L={vocab.max_len} "
                         "of the vocabulary given.")
    if workdir is not None:
        _save_vocab(vocab, os.path.join(workdir, "vocab.txt"))
    if bad.total:
        logger.warning("%s: skipped %d bad example(s) in all: %s", config.dataset, bad.total, dict(bad.counts))
    data = CaptionData(config, splits, vocab, dict(bad.counts))
    for line in data.split_summary():
        (log or logger.info)(f"Data split {line}")
    return data


def _save_vocab(vocab: Vocabulary, path: str) -> None:
    if os.path.exists(path):
        existing = Vocabulary.load(path, max_len=vocab.max_len)
        if existing.tokens != vocab.tokens:
            raise ValueError(f"{path} holds a different vocabulary ({existing.size} tokens) than this data "
                             f"gives ({vocab.size} tokens): use a new workdir, or pass vocab=Vocabulary.load(...).")
        return
    vocab.save(path)
