import dataclasses
import json
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

from capnas_tf.data import shapes, shapes_tfds

from data_files import TINY_SHAPES, write_coco

from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.data.shapes_content import content_accuracy


def test_tfds_load_reads_the_generated_examples_byte_for_byte(tfds_dir):
    dataset = tfds.load("capnas_shapes/tiny", split="train[:4]", data_dir=tfds_dir)
    examples = list(dataset.as_numpy_iterator())
    assert len(examples) == 4
    for index, example in enumerate(examples):
        expected = shapes.generate_example(TINY_SHAPES, "train", index)
        assert example["image"].dtype == np.uint8 and example["image"].shape == (16, 16, 3)
        assert example["image"].tobytes() == expected.image.tobytes()  # PNG is lossless
        assert example["image_id"] == expected.image_id
        assert [c.decode() for c in example["captions"]] == list(expected.captions)


def test_all_splits_have_the_configured_sizes_and_unlabeled_has_no_captions(tfds_dir):
    builder = tfds.builder("capnas_shapes/tiny", data_dir=tfds_dir)
    for split in shapes.SPLITS:
        assert builder.info.splits[split].num_examples == shapes.split_size(TINY_SHAPES, split)
    unlabeled = tfds.load("capnas_shapes/tiny", split="unlabeled", data_dir=tfds_dir)
    assert all(len(ex["captions"]) == 0 for ex in unlabeled.as_numpy_iterator())


def test_every_split_stores_its_scenes_and_caption_data_returns_them(tfds_dir, tmp_path):
    for split in shapes.SPLITS:  # unlabeled included: its images have scenes, only no captions
        stored = [ex["scene"].decode() for ex in tfds.load("capnas_shapes/tiny", split=split, data_dir=tfds_dir)
                  .as_numpy_iterator()]
        expected = [shapes.scene_to_dict(ex.scene) for ex in shapes.generate_split(TINY_SHAPES, split)]
        assert stored == [json.dumps(s, sort_keys=True) for s in expected], split
        assert all(len(json.loads(s)["objects"]) == sum(g["count"] for g in json.loads(s)["groups"])
                   for s in stored), split  # object cells are stored: relations are judged by geometry
    assert str(tfds.builder("capnas_shapes/tiny", data_dir=tfds_dir).info.version) == "1.3.0"

    config = DataConfig(dataset="capnas_shapes", data_dir=tfds_dir, image_size=16, min_word_count=1, batch_size=4,
                        shapes=TINY_SHAPES, unlabeled_source="holdout")
    data = load_caption_data(config)
    for split in data.splits:
        scenes = data.scenes(split)
        assert list(scenes) == list(data.references(split)), split  # subsets (holdout) keep their scenes
        for image_id, scene in scenes.items():
            split_name = {code: name for name, code in shapes.SPLIT_CODES.items()}[image_id // shapes.IMAGE_ID_STRIDE]
            example = shapes.generate_example(TINY_SHAPES, split_name, image_id % shapes.IMAGE_ID_STRIDE)
            assert scene == shapes.scene_to_dict(example.scene)
    assert set(data.scenes("train")) | set(data.scenes("unlabeled")) == {
        shapes.image_id_for("train", i) for i in range(TINY_SHAPES.num_train)}
    test = data.references("test")
    first_references = {image_id: captions[0] for image_id, captions in test.items()}
    assert content_accuracy(first_references, data.scenes("test"))["entirely_correct"] == 1.0

    annotations, image_dir = write_coco(str(tmp_path), num_images=6)
    coco = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir,
                                        min_word_count=1, split_fractions=(0.4, 0.3, 0.3)))
    assert all(coco.scenes(split) is None for split in coco.splits)


def test_custom_config_builds_through_builder_kwargs(tmp_path):
    config = dataclasses.replace(TINY_SHAPES, image_size=12, num_train=3, num_unlabeled=0, num_validation=2,
                                 num_test=2, num_test_novel=0, seed=7)
    dataset = tfds.load("capnas_shapes", split="train", data_dir=str(tmp_path),
                        builder_kwargs={"config": shapes_tfds.builder_config(config)})
    images = [ex["image"] for ex in dataset.as_numpy_iterator()]
    assert len(images) == 3 and images[0].shape == (12, 12, 3)
    builder = tfds.builder("capnas_shapes", config=shapes_tfds.builder_config(config), data_dir=str(tmp_path))
    assert "unlabeled" not in builder.info.splits  # empty splits are left out


def test_config_names_tell_configurations_apart():
    names = {shapes_tfds.config_name(c) for c in (
        shapes.ShapesConfig(), TINY_SHAPES, shapes.ShapesConfig(seed=1), shapes.ShapesConfig(image_size=48),
        shapes.ShapesConfig(held_out_pairs=(("red", "circle"),)))}
    assert len(names) == 5
    assert shapes_tfds.builder_config(shapes.ShapesConfig()) is shapes_tfds.CapnasShapes.BUILDER_CONFIGS[0]


def test_importing_capnas_tf_registers_the_builder():
    # `import capnas_tf` imports TensorFlow and Keras now (it registers the package's Keras classes, see
    # tests/test_package_import.py); the builder is registered all the same.
    code = ("import capnas_tf, tensorflow_datasets as tfds; "
            "print('capnas_shapes' in tfds.list_builders(with_community_datasets=False))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"
