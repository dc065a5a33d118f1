"""DataConfig refuses every bad setting at construction (`ConfigError` naming the field), and on the
command line the error names the flag: one test per rule."""
import json

import pytest
from absl import flags

from capnas_tf import flags as capnas_flags
from capnas_tf.config import ConfigError
from capnas_tf.config import DataConfig


@pytest.fixture
def files(tmp_path):
    """Paths of three annotation files, an image folder and an unlabeled folder (contents do not matter here)."""
    for name in ("train.json", "val.json", "test.json"):
        (tmp_path / name).write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "images").mkdir()
    (tmp_path / "unlabeled").mkdir()
    return {name: str(tmp_path / name) for name in ("train.json", "val.json", "test.json", "images", "unlabeled")}


def coco(files, **overrides) -> dict:
    return dict(dataset="coco", annotations=files["train.json"], image_dir=files["images"]) | overrides


# (overrides given `files`, the field the error names, a phrase of what it expects). One row per rule.
REFUSED = [
    (lambda f: dict(dataset="imagenet"), "dataset", "one of"),
    (lambda f: dict(image_size=0), "image_size", ">= 1"),
    (lambda f: dict(image_size=2.5), "image_size", ">= 1"),
    (lambda f: dict(max_caption_len=1), "max_caption_len", ">= 2"),
    (lambda f: dict(batch_size=0), "batch_size", ">= 1"),
    (lambda f: dict(min_word_count=0), "min_word_count", ">= 1"),
    (lambda f: dict(on_bad_example="ignore"), "on_bad_example", "one of"),
    # annotation files and the image folder: set where read, existing, set nowhere else
    (lambda f: dict(dataset="coco", image_dir=f["images"]), "annotations", "set for dataset=coco"),
    (lambda f: dict(dataset="karpathy", image_dir=f["images"]), "annotations", "set for dataset=karpathy"),
    (lambda f: coco(f, annotations=f["images"] + "/missing.json"), "annotations", "an existing file"),
    (lambda f: dict(annotations=f["train.json"]), "annotations", "unset for dataset=capnas_shapes"),
    (lambda f: coco(f, image_dir=None), "image_dir", "set for dataset=coco"),
    (lambda f: coco(f, image_dir=f["images"] + "/missing"), "image_dir", "an existing folder"),
    (lambda f: dict(dataset="coco_captions_tfds", image_dir=f["images"]), "image_dir", "unset for dataset="),
    (lambda f: dict(dataset="karpathy", annotations=f["train.json"], image_dir=f["images"],
                    val_annotations=f["val.json"]), "val_annotations", "only coco reads it"),
    (lambda f: coco(f, val_annotations=f["images"] + "/missing.json"), "val_annotations", "an existing file"),
    (lambda f: coco(f, val_annotations=f["train.json"]), "val_annotations", "another file than annotations"),
    (lambda f: coco(f, test_annotations=f["images"] + "/missing.json"), "test_annotations", "an existing file"),
    (lambda f: coco(f, test_annotations=f["train.json"]), "test_annotations", "another file than annotations"),
    (lambda f: coco(f, val_annotations=f["val.json"], test_annotations=f["val.json"]), "test_annotations",
     "another file than val_annotations"),
    # split fractions
    (lambda f: dict(split_fractions=(0.8, 0.1, 0.1)), "split_fractions", "only coco splits a file"),
    (lambda f: coco(f, split_fractions=(0.9, 0.1)), "split_fractions", "three numbers >= 0"),
    (lambda f: coco(f, split_fractions=(1.2, -0.1, -0.1)), "split_fractions", "three numbers >= 0"),
    (lambda f: coco(f, split_fractions=(0.8, 0.1, float("nan"))), "split_fractions", "three numbers >= 0"),
    (lambda f: coco(f, split_fractions=(0.5, 0.1, 0.1)), "split_fractions", "summing to 1"),
    (lambda f: coco(f, split_fractions=(0.0, 0.5, 0.5)), "split_fractions", "the training share) is > 0"),
    (lambda f: coco(f, split_fractions=(0.8, 0.1, 0.1), val_annotations=f["val.json"]), "split_fractions",
     "0 for validation"),
    (lambda f: coco(f, split_fractions=(0.8, 0.0, 0.2), test_annotations=f["test.json"]), "split_fractions",
     "0 for test"),
    # the unlabeled images
    (lambda f: dict(unlabeled_source="none"), "unlabeled_source", "one of"),
    (lambda f: dict(unlabeled_fraction=0.0), "unlabeled_fraction", "in (0, 1)"),
    (lambda f: dict(unlabeled_fraction=1.0), "unlabeled_fraction", "in (0, 1)"),
    (lambda f: dict(unlabeled_source="folder"), "unlabeled_dir", "set (a folder of images"),
    (lambda f: dict(unlabeled_source="folder", unlabeled_dir=f["images"] + "/missing"), "unlabeled_dir",
     "an existing folder"),
    (lambda f: dict(unlabeled_source="holdout", unlabeled_dir=f["unlabeled"]), "unlabeled_dir",
     "unset for unlabeled_source=holdout"),
]


@pytest.mark.parametrize("overrides, field, expected", REFUSED, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)])
def test_bad_data_settings_are_refused_naming_the_field(files, overrides, field, expected):
    with pytest.raises(ConfigError, match=rf"^DataConfig\.{field} must be ") as info:
        DataConfig(**overrides(files))
    assert info.value.field == field and expected in info.value.expected


ACCEPTED = [
    lambda f: {},
    lambda f: coco(f),
    lambda f: coco(f, split_fractions=(1, 0, 0)),
    lambda f: coco(f, split_fractions=[0.7, 0.2, 0.1]),
    lambda f: coco(f, val_annotations=f["val.json"], split_fractions=(0.9, 0.0, 0.1)),
    lambda f: coco(f, val_annotations=f["val.json"], test_annotations=f["test.json"]),
    lambda f: dict(dataset="karpathy", annotations=f["train.json"], image_dir=f["images"]),
    lambda f: dict(unlabeled_source="folder", unlabeled_dir=f["unlabeled"]),
    lambda f: dict(unlabeled_source="holdout", unlabeled_fraction=0.5),
]


@pytest.mark.parametrize("overrides", ACCEPTED)
def test_good_data_settings_are_accepted(files, overrides):
    DataConfig(**overrides(files))


def test_default_split_fractions_give_a_tenth_to_each_split_without_its_own_file(files):
    assert DataConfig(**coco(files)).resolved_split_fractions() == pytest.approx((0.8, 0.1, 0.1))
    assert DataConfig(**coco(files, val_annotations=files["val.json"])).resolved_split_fractions() == pytest.approx(
        (0.9, 0.0, 0.1))
    both = coco(files, val_annotations=files["val.json"], test_annotations=files["test.json"])
    assert DataConfig(**both).resolved_split_fractions() == (1.0, 0.0, 0.0)


# -- on the command line: the flag, not the field ----------------------------------------------------------

def _cli_error(*args) -> str:
    FLAGS = flags.FLAGS
    try:
        FLAGS.unparse_flags()
        FLAGS(["train", *args])
        with pytest.raises(ValueError) as info:
            capnas_flags.data_config_from_flags()
        return capnas_flags.describe_config_error(info.value)
    finally:
        FLAGS.unparse_flags()


def test_cli_errors_name_the_data_flags(files):
    data = [f"--annotations={files['train.json']}", f"--image_dir={files['images']}"]
    assert _cli_error("--dataset=coco").startswith(
        "--annotations (not set): must be set for --dataset=coco: the annotation file")
    assert _cli_error("--dataset=coco", *data, "--split_fractions=0.5,0.1,0.1").startswith(
        "--split_fractions=0.5,0.1,0.1: must be three numbers summing to 1")
    assert _cli_error("--dataset=coco", *data, f"--val_annotations={files['val.json']}",
                      "--split_fractions=0.8,0.1,0.1").startswith(
        "--split_fractions=0.8,0.1,0.1: must be 0 for validation, which comes from its own file (given by "
        "--val_annotations)")
    assert _cli_error("--unlabeled_source=folder").startswith(
        "--unlabeled_dir (not set): must be set (a folder of images without captions) for --unlabeled_source=folder")
    assert _cli_error(f"--annotations={files['train.json']}").startswith(
        f"--annotations={files['train.json']}: must be unset for --dataset=capnas_shapes")


def test_split_fractions_that_are_not_numbers_are_refused_by_the_flag_parser():
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="split_fractions.*comma-separated numbers"):
            flags.FLAGS(["train", "--split_fractions=0.8,ten,0.1"])
    finally:
        flags.FLAGS.unparse_flags()


def test_every_data_field_a_flag_sets_round_trips(files):
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", "--dataset=coco", f"--annotations={files['train.json']}", f"--image_dir={files['images']}",
                     f"--test_annotations={files['test.json']}", "--split_fractions=0.7,0.3,0",
                     "--unlabeled_source=folder", f"--unlabeled_dir={files['unlabeled']}", "--novalidate_images"])
        config = capnas_flags.data_config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert config.split_fractions == (0.7, 0.3, 0.0) and config.test_annotations == files["test.json"]
    assert config.unlabeled_source == "folder" and config.unlabeled_dir == files["unlabeled"]
    assert not config.validate_images
    assert DataConfig() == DataConfig(**{field: getattr(DataConfig(), field) for field in capnas_flags.DATA_FLAGS})
