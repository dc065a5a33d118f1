import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from data_files import TINY_SHAPES, write_coco, write_image, write_karpathy

from capnas_tf.data import captions_io, shapes
from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.data.text import END_ID, START_ID, Vocabulary


def shapes_config(tfds_dir, **kwargs) -> DataConfig:
    defaults = dict(dataset="capnas_shapes", data_dir=tfds_dir, image_size=16, max_caption_len=16,
                    min_word_count=1, batch_size=4, shapes=TINY_SHAPES)
    return DataConfig(**(defaults | kwargs))


@pytest.fixture(scope="module")
def shapes_data(tfds_dir):
    return load_caption_data(shapes_config(tfds_dir))


def _take(dataset, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(n)]


def test_streams_have_static_shapes_dtypes_and_value_ranges(shapes_data):
    train = shapes_data.train_dataset(4)
    assert train.element_spec["image"].shape == (4, 16, 16, 3) and train.element_spec["image"].dtype == tf.float32
    assert train.element_spec["tokens"].shape == (4, 16) and train.element_spec["tokens"].dtype == tf.int32
    assert shapes_data.validation_dataset(4).element_spec["tokens"].shape == (4, 16)
    assert set(shapes_data.unlabeled_dataset(4).element_spec) == {"image"}
    assert shapes_data.unlabeled_dataset(4).element_spec["image"].shape == (4, 16, 16, 3)
    batch = _take(train, 1)[0]
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0 and batch["image"].max() > 0.5
    assert (batch["tokens"][:, 0] == START_ID).all() and (batch["tokens"] == END_ID).sum(axis=1).tolist() == [1] * 4


def test_one_training_epoch_is_every_image_caption_pair_once(shapes_data):
    expected = sorted(
        (example.image.tobytes(), tuple(shapes_data.vocab.encode(c)))
        for example in shapes.generate_split(TINY_SHAPES, "train") for c in example.captions)
    assert shapes_data.num_train_examples == len(expected) == 24 * 5 and shapes_data.num_train_images == 24
    seen = []
    for batch in shapes_data.train_dataset(4, repeat=False):
        images = np.round(batch["image"].numpy() * 255).astype(np.uint8)
        seen += [(img.tobytes(), tuple(tok)) for img, tok in zip(images, batch["tokens"].numpy())]
    assert sorted(seen) == expected


def test_caption_groups_hold_distinct_captions_of_their_own_image_and_every_image_once_per_epoch(shapes_data):
    references = {example.image.tobytes(): {tuple(shapes_data.vocab.encode(c)) for c in example.captions}
                  for example in shapes.generate_split(TINY_SHAPES, "train")}
    groups = shapes_data.train_groups(4, 3, repeat=False)
    assert groups.element_spec["tokens"].shape == (4, 3, 16) and groups.element_spec["image"].shape == (4, 16, 16, 3)
    seen = []
    for batch in groups:
        images = np.round(batch["image"].numpy() * 255).astype(np.uint8)
        for image, tokens in zip(images, batch["tokens"].numpy()):
            captions = [tuple(t) for t in tokens]
            assert len(set(captions)) == 3 and set(captions) <= references[image.tobytes()]
            seen.append(image.tobytes())
    assert sorted(seen) == sorted(references)  # 24 images, 6 batches of 4


def test_caption_groups_repeat_captions_only_when_an_image_has_fewer_than_k(shapes_data):
    batch = _take(shapes_data.train_groups(2, 7), 1)[0]
    for tokens in batch["tokens"]:
        captions = [tuple(t) for t in tokens]
        assert len(set(captions)) == 5 and len(captions) == 7  # every one of the 5, then 2 again
    again = _take(shapes_data.train_groups(2, 7), 1)[0]
    np.testing.assert_array_equal(batch["tokens"], again["tokens"])


def test_same_seed_gives_the_same_batches_and_another_seed_does_not(tfds_dir):
    first = load_caption_data(shapes_config(tfds_dir, seed=3)).train_dataset(4)
    second = load_caption_data(shapes_config(tfds_dir, seed=3)).train_dataset(4)
    other = load_caption_data(shapes_config(tfds_dir, seed=4)).train_dataset(4)
    a, b, c = _take(first, 40), _take(second, 40), _take(other, 40)  # 40 batches: crosses an epoch
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["image"], y["image"])
    assert any(not np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))
    assert first.options().deterministic


def test_batches_depend_on_data_config_seed_only_not_on_the_global_seed(shapes_data):
    """`Dataset.shuffle(seed=s)` mixes TF's global seed in; the streams must not (see `seeded_shuffle`)."""
    import keras

    streams = dict(train=lambda: shapes_data.train_dataset(4), validation=lambda: shapes_data.validation_dataset(4),
                   unlabeled=lambda: shapes_data.unlabeled_dataset(4))
    batches = {}
    for global_seed in (4, 5):
        keras.utils.set_random_seed(global_seed)
        batches[global_seed] = {name: _take(build(), 40) for name, build in streams.items()}  # crosses an epoch
    for name in streams:
        for x, y in zip(batches[4][name], batches[5][name], strict=True):
            np.testing.assert_array_equal(x["image"], y["image"], err_msg=name)
            if "tokens" in x:
                np.testing.assert_array_equal(x["tokens"], y["tokens"], err_msg=name)
    first_epoch = np.concatenate([b["tokens"] for b in batches[4]["train"][:30]])  # 30 batches per epoch
    assert not np.array_equal(first_epoch, np.concatenate([b["tokens"] for b in _take(
        shapes_data.train_dataset(4, shuffle=False, repeat=False), 30)]))  # and they are shuffled


def test_seeded_shuffle_permutes_by_its_seeds_reshuffles_each_epoch_and_rejects_seeds_0_0():
    from capnas_tf.data.pipeline import seeded_shuffle

    def order(seeds):
        return [int(x) for x in seeded_shuffle(tf.data.Dataset.range(20), 8, seeds).repeat(2)]

    tf.random.set_seed(1)
    first = order((3, 1))
    tf.random.set_seed(2)
    assert order((3, 1)) == first
    assert order((3, 2)) != first
    assert sorted(first[:20]) == sorted(first[20:]) == list(range(20)) and first[:20] != first[20:]
    with pytest.raises(ValueError, match=r"seeds \(0, 0\)"):
        seeded_shuffle(tf.data.Dataset.range(3), 2, (0, 0))


def test_epochs_are_reshuffled(shapes_data):
    batches = _take(shapes_data.train_dataset(4), 60)  # 30 batches per epoch
    first = np.concatenate([b["tokens"] for b in batches[:30]])
    second = np.concatenate([b["tokens"] for b in batches[30:]])
    assert not np.array_equal(first, second)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))


def test_eval_dataset_gives_each_image_once_padded_to_full_batches(shapes_data):
    batches = _take(shapes_data.eval_dataset("test_novel", 3), 10)
    assert [b["image"].shape for b in batches] == [(3, 16, 16, 3)] * 3
    ids = np.concatenate([b["image_id"] for b in batches])
    expected = [shapes.image_id_for("test_novel", i) for i in range(8)]
    assert ids.tolist() == expected + [-1]
    assert batches[-1]["image"][-1].max() == 0.0
    np.testing.assert_array_equal(np.round(batches[0]["image"][0] * 255).astype(np.uint8),
                                  shapes.generate_example(TINY_SHAPES, "test_novel", 0).image)
    unpadded = _take(shapes_data.eval_dataset("test_novel", 3, pad_remainder=False), 10)
    assert [len(b["image_id"]) for b in unpadded] == [3, 3, 2]


def test_references_are_the_raw_captions_of_each_image(shapes_data):
    references = shapes_data.references("test")
    example = shapes.generate_example(TINY_SHAPES, "test", 2)
    assert references[example.image_id] == list(example.captions)
    assert len(references) == 8
    with pytest.raises(ValueError, match="split must be one of"):
        shapes_data.references("dev")


def test_vocabulary_comes_from_training_captions_and_is_saved_in_the_workdir(tfds_dir, tmp_path):
    data = load_caption_data(shapes_config(tfds_dir, min_word_count=5), str(tmp_path))
    counts = {}
    for example in shapes.generate_split(TINY_SHAPES, "train"):
        for c in example.captions:
            for w in c.split():
                counts[w] = counts.get(w, 0) + 1
    assert set(data.vocab.tokens[4:]) == {w for w, n in counts.items() if n >= 5}
    assert Vocabulary.load(str(tmp_path / "vocab.txt"), max_len=16).tokens == data.vocab.tokens
    load_caption_data(shapes_config(tfds_dir, min_word_count=5), str(tmp_path))  # same data: fine
    with pytest.raises(ValueError, match="different vocabulary"):
        load_caption_data(shapes_config(tfds_dir, min_word_count=1), str(tmp_path))
    reused = load_caption_data(shapes_config(tfds_dir, min_word_count=1), str(tmp_path), vocab=data.vocab)
    assert reused.vocab is data.vocab


def test_image_size_regenerates_capnas_shapes_at_that_size(tfds_dir):
    data = load_caption_data(shapes_config(tfds_dir, image_size=12))
    assert data.train_dataset(4).element_spec["image"].shape == (4, 12, 12, 3)


def test_unlabeled_holdout_is_disjoint_from_training_images(tfds_dir):
    data = load_caption_data(shapes_config(tfds_dir, unlabeled_source="holdout", unlabeled_fraction=0.3))
    train_ids, unlabeled_ids = set(data.references("train")), set(data.references("unlabeled"))
    assert unlabeled_ids and not train_ids & unlabeled_ids
    assert len(train_ids | unlabeled_ids) == TINY_SHAPES.num_train
    held = np.concatenate([b["image"] for b in _take(data.unlabeled_dataset(2, repeat=False, shuffle=False), 99)])
    assert len(held) == 2 * (len(unlabeled_ids) // 2)
    assert data.num_train_examples == 5 * len(train_ids)


def test_cache_none_and_file_cache_give_the_same_batches(tfds_dir, tmp_path):
    reference = _take(load_caption_data(shapes_config(tfds_dir)).eval_dataset("test", 4), 2)
    for cache in ("none", str(tmp_path / "cache")):
        batches = _take(load_caption_data(shapes_config(tfds_dir, cache=cache)).eval_dataset("test", 4), 2)
        for x, y in zip(reference, batches):
            np.testing.assert_array_equal(x["image"], y["image"])


def test_not_enough_examples_for_one_batch_is_an_error(shapes_data):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        shapes_data.unlabeled_dataset(16, repeat=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "imagenet"}, "dataset"), ({"on_bad_example": "ignore"}, "on_bad_example"),
    ({"unlabeled_source": "none"}, "unlabeled_source"),
])
def test_invalid_data_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


# --- file-based datasets ------------------------------------------------------------------------------

def test_coco_format_pipeline_decodes_real_jpegs_and_splits_by_hash(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=30, captions_per_image=2, uncaptioned=4)
    data = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir,
                                        image_size=8, min_word_count=1, batch_size=2,
                                        split_fractions=(0.6, 0.2, 0.2)))
    ids = {split: set(data.references(split)) for split in ("train", "validation", "test", "unlabeled")}
    assert sum(len(v) for v in ids.values()) == 30 and len(ids["unlabeled"]) == 4
    assert all(ids[a].isdisjoint(ids[b]) for a in ids for b in ids if a < b)
    assert ids["validation"] and ids["test"]
    batch = _take(data.train_dataset(2), 1)[0]
    assert batch["image"].shape == (2, 8, 8, 3) and batch["tokens"].shape == (2, 16)
    assert data.unlabeled_dataset(2).element_spec["image"].shape == (2, 8, 8, 3)
    eval_ids = np.concatenate([b["image_id"] for b in data.eval_dataset("test", 2)])
    assert set(eval_ids[eval_ids >= 0].tolist()) == ids["test"]


def test_decoded_pixels_match_pillow(tmp_path):
    from PIL import Image

    annotations, image_dir = write_coco(str(tmp_path), num_images=6, captions_per_image=1)
    write_image(os.path.join(image_dir, "img_000.jpg"), size=8, seed=1, fmt="PNG")  # 8x12, lossless
    data = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir, image_size=8,
                                        min_word_count=1, split_fractions=(1, 0, 0)))
    records = {r.image_id: r for r in captions_io.read_coco_captions(annotations, image_dir)}
    pil = np.asarray(Image.open(records[100].image_path).convert("RGB"))
    first = _take(data.eval_dataset("train", 1), 1)[0]
    assert first["image_id"][0] == 100
    expected = tf.image.resize(pil, [8, 8], antialias=True).numpy() / 255.0
    np.testing.assert_allclose(first["image"][0], expected, atol=1 / 255 + 1e-6)


def test_rgba_and_grey_images_become_three_channels(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=4, captions_per_image=1)
    write_image(os.path.join(image_dir, "img_000.jpg"), mode="RGBA", fmt="PNG")
    write_image(os.path.join(image_dir, "img_001.jpg"), mode="L")
    data = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir, image_size=8,
                                        min_word_count=1, split_fractions=(1, 0, 0)))
    images = np.concatenate([b["image"] for b in data.eval_dataset("train", 2)])
    assert images.shape == (4, 8, 8, 3)
    grey = images[1]
    np.testing.assert_allclose(grey[..., 0], grey[..., 1])


def test_karpathy_pipeline_uses_train_and_restval_for_training(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    data = load_caption_data(DataConfig(dataset="karpathy", annotations=path, image_dir=root, image_size=8,
                                        min_word_count=1, batch_size=4))
    assert data.num_train_images == 10 and data.num_images("validation") == 3 and data.num_images("test") == 3
    assert data.num_images("unlabeled") == 10  # fallback: training images, captions dropped
    assert data.references("unlabeled")[1000] == []
    assert _take(data.validation_dataset(4), 1)[0]["tokens"].shape == (4, 16)
    with pytest.raises(ValueError, match="test_novel"):
        data.eval_dataset("test_novel")


def test_bad_examples_raise_by_default_and_are_counted_under_skip(tmp_path):
    path, root = write_karpathy(str(tmp_path))
    os.remove(os.path.join(root, "train2014", "COCO_0000.jpg"))
    with open(os.path.join(root, "train2014", "COCO_0001.jpg"), "r+b") as f:
        f.truncate(200)
    config = DataConfig(dataset="karpathy", annotations=path, image_dir=root, image_size=8, min_word_count=1)
    with pytest.raises(captions_io.BadExampleError, match="COCO_0000.jpg"):
        load_caption_data(config)
    data = load_caption_data(dataclasses.replace(config, on_bad_example="skip"))
    assert data.skipped == {"missing_image": 1, "bad_image": 1}
    assert data.num_train_images == 8
    assert sum(1 for _ in data.train_dataset(2, repeat=False)) == 8 * 5 // 2


def test_skip_without_validation_drops_undecodable_images_inside_tf_data(tmp_path):
    annotations, image_dir = write_coco(str(tmp_path), num_images=5, captions_per_image=1)
    with open(os.path.join(image_dir, "img_002.jpg"), "wb") as f:
        f.write(b"garbage")
    data = load_caption_data(DataConfig(dataset="coco", annotations=annotations, image_dir=image_dir, image_size=8,
                                        min_word_count=1, on_bad_example="skip", validate_images=False,
                                        split_fractions=(1, 0, 0)))
    ids = np.concatenate([b["image_id"] for b in data.eval_dataset("train", 1, pad_remainder=False)])
    assert ids.tolist() == [100, 101, 103, 104]


def test_missing_paths_for_file_datasets_are_named(tmp_path):
    with pytest.raises(ValueError, match="annotations"):
        DataConfig(dataset="coco")
    with pytest.raises(ValueError, match="annotations.*existing file"):
        DataConfig(dataset="karpathy", annotations=str(tmp_path / "missing.json"), image_dir=str(tmp_path))
