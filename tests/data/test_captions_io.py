import json
import os

import pytest
from data_files import write_coco, write_image, write_karpathy

from capnas_tf.data import captions_io
from capnas_tf.data.captions_io import BadAnnotationFileError, BadExampleError, BadExamples


def _rewrite(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _corrupt(path):
    """Writes an invalid marker (0xFF 0x89) into the entropy-coded data: libjpeg stops with an error."""
    data = bytearray(open(path, "rb").read())
    k = len(data) * 2 // 3
    data[k:k + 2] = b"\xff\x89"
    with open(path, "wb") as f:
        f.write(bytes(data))


def _scramble(path):
    """Scrambles 100 bytes of entropy-coded data: libjpeg only warns and decodes garbage pixels."""
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 100):
        data[i] = (data[i] * 7 + 13) % 256
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_coco_reader_returns_sorted_records_with_paths_and_captions(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=5, captions_per_image=3, uncaptioned=1)
    records = captions_io.read_coco_captions(annotations, image_dir)
    assert [r.image_id for r in records] == [100, 101, 102, 103, 104]
    assert all(os.path.isfile(r.image_path) for r in records)
    assert [len(r.captions) for r in records] == [3, 3, 3, 3, 0]  # the last image has no annotation
    with open(annotations) as f:
        first = [a["caption"] for a in json.load(f)["annotations"] if a["image_id"] == 100]
    assert list(records[0].captions) == first


def test_karpathy_reader_coco_style_uses_filepath_cocoid_and_raw(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    records = captions_io.read_karpathy_split(path, root)
    assert len(records) == 16
    assert records[0].image_id == 1000 and records[0].split == "train"
    assert records[0].image_path == os.path.join(root, "train2014", "COCO_0000.jpg")
    with open(path) as f:
        assert list(records[0].captions) == [s["raw"] for s in json.load(f)["images"][0]["sentences"]]
    only_test = captions_io.read_karpathy_split(path, root, splits=["test"])
    assert {r.split for r in only_test} == {"test"} and len(only_test) == 3


def test_karpathy_reader_flickr_style_uses_imgid_and_tokens_without_raw(tmp_path):
    path, root = write_karpathy(str(tmp_path), splits=("train", "val", "test"), with_filepath=False)
    _rewrite(path, lambda d: [s.pop("raw") for img in d["images"] for s in img["sentences"]])
    records = captions_io.read_karpathy_split(path, root)
    assert [r.image_id for r in records] == [0, 1, 2]
    assert records[0].image_path == os.path.join(root, "COCO_0000.jpg")
    assert all(c == c.lower() and "." not in c for c in records[0].captions)  # joined tokens


def test_missing_annotation_file_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        captions_io.read_coco_captions(str(tmp_path / "nothing.json"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset_x.json"):
        captions_io.read_karpathy_split(str(tmp_path / "dataset_x.json"), str(tmp_path))


def test_malformed_annotation_file_raises_naming_it(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text("{not json")
    with pytest.raises(BadAnnotationFileError, match="captions.json.*not valid JSON"):
        captions_io.read_coco_captions(str(path), str(tmp_path))
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(BadAnnotationFileError, match="'annotations'"):
        captions_io.read_coco_captions(str(path), str(tmp_path))


def test_annotation_naming_an_unknown_image_id(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=3)
    _rewrite(annotations, lambda d: d["annotations"].append({"id": 99, "image_id": 555, "caption": "a dog"}))
    with pytest.raises(BadExampleError, match=r"annotations\[9\].*image_id 555"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    assert len(captions_io.read_coco_captions(annotations, image_dir, bad=bad)) == 3
    assert bad.counts == {"missing_image": 1}


def test_annotation_naming_a_missing_image_file(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=3)
    os.remove(os.path.join(image_dir, "img_001.jpg"))
    with pytest.raises(BadExampleError, match="img_001.jpg.*does not exist"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    records = captions_io.read_coco_captions(annotations, image_dir, bad=bad)
    assert [r.image_id for r in records] == [100, 102] and bad.counts == {"missing_image": 1}
    # Without decoding, a missing file is still caught.
    with pytest.raises(BadExampleError, match="does not exist"):
        captions_io.read_coco_captions(annotations, image_dir, validate_images=False)


@pytest.mark.parametrize("damage, problem", [(_truncate, "(?i:truncated)"), (_corrupt, "cannot be decoded")])
def test_truncated_or_corrupt_jpeg(tmp_path, damage, problem):
    path, root = write_karpathy(str(tmp_path), splits=("train", "train", "val"))
    damage(os.path.join(root, "train2014", "COCO_0001.jpg"))
    with pytest.raises(BadExampleError, match=f"COCO_0001.jpg.*{problem}"):
        captions_io.read_karpathy_split(path, root)
    bad = BadExamples("skip")
    records = captions_io.read_karpathy_split(path, root, bad=bad)
    assert [r.image_id for r in records] == [1000, 1002] and bad.counts == {"bad_image": 1}


@pytest.mark.parametrize("damage", [None, _truncate, _corrupt, _scramble])
def test_up_front_check_agrees_with_tensorflow_decoding(tmp_path, damage):
    import tensorflow as tf

    path = write_image(str(tmp_path / "x.jpg"), size=32, seed=3)
    if damage:
        damage(path)
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        tf_decodes = True
    except tf.errors.InvalidArgumentError:
        tf_decodes = False
    assert (captions_io.image_problem(path) is None) == tf_decodes


def test_file_that_is_not_an_image(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2)
    with open(os.path.join(image_dir, "img_000.jpg"), "wb") as f:
        f.write(b"<html>not found</html>")
    with pytest.raises(BadExampleError, match="img_000.jpg.*cannot be decoded"):
        captions_io.read_coco_captions(annotations, image_dir)


@pytest.mark.parametrize("bad_caption", ["", "   ", "?!...", ",;"])
def test_empty_or_punctuation_only_caption(tmp_path, bad_caption):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2, captions_per_image=2)
    _rewrite(annotations, lambda d: d["annotations"][1].update(caption=bad_caption))
    with pytest.raises(BadExampleError, match=r"image 100 .*empty after removing punctuation"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    records = captions_io.read_coco_captions(annotations, image_dir, bad=bad)
    assert [len(r.captions) for r in records] == [1, 2] and bad.counts == {"empty_caption": 1}


def test_image_whose_every_caption_is_empty_is_dropped_under_skip(tmp_path):
    path, root = write_karpathy(str(tmp_path), splits=("train", "train"))
    _rewrite(path, lambda d: [s.update(raw=".") for s in d["images"][0]["sentences"]])
    bad = BadExamples("skip")
    records = captions_io.read_karpathy_split(path, root, bad=bad)
    assert [r.image_id for r in records] == [1001]
    assert bad.counts == {"empty_caption": 5, "no_caption": 1} and bad.total == 6


def test_rgba_png_and_grey_jpeg_are_accepted(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2)
    write_image(os.path.join(image_dir, "img_000.jpg"), mode="L")
    write_image(os.path.join(image_dir, "img_001.jpg"), mode="RGBA", fmt="PNG")  # PNG content, .jpg name
    records = captions_io.read_coco_captions(annotations, image_dir)
    assert len(records) == 2


def test_image_problem_flags_unsupported_formats(tmp_path):
    from PIL import Image

    path = str(tmp_path / "a.tiff")
    Image.new("RGB", (8, 8)).save(path)
    assert "TIFF" in captions_io.image_problem(path)
    assert captions_io.image_problem(str(tmp_path / "none.jpg")) == "image file does not exist"


def test_bad_examples_policy_validates_its_mode():
    with pytest.raises(ValueError, match="on_bad_example"):
        BadExamples("ignore")


# --- entries that name no usable image or caption -----------------------------------------------------

@pytest.mark.parametrize("bad_id", ["abc", 1.5, True, None, -3, [7], 2**64])
def test_image_id_that_is_not_an_integer_is_named_or_skipped(tmp_path, bad_id):
    annotations, image_dir = write_coco(str(tmp_path), num_images=3)
    _rewrite(annotations, lambda d: d["images"][1].update(id=bad_id))
    with pytest.raises(BadExampleError, match=r"captions.json: images\[1\]: image id .* is not a non-negative integer"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    records = captions_io.read_coco_captions(annotations, image_dir, bad=bad)
    assert [r.image_id for r in records] == [100, 102]
    assert bad.counts == {"bad_annotation": 1, "missing_image": 3}  # and its 3 captions name an unknown image


def test_integral_ids_written_as_strings_or_floats_are_read(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2, captions_per_image=1)
    _rewrite(annotations, lambda d: (d["images"][0].update(id="100"), d["annotations"][0].update(image_id=100.0)))
    assert [len(r.captions) for r in captions_io.read_coco_captions(annotations, image_dir)] == [1, 1]


def test_annotation_whose_image_id_is_not_an_integer(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2)
    _rewrite(annotations, lambda d: d["annotations"][2].update(image_id={"id": 100}))
    with pytest.raises(BadExampleError, match=r"annotations\[2\]: image_id .* is not a non-negative integer"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    assert len(captions_io.read_coco_captions(annotations, image_dir, bad=bad)) == 2
    assert bad.counts == {"bad_annotation": 1}


def test_karpathy_id_that_is_not_an_integer(tmp_path):
    path, root = write_karpathy(str(tmp_path), splits=("train", "train", "val"))
    _rewrite(path, lambda d: d["images"][0].update(cocoid="COCO_0000"))
    with pytest.raises(BadExampleError, match=r"dataset_coco.json: images\[0\]: image id 'COCO_0000'"):
        captions_io.read_karpathy_split(path, root)
    bad = BadExamples("skip")
    assert [r.image_id for r in captions_io.read_karpathy_split(path, root, bad=bad)] == [1001, 1002]
    assert bad.counts == {"bad_annotation": 1}


def test_caption_with_a_lone_surrogate_is_named_or_skipped(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2, captions_per_image=2)
    with open(annotations) as f:
        text = f.read()
    data = json.loads(text)
    data["annotations"][3]["caption"] = "a dog PLACEHOLDER on grass"
    text = json.dumps(data).replace("PLACEHOLDER", "\\ud800")  # the JSON escape of a lone surrogate
    with open(annotations, "w") as f:
        f.write(text)
    with pytest.raises(BadExampleError, match=r"image 101 .*not valid Unicode"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    records = captions_io.read_coco_captions(annotations, image_dir, bad=bad)
    assert [len(r.captions) for r in records] == [2, 1] and bad.counts == {"bad_caption": 1}
    assert all(c.encode("utf-8") for r in records for c in r.captions)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.jpg", "sub/../../outside.jpg", "", 42])
def test_file_name_that_leads_out_of_the_image_folder_is_named_or_skipped(tmp_path, name):
    annotations, image_dir = write_coco(str(tmp_path), num_images=3)
    write_image(str(tmp_path / "outside.jpg"))  # exists, next to the image folder
    _rewrite(annotations, lambda d: d["images"][2].update(file_name=name))
    with pytest.raises(BadExampleError, match=r"captions.json: images\[2\]: file name"):
        captions_io.read_coco_captions(annotations, image_dir)
    bad = BadExamples("skip")
    records = captions_io.read_coco_captions(annotations, image_dir, bad=bad)
    assert [r.image_id for r in records] == [100, 101] and bad.counts["bad_path"] == 1
    assert all(os.path.realpath(r.image_path).startswith(os.path.realpath(image_dir)) for r in records)


def test_karpathy_filepath_that_leads_out_of_the_image_root(tmp_path):
    path, root = write_karpathy(str(tmp_path / "data"), splits=("train", "train"))
    _rewrite(path, lambda d: d["images"][1].update(filepath="../.."))
    with pytest.raises(BadExampleError, match=r"images\[1\]: file name '../../COCO_0001.jpg' leads outside"):
        captions_io.read_karpathy_split(path, root)
    bad = BadExamples("skip")
    assert len(captions_io.read_karpathy_split(path, root, bad=bad)) == 1 and bad.counts == {"bad_path": 1}


def test_file_name_with_a_dot_dot_that_stays_inside_is_fine(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2)
    _rewrite(annotations, lambda d: d["images"][0].update(file_name="sub/../img_000.jpg"))
    records = captions_io.read_coco_captions(annotations, image_dir)
    assert records[0].image_path == os.path.join(image_dir, "img_000.jpg")


# --- the wrong format -----------------------------------------------------------------------------------

def test_karpathy_file_read_as_coco_says_what_it_looks_like(tmp_path):
    path, root = write_karpathy(str(tmp_path), splits=("train",))
    with pytest.raises(BadAnnotationFileError, match="looks like a Karpathy-split file.*--dataset=karpathy"):
        captions_io.read_coco_captions(path, root)


def test_coco_file_read_as_karpathy_says_what_it_looks_like(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=1)
    with pytest.raises(BadAnnotationFileError, match="looks like COCO-format caption annotations.*--dataset=coco"):
        captions_io.read_karpathy_split(annotations, image_dir)


def test_coco_object_annotations_are_not_captions(tmp_path):
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 3}]}))
    with pytest.raises(BadAnnotationFileError, match="object annotations.*captions_"):
        captions_io.read_coco_captions(str(path), str(tmp_path))


def test_bad_example_error_names_the_flag_that_skips(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=2)
    os.remove(os.path.join(image_dir, "img_000.jpg"))
    with pytest.raises(BadExampleError, match="--on_bad_example=skip") as info:
        captions_io.read_coco_captions(annotations, image_dir)
    assert "on_bad_example='skip'" not in str(info.value)


def test_image_folder_lists_image_files_recursively(tmp_path):
    write_image(str(tmp_path / "b" / "x.PNG"), fmt="PNG")
    write_image(str(tmp_path / "a.jpg"))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(BadExampleError, match="broken.jpg"):
        captions_io.read_image_folder(str(tmp_path))
    bad = BadExamples("skip")
    records = captions_io.read_image_folder(str(tmp_path), bad=bad)
    assert [os.path.relpath(r.image_path, tmp_path) for r in records] == ["a.jpg", os.path.join("b", "x.PNG")]
    assert [r.image_id for r in records] == [0, 1] and all(r.captions == () for r in records)
    assert bad.counts == {"bad_image": 1}
