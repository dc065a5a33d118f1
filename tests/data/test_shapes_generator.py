import dataclasses

import numpy as np
import pytest

from capnas_tf.data import shapes, text

SMALL = shapes.ShapesConfig(image_size=24, num_train=40, num_unlabeled=10, num_validation=20, num_test=20,
                            num_test_novel=40)


def _split(config, split):
    return list(shapes.generate_split(config, split))


def test_same_seed_gives_byte_identical_images_and_captions():
    first, second = _split(SMALL, "train"), _split(SMALL, "train")
    assert [e.image.tobytes() for e in first] == [e.image.tobytes() for e in second]
    assert [e.captions for e in first] == [e.captions for e in second]


def test_different_seed_gives_different_data():
    other = dataclasses.replace(SMALL, seed=1)
    a, b = _split(SMALL, "train"), _split(other, "train")
    assert sum(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b)) == 0
    assert [e.captions for e in a] != [e.captions for e in b]


def test_example_does_not_depend_on_generation_order_or_split_size():
    bigger = dataclasses.replace(SMALL, num_train=80, num_test=3)
    in_order = _split(SMALL, "train")
    backwards = [shapes.generate_example(bigger, "train", i) for i in reversed(range(SMALL.num_train))][::-1]
    assert [e.image.tobytes() for e in in_order] == [e.image.tobytes() for e in backwards]
    assert [e.captions for e in in_order] == [e.captions for e in backwards]


def test_splits_differ_and_image_ids_are_unique_across_splits():
    ids = [e.image_id for split in shapes.SPLITS for e in shapes.generate_split(SMALL, split)]
    assert len(ids) == len(set(ids))
    train, test = _split(SMALL, "train"), _split(SMALL, "test")
    assert train[0].image.tobytes() != test[0].image.tobytes()


def test_held_out_pairs_appear_only_and_always_in_test_novel():
    held_out = set(SMALL.held_out_pairs)
    for split in ("train", "unlabeled", "validation", "test"):
        for example in shapes.generate_split(SMALL, split):
            assert not shapes.object_pairs(example) & held_out, (split, example.image_id)
    novel = _split(SMALL, "test_novel")
    assert all(shapes.object_pairs(e) & held_out for e in novel)
    # Every held-out pair shows up at least once in a test_novel of this size.
    assert set().union(*(shapes.object_pairs(e) for e in novel)) >= held_out


def test_image_format_and_object_count():
    for example in _split(SMALL, "validation"):
        assert example.image.dtype == np.uint8 and example.image.shape == (24, 24, 3)
        assert 1 <= len(example.scene.objects) <= SMALL.max_objects
        assert sum(g.count for g in example.scene.groups) == len(example.scene.objects)


def test_five_distinct_captions_that_fit_sixteen_tokens():
    for example in _split(SMALL, "train"):
        assert len(example.captions) == 5 and len(set(example.captions)) == 5
        assert all(1 <= len(text.caption_words(c)) <= 14 for c in example.captions)


def _group_objects(scene, group):
    return [o for o in scene.objects if (o.shape, o.colour, o.size) == (group.shape, group.colour, group.size)]


def test_captions_state_counts_and_the_axis_of_the_relation():
    count_words = {2: "two", 3: "three", 4: "four"}
    horizontal, vertical = {"left", "right"}, {"above", "over", "below", "under", "beneath"}
    for example in _split(SMALL, "train"):
        scene = example.scene
        for caption in example.captions:
            words = set(caption.split())
            for group in scene.groups:
                if group.count > 1:
                    assert count_words[group.count] in words, caption
            if scene.relation in ("left", "right"):
                assert words & horizontal and not words & vertical, caption
            elif scene.relation in ("above", "below"):
                assert words & vertical and not words & horizontal, caption
            else:
                assert not words & (horizontal | vertical), caption


def test_relation_holds_between_every_pair_of_objects_of_the_two_groups():
    checked = 0
    for example in _split(SMALL, "train"):
        scene = example.scene
        if scene.relation is None:
            continue
        a, b = (_group_objects(scene, g) for g in scene.groups)
        gap = {"left": min(o.x for o in b) - max(o.x for o in a),
               "right": min(o.x for o in a) - max(o.x for o in b),
               "above": min(o.y for o in b) - max(o.y for o in a),
               "below": min(o.y for o in a) - max(o.y for o in b)}[scene.relation]
        assert gap > 0, (example.image_id, scene)
        checked += 1
    assert checked > 5


def test_objects_are_visible_against_the_background():
    example = shapes.generate_example(SMALL, "train", 0)
    obj = example.scene.objects[0]
    centre = example.image[int(obj.y), int(obj.x)].astype(float) / 255.0
    assert np.abs(centre - np.asarray(shapes.COLOURS[obj.colour])).max() < 0.25


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 4}, "image_size"),
    ({"max_objects": 10}, "max_objects"),
    ({"held_out_pairs": (("pink", "circle"),)}, "held_out_pairs"),
    ({"num_train": -1}, "num_train"),
])
def test_invalid_config_is_rejected_with_the_field_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes.ShapesConfig(**kwargs)


def test_index_out_of_range_is_rejected():
    with pytest.raises(IndexError, match="index"):
        shapes.generate_example(SMALL, "test", SMALL.num_test)
    with pytest.raises(ValueError, match="split"):
        shapes.generate_example(SMALL, "dev", 0)


def test_default_splits_generate_quickly():
    import time

    start = time.perf_counter()
    for split in shapes.SPLITS:
        for _ in shapes.generate_split(shapes.ShapesConfig(num_train=400, num_unlabeled=0, num_validation=0,
                                                           num_test=0, num_test_novel=0), split):
            pass
    # 400 images; the 3900 default images take ~10x this. Generous bound for a shared 2-core box.
    assert time.perf_counter() - start < 6.0
