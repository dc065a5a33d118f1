"""Real-data splits in the user's hands: separate train / validation / test files, split fractions of one
file, the source of the unlabeled images U, and a log line per split saying where it came from."""
import json
import logging
import os
import zlib

import numpy as np
import pytest
from data_files import write_coco, write_image

from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data


def _coco_file(root, name, first_id, count, *, image_dir, uncaptioned=0):
    """A COCO-format file over `count` new JPEGs in `image_dir` (ids first_id, …; the last `uncaptioned` bare)."""
    images, annotations = [], []
    for i in range(count):
        image_id = first_id + i
        write_image(os.path.join(image_dir, f"{name}_{i}.jpg"), size=8, seed=image_id)
        images.append({"id": image_id, "file_name": f"{name}_{i}.jpg"})
        if i < count - uncaptioned:
            annotations += [{"image_id": image_id, "caption": f"a {name} picture {j}"} for j in range(2)]
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return path


def _config(**kwargs):
    return DataConfig(**(dict(dataset="coco", image_size=8, min_word_count=1, batch_size=2) | kwargs))


def test_one_file_is_hash_split_by_default_as_before(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=40, captions_per_image=1, uncaptioned=3)
    lines = []
    data = load_caption_data(_config(annotations=annotations, image_dir=image_dir), log=lines.append)
    expected = {"train": set(), "validation": set(), "test": set()}
    for image_id in range(100, 137):  # the fixed hash split of the image ids: 10 % validation, 10 % test
        u = zlib.crc32(f"split:{image_id}".encode()) / 2**32
        expected["validation" if u < 0.1 else "test" if u < 0.2 else "train"].add(image_id)
    assert {split: set(data.references(split)) for split in expected} == expected
    assert set(data.references("unlabeled")) == {137, 138, 139}  # listed without captions: U (auto)
    assert len(lines) == 4 and lines[0].startswith(f"Data split train: {len(expected['train'])} images, "
                                                   f"{len(expected['train'])} captions, from {annotations}")
    assert "80% of its captioned images" in lines[0] and "--split_fractions=0.8,0.1,0.1" in lines[0]
    assert lines[3] == f"Data split unlabeled: 3 images, 0 captions, from {annotations} (--annotations): its images " \
                       "without captions"


def test_split_fractions_share_out_one_file(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=60, captions_per_image=1)
    data = load_caption_data(_config(annotations=annotations, image_dir=image_dir, split_fractions=(0.5, 0.5, 0.0)))
    assert data.num_images("test") == 0 and 15 <= data.num_images("validation") <= 45
    assert data.num_images("train") + data.num_images("validation") == 60


def test_separate_validation_and_test_files(tmp_path):
    image_dir = str(tmp_path / "images")
    train = _coco_file(str(tmp_path), "train", 1, 6, image_dir=image_dir)
    val = _coco_file(str(tmp_path), "val", 1001, 4, image_dir=image_dir, uncaptioned=1)
    test = _coco_file(str(tmp_path), "test", 2001, 3, image_dir=image_dir)
    lines = []
    data = load_caption_data(_config(annotations=train, image_dir=image_dir, val_annotations=val,
                                     test_annotations=test), log=lines.append)
    assert sorted(data.references("train")) == list(range(1, 7))  # all of it: nothing cut out
    assert sorted(data.references("validation")) == [1001, 1002, 1003]  # its bare image is not used
    assert sorted(data.references("test")) == [2001, 2002, 2003]
    assert data.num_images("unlabeled") == 6  # no bare images in --annotations: the training images
    assert lines == [
        f"Data split train: 6 images, 12 captions, from {train} (--annotations)",
        f"Data split validation: 3 images, 6 captions, from {val} (--val_annotations)",
        f"Data split test: 3 images, 6 captions, from {test} (--test_annotations)",
        "Data split unlabeled: 6 images, 0 captions, from the training images, captions dropped "
        "(--unlabeled_source=auto)"]
    batch = next(iter(data.validation_dataset(2)))
    assert batch["image"].shape == (2, 8, 8, 3)


def test_a_validation_file_alone_leaves_test_cut_from_the_training_file(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=40, captions_per_image=1)
    val = _coco_file(str(tmp_path), "val", 1001, 3, image_dir=image_dir)
    lines = []
    data = load_caption_data(_config(annotations=annotations, image_dir=image_dir, val_annotations=val),
                             log=lines.append)
    assert sorted(data.references("validation")) == [1001, 1002, 1003]
    tests = {i for i in range(100, 140) if zlib.crc32(f"split:{i}".encode()) / 2**32 < 0.1}
    assert set(data.references("test")) == tests and data.num_images("train") == 40 - len(tests)
    assert "10% of its captioned images" in lines[2] and "--split_fractions=0.9,0,0.1" in lines[2]


def test_unlabeled_images_from_a_folder(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=6, captions_per_image=1, uncaptioned=2)
    folder = tmp_path / "unlabeled"
    write_image(str(folder / "a.jpg"), size=8)
    write_image(str(folder / "b" / "c.png"), size=8, fmt="PNG")
    from PIL import Image

    Image.new("1", (8, 8), 1).save(folder / "d.bmp")  # a 1-bit BMP: white, not a decoding error
    lines = []
    data = load_caption_data(_config(annotations=annotations, image_dir=image_dir, split_fractions=(1, 0, 0),
                                     unlabeled_source="folder", unlabeled_dir=str(folder)), log=lines.append)
    assert data.num_images("unlabeled") == 3 and data.num_train_images == 4  # the bare images are not U now
    images = np.concatenate([b["image"] for b in data.eval_dataset("unlabeled", 1)])
    np.testing.assert_allclose(images[2], 1.0)  # d.bmp, last in path order
    assert next(iter(data.unlabeled_dataset(2)))["image"].shape == (2, 8, 8, 3)
    assert lines[-1] == f"Data split unlabeled: 3 images, 0 captions, from {folder} (--unlabeled_source=folder)"


def test_unlabeled_holdout_and_train_on_a_coco_file(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=20, captions_per_image=1)
    lines = []
    config = _config(annotations=annotations, image_dir=image_dir, split_fractions=(1, 0, 0))
    held = load_caption_data(DataConfig(**{**config.__dict__, "unlabeled_source": "holdout",
                                           "unlabeled_fraction": 0.3}), log=lines.append)
    train_ids, unlabeled_ids = set(held.references("train")), set(held.references("unlabeled"))
    assert unlabeled_ids and not train_ids & unlabeled_ids and len(train_ids | unlabeled_ids) == 20
    assert lines[0].endswith("less the images held out for unlabeled")
    assert "30% of the training images" in lines[-1] and "--unlabeled_fraction=0.3" in lines[-1]
    same = load_caption_data(DataConfig(**{**config.__dict__, "unlabeled_source": "train"}))
    assert set(same.references("unlabeled")) == set(same.references("train")) and same.num_train_images == 20


def test_bad_examples_are_logged_and_counted_under_skip_end_to_end(tmp_path, caplog):
    annotations, image_dir = write_coco(str(tmp_path), num_images=6, captions_per_image=1)
    with open(annotations) as f:
        coco = json.load(f)
    coco["images"][0]["id"] = "first"  # not an integer: the image and its caption go
    coco["images"][1]["file_name"] = "../../etc/passwd"
    coco["annotations"][2]["caption"] = "a PLACEHOLDER dog"
    with open(annotations, "w") as f:
        f.write(json.dumps(coco).replace("PLACEHOLDER", "\\udc00"))
    with caplog.at_level(logging.WARNING, logger="capnas_tf.data"):
        data = load_caption_data(_config(annotations=annotations, image_dir=image_dir, split_fractions=(1, 0, 0),
                                         on_bad_example="skip"))
    assert data.skipped == {"bad_annotation": 1, "missing_image": 2, "bad_path": 1, "bad_caption": 1,
                            "no_caption": 1}
    assert data.num_train_images == 3
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping bad example")]
    assert len(skipped) == 6 and all("captions.json" in message for message in skipped)
    assert sum(1 for _ in data.train_dataset(1, repeat=False)) == 3


def test_an_empty_unlabeled_folder_names_the_flag(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=3, captions_per_image=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--unlabeled_dir=.*empty: no usable image files"):
        load_caption_data(_config(annotations=annotations, image_dir=image_dir, split_fractions=(1, 0, 0),
                                  unlabeled_source="folder", unlabeled_dir=str(tmp_path / "empty")))


def test_a_karpathy_file_given_as_the_coco_validation_file_names_its_flag_and_format(tmp_path):
    from data_files import write_karpathy

    from capnas_tf.data.captions_io import BadAnnotationFileError

    annotations, image_dir = write_coco(str(tmp_path), num_images=3, captions_per_image=1)
    karpathy, _ = write_karpathy(str(tmp_path / "k"), splits=("val",))
    with pytest.raises(BadAnnotationFileError, match="^--val_annotations: .*looks like a Karpathy-split file"):
        load_caption_data(_config(annotations=annotations, image_dir=image_dir, val_annotations=karpathy))
