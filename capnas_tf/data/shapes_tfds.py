"""TFDS builder `capnas_shapes` for the procedural dataset of `capnas_tf.data.shapes`.

Importing this module (which `import capnas_tf` does) registers the builder, so

    tfds.load("capnas_shapes", split="train[:4]")            # default config, 32×32
    tfds.load("capnas_shapes/tiny", split="train", data_dir=tmp)
    tfds.load("capnas_shapes", builder_kwargs={"config": builder_config(ShapesConfig(image_size=48))})

all work offline: nothing is downloaded, the examples are generated.

Features: `image` uint8 `[S, S, 3]` (PNG-encoded, so lossless), `image_id` int64, `captions`
a sequence of strings (empty in the `unlabeled` split), and `scene` a string holding
`json.dumps(shapes.scene_to_dict(scene), sort_keys=True)` (every split, `unlabeled` included: what the
image shows, its objects' grid cells included, for scoring caption content with `shapes_content`).
Examples are stored in index order (`disable_shuffling`), so `train[:k]` is examples 0 … k−1 of
`shapes.generate_split`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from capnas_tf.data import shapes

_DESCRIPTION = """Procedural captioned scenes: 1-4 coloured shapes on textured backgrounds with counts and
spatial relations in five reference captions per image; a test_novel split holds (colour, shape)
pairs never seen elsewhere."""

TINY_SHAPES_CONFIG = shapes.ShapesConfig(
    image_size=16, num_train=24, num_unlabeled=8, num_validation=8, num_test=8, num_test_novel=8)


@dataclasses.dataclass(eq=False)
class CapnasShapesConfig(tfds.core.BuilderConfig):
    """A TFDS builder config carrying the generator's `ShapesConfig` (its name must match it)."""

    shapes: shapes.ShapesConfig = dataclasses.field(default_factory=shapes.ShapesConfig)


def config_name(shapes_config: shapes.ShapesConfig) -> str:
    """A TFDS config name that changes with every generation parameter.

    Prepared data lives under `<data_dir>/capnas_shapes/<config name>/<version>`, so two different
    configurations must never share a name.
    """
    if shapes_config == shapes.ShapesConfig():
        return "default"
    if shapes_config == TINY_SHAPES_CONFIG:
        return "tiny"
    c = shapes_config
    held_out = hashlib.sha1(repr(c.held_out_pairs).encode()).hexdigest()[:8]
    return (f"s{c.image_size}_g{c.grid_size}_n{c.num_train}-{c.num_unlabeled}-{c.num_validation}-"
            f"{c.num_test}-{c.num_test_novel}_c{c.captions_per_image}_o{c.max_objects}_h{held_out}_seed{c.seed}")


def builder_config(shapes_config: shapes.ShapesConfig) -> CapnasShapesConfig:
    """The builder config that generates `shapes_config`.

    For the predefined configurations this is the registered instance itself: TFDS refuses a
    custom config that merely shares the name of a registered one.
    """
    for registered in CapnasShapes.BUILDER_CONFIGS:
        if registered.shapes == shapes_config:
            return registered
    return _new_builder_config(shapes_config)


def _new_builder_config(shapes_config: shapes.ShapesConfig) -> CapnasShapesConfig:
    return CapnasShapesConfig(name=config_name(shapes_config), shapes=shapes_config,
                              description=f"capnas_shapes generated with {shapes_config}")


class CapnasShapes(tfds.core.GeneratorBasedBuilder):
    """`capnas_shapes`: procedural captioned scenes (see `capnas_tf.data.shapes`)."""

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "scene feature: each image's groups and relation as JSON.",
                     "1.2.0": "scene feature: also each object's group and grid cell, and the grid size, so that "
                              "relations are judged by geometry. Images and captions unchanged.",
                     "1.3.0": "default config: 16,000 training images instead of 2,000; every other split, and "
                              "the first 2,000 training images, unchanged."}
    BUILDER_CONFIGS = [_new_builder_config(shapes.ShapesConfig()), _new_builder_config(TINY_SHAPES_CONFIG)]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.shapes.image_size
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
                "image_id": tfds.features.Scalar(dtype=np.int64),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "scene": tfds.features.Text(),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config.shapes
        # TFDS cannot write an empty split, so a split configured with 0 images is left out.
        return {split: self._generate_examples(split) for split in shapes.SPLITS
                if shapes.split_size(config, split) > 0}

    def _generate_examples(self, split: str):
        config = self.builder_config.shapes
        for example in shapes.generate_split(config, split):
            captions = [] if split == "unlabeled" else list(example.captions)
            scene = json.dumps(shapes.scene_to_dict(example.scene), sort_keys=True)
            yield example.image_id, {"image": example.image, "image_id": example.image_id, "captions": captions,
                                     "scene": scene}


def prepare_capnas_shapes(shapes_config: shapes.ShapesConfig, data_dir: str | None = None) -> CapnasShapes:
    """Generates `shapes_config` into `data_dir` (if not there yet) and returns the builder."""
    builder = CapnasShapes(config=builder_config(shapes_config), data_dir=data_dir)
    builder.download_and_prepare()
    return builder
