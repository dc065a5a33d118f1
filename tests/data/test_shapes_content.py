import json
import math

import numpy as np
import pytest

from capnas_tf.data import shapes
from capnas_tf.data.shapes_content import (ATTRIBUTES, Mention, content_accuracy, parse_caption,
                                           score_caption, true_relations)


def _group(count, colour, shape, size):
    return {"count": count, "colour": colour, "shape": shape, "size": size}


# Scene dicts without "objects" (older data): only the drawn relation counts as true.
# A = two small red circles to the left of B = one large blue square.
TWO = {"groups": [_group(2, "red", "circle", "small"), _group(1, "blue", "square", "large")], "relation": "left"}
ONE = {"groups": [_group(3, "green", "triangle", "large")], "relation": None}
# Same colour and shape: captions must say the sizes.
SAME = {"groups": [_group(1, "red", "circle", "small"), _group(2, "red", "circle", "large")], "relation": "above"}


def _perfect(score, scene):
    n = len(scene["groups"])
    has_relation = scene["relation"] is not None
    assert score.entirely_correct and score.errors == (), score
    for attribute in ("count", "colour", "shape", "size"):
        assert score.recall[attribute] == (n, n), (attribute, score)
    assert score.recall["relation"] == (int(has_relation),) * 2
    for attribute in ATTRIBUTES:
        correct, total = score.precision[attribute]
        assert correct == total, (attribute, score)
    assert score.precision["count"][1] == n


# --- every caption the generator writes -----------------------------------------------------------

def test_every_generated_reference_caption_scores_100_percent():
    scenes, predictions = {}, {}
    checked = 0
    for seed in range(4):
        config = shapes.ShapesConfig(seed=seed, num_train=100, num_unlabeled=100, num_validation=100, num_test=100,
                                     num_test_novel=100)
        for split in shapes.SPLITS:
            for example in shapes.generate_split(config, split):
                scene = shapes.scene_to_dict(example.scene)
                assert json.loads(json.dumps(scene)) == scene  # JSON round trip is lossless
                for k, caption in enumerate(example.captions):
                    _perfect(score_caption(caption, scene), scene)
                    key = example.image_id * 10 + k + seed * 10**9
                    scenes[key], predictions[key] = scene, caption
                    checked += 1
    assert checked == 4 * 500 * 5
    accuracy = content_accuracy(predictions, scenes)
    assert accuracy == {name: 1.0 for name in accuracy} and len(accuracy) == 2 * len(ATTRIBUTES) + 2


class _ScriptedRng:
    """Stands in for the generator's rng: answers each draw from `script` (0 past its end) and
    records how many outcomes each draw had, so that every path of `_one_caption` can be walked."""

    def __init__(self, script):
        self.script, self.choices, self.branching = list(script), [], []

    def _draw(self, n):
        choice = self.script[len(self.choices)] if len(self.choices) < len(self.script) else 0
        self.choices.append(choice)
        self.branching.append(n)
        return choice

    def integers(self, n):
        return self._draw(int(n))

    def random(self):
        return (0.0, 0.9)[self._draw(2)]  # below / above the 0.7 of "with size"


def _every_caption(scene):
    script = []
    while True:
        rng = _ScriptedRng(script)
        yield shapes._one_caption(scene, rng)
        i = len(rng.choices) - 1
        while i >= 0 and rng.choices[i] + 1 >= rng.branching[i]:
            i -= 1
        if i < 0:
            return
        script = rng.choices[:i] + [rng.choices[i] + 1]


def _scene(groups, relation, background="noise", cells=None):
    """A Scene of `groups` placed by the generator's own placement (seeded), or in the given cells per group."""
    groups = tuple(shapes.Group(count=c, shape=s, colour=col, size=z) for c, col, s, z in groups)
    config, rng = shapes.ShapesConfig(), np.random.default_rng(0)
    if cells is None:
        cells = shapes._place_groups(groups, relation, config.grid_size, rng)
    objects = tuple(shapes._object_in_cell(group, g, cell, config, rng)
                    for g, (group, group_cells) in enumerate(zip(groups, cells)) for cell in group_cells)
    return shapes.Scene(groups=groups, relation=relation, background=background, objects=objects,
                        grid_size=config.grid_size)


@pytest.mark.parametrize("scene, distinct", [
    # (a | one) × (3 small words + none) × red × (circle | disc) = 16 NPs; templates: 16 + 16 + 16·2 + 16·3 + 16.
    (_scene([(1, "red", "circle", "small")], None), 128),
    # three × (large | big | none) × (purple | violet) × (diamonds | rhombuses) = 12 NPs; "striped" only.
    (_scene([(3, "purple", "diamond", "large")], None, background="stripes"), 12 * (1 + 1 + 1 + 3 + 1)),
    # Two groups: the number of distinct captions is counted from the word tables in the test.
    (_scene([(1, "red", "circle", "small"), (2, "blue", "square", "large")], "left"), None),
    (_scene([(2, "white", "cross", "small"), (1, "white", "cross", "large")], "below"), None),
    (_scene([(4, "yellow", "triangle", "large"), (1, "purple", "square", "small")], "above"), None),
])
def test_every_template_and_synonym_of_fixed_scenes_scores_100_percent(scene, distinct):
    scene_dict = shapes.scene_to_dict(scene)
    captions = set(_every_caption(scene))
    if distinct is not None:
        assert len(captions) == distinct
    else:
        np_a, np_b = (_np_count(g, shapes.size_required(scene.groups)) for g in scene.groups)
        rel = len(shapes.RELATION_WORDS[scene.relation])
        inv = len(shapes.RELATION_WORDS[shapes.INVERSE_RELATION[scene.relation]])
        # Sizes are said in both NPs or in neither; the BE of "there BE"/"NPa BE" is fixed by NPa's count.
        with_size, without = np_a
        with_size_b, without_b = np_b
        pairs = with_size * with_size_b + without * without_b
        assert len(captions) == pairs * (rel + rel + inv + rel)
    for caption in captions:
        _perfect(score_caption(caption, scene_dict), scene_dict)
        assert score_caption(caption, scene).recall == score_caption(caption, scene_dict).recall  # Scene works too


def _np_count(group, size_required):
    words = len(shapes.COUNT_WORDS[group.count]) * len(shapes.COLOUR_WORDS[group.colour]) * len(
        shapes.SHAPE_WORDS[group.shape])
    return words * len(shapes.SIZE_WORDS[group.size]), 0 if size_required else words


# --- parsing ------------------------------------------------------------------------------------------

def test_parse_reads_groups_in_caption_order_and_the_relation_of_the_first_to_the_second():
    parsed = parse_caption("A blue box to the right of two tiny red discs.")
    assert parsed.groups == (Mention(1, None, "blue", "square"), Mention(2, "small", "red", "circle"))
    assert parsed.relation == "right" and parsed.grammatical_errors == ()
    assert parse_caption("an image of one violet rhombus").groups == (Mention(1, None, "purple", "diamond"),)
    assert parse_caption("THERE ARE two big white crosses on a grainy background").groups[0].size == "large"


@pytest.mark.parametrize("caption, errors", [
    ("two red circle", ("number: two red circle",)),
    ("a red circles left of a blue square", ("number: a red circles",)),
    ("there is two red circles", ("verb: is two red circles",)),
    ("a red circle are above two red circles", ("verb: are a red circle",)),
])
def test_grammatical_slips_are_recorded_and_the_attributes_still_parse(caption, errors):
    parsed = parse_caption(caption)
    assert parsed is not None and parsed.grammatical_errors == errors
    assert parsed.groups[0].colour == "red" and parsed.groups[0].shape == "circle"


@pytest.mark.parametrize("caption", [
    "", "...", "the cat sat on the mat", "two red circles xyz", "red circles", "two circles", "two red",
    "two red circles left of", "two red circles left of blue squares", "two red circles the blue square",
    "there two red circles", "there are two red circles are left of a blue square",
    "a picture of two red circles are left of a blue square", "two red circles on a background",
    "two red circles on a noisy", "two red circles in the", "two red circles and a blue square",
    "a red circle left of a blue square left of a green cross", "two small large red circles",
])
def test_captions_outside_the_grammar_do_not_parse(caption):
    assert parse_caption(caption) is None


# --- scoring hand-made captions ---------------------------------------------------------------------

@pytest.mark.parametrize("caption, scene, recall, precision, errors", [
    ("two small red circles left of a blue square", TWO,
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(1, 1), relation=(1, 1)), ()),
    ("Two red circles, to the left of a blue square.", TWO,
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)), ()),
    ("two red circles left of a green square", TWO,  # wrong colour
     dict(count=(2, 2), colour=(1, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(1, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)), ("colour: green, is blue",)),
    ("four red circles left of a blue square", TWO,  # wrong count
     dict(count=(1, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(1, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)), ("count: four, is two",)),
    ("two red circles left of a blue disc", TWO,  # wrong shape
     dict(count=(2, 2), colour=(2, 2), shape=(1, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(1, 2), size=(0, 0), relation=(1, 1)), ("shape: circle, is square",)),
    ("two big red circles left of a big blue square", TWO,  # wrong size of A
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(1, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(1, 2), relation=(1, 1)), ("size: large, is small",)),
    ("two red circles right of a blue square", TWO,  # swapped relation
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(0, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(0, 1)), ("relation: right, is false (true: left)",)),
    ("a blue square to the right of two red circles", TWO,  # inverse template, right
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)), ()),
    ("a blue square left of two red circles", TWO,  # inverse template, wrong
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(0, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(0, 1)), ("relation: left, is false (true: right)",)),
    ("there are two red circles", TWO,  # group B missing
     dict(count=(1, 2), colour=(1, 2), shape=(1, 2), size=(1, 2), relation=(0, 1)),
     dict(count=(1, 1), colour=(1, 1), shape=(1, 1), size=(0, 0), relation=(0, 0)),
     ("missing: one large blue square",)),
    ("a large blue square", TWO,  # group A missing: the mention aligns to B
     dict(count=(1, 2), colour=(1, 2), shape=(1, 2), size=(1, 2), relation=(0, 1)),
     dict(count=(1, 1), colour=(1, 1), shape=(1, 1), size=(1, 1), relation=(0, 0)),
     ("missing: two small red circles",)),
    ("three green triangles above a red circle", ONE,  # an extra group
     dict(count=(1, 1), colour=(1, 1), shape=(1, 1), size=(1, 1), relation=(0, 0)),
     dict(count=(1, 2), colour=(1, 2), shape=(1, 2), size=(0, 0), relation=(0, 1)), ("extra: one red circle",)),
    ("a red circle above three green triangles", ONE,  # the extra group first: the best alignment skips it
     dict(count=(1, 1), colour=(1, 1), shape=(1, 1), size=(1, 1), relation=(0, 0)),
     dict(count=(1, 2), colour=(1, 2), shape=(1, 2), size=(0, 0), relation=(0, 1)), ("extra: one red circle",)),
    ("the cat sat on the mat", TWO,  # garbage
     dict(count=(0, 2), colour=(0, 2), shape=(0, 2), size=(0, 2), relation=(0, 1)),
     {a: (0, 0) for a in ATTRIBUTES}, ("unparsed",)),
    ("", ONE,
     dict(count=(0, 1), colour=(0, 1), shape=(0, 1), size=(0, 1), relation=(0, 0)),
     {a: (0, 0) for a in ATTRIBUTES}, ("unparsed",)),
    ("two red circle left of a blue squares", TWO,  # number slips: content still right
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)), ()),
    ("a red circle above two red circles", SAME,  # sizes omitted where they are required
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 0), relation=(1, 1)),
     ("size: omitted, is small", "size: omitted, is large")),
    ("a large red circle above two small red circles", SAME,  # sizes swapped; counts fix the alignment
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(0, 2), relation=(1, 1)),
     ("size: large, is small", "size: small, is large")),
    ("two large red circles below a small red circle", SAME,  # inverse template with required sizes
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)),
     dict(count=(2, 2), colour=(2, 2), shape=(2, 2), size=(2, 2), relation=(1, 1)), ()),
])
def test_hand_made_captions_score_exactly(caption, scene, recall, precision, errors):
    score = score_caption(caption, scene)
    assert dict(score.recall) == recall
    assert dict(score.precision) == precision
    assert score.errors == errors
    assert score.entirely_correct == (errors == ())


def test_a_number_slip_is_a_grammatical_error_not_a_content_error():
    score = score_caption("two red circle left of a blue squares", TWO)
    assert score.entirely_correct
    assert score.parsed.grammatical_errors == ("number: two red circle", "number: a blue squares")


def test_the_alignment_follows_the_inverse_template():
    assert score_caption("a blue square to the right of two red circles", TWO).alignment == (1, 0)
    assert score_caption("two red circles left of a blue square", TWO).alignment == (0, 1)
    assert score_caption("three green triangles above a red circle", ONE).alignment == (0, None)


# --- the split metric -----------------------------------------------------------------------------

def test_content_accuracy_micro_averages_the_tallies():
    scenes = {1: TWO, 2: ONE, 3: TWO}
    predictions = {1: "two red circles left of a green square",  # colour 1/2
                   2: "three big green triangles",                # perfect, says a size
                   3: "garbage"}                                  # unparsed
    accuracy = content_accuracy(predictions, scenes)
    assert accuracy == {
        "count": 3 / 5, "colour": 2 / 5, "shape": 3 / 5, "size": 3 / 5, "relation": 1 / 2,
        "count_precision": 3 / 3, "colour_precision": 2 / 3, "shape_precision": 3 / 3, "size_precision": 1 / 1,
        "relation_precision": 1 / 1, "entirely_correct": 1 / 3, "parsed": 2 / 3}


def test_nothing_to_score_gives_nan_and_only_then():
    accuracy = content_accuracy({2: "three green triangles"}, {2: ONE, 5: TWO})  # unpredicted ids are ignored
    assert math.isnan(accuracy["relation"]) and math.isnan(accuracy["relation_precision"])
    assert math.isnan(accuracy["size_precision"])  # no size said
    assert accuracy["count"] == accuracy["size"] == accuracy["entirely_correct"] == 1.0
    assert all(math.isnan(v) for v in content_accuracy({}, {2: ONE}).values())
    zero = content_accuracy({5: "garbage"}, {5: TWO})
    assert zero["count"] == zero["relation"] == zero["parsed"] == 0.0 and math.isnan(zero["count_precision"])


def test_predictions_without_a_scene_are_named():
    with pytest.raises(ValueError, match="7, 9"):
        content_accuracy({1: "a red circle", 7: "a red circle", 9: "a red circle"}, {1: ONE})


def test_scene_to_dict_uses_the_canonical_names_and_relation_of_a_to_b():
    scene = _scene([(2, "purple", "diamond", "small"), (1, "red", "circle", "large")], "below",
                   cells=[[(2, 0), (1, 2)], [(0, 1)]])
    assert shapes.scene_to_dict(scene) == {
        "groups": [_group(2, "purple", "diamond", "small"), _group(1, "red", "circle", "large")], "relation": "below",
        "objects": [{"group": 0, "row": 2, "col": 0}, {"group": 0, "row": 1, "col": 2},
                    {"group": 1, "row": 0, "col": 1}],
        "grid_size": 3}


def test_malformed_scenes_are_rejected():
    with pytest.raises(ValueError, match="scene"):
        score_caption("a red circle", {"groups": [_group(1, "red", "circle", "small")], "relation": "left"})


@pytest.mark.parametrize("objects, message", [
    ([{"group": 0, "row": 0, "col": 0}], "one object per counted member"),  # A has 2 objects, B 1
    ([{"group": 0, "row": 0, "col": 0}, {"group": 0, "row": 1, "col": 0}, {"group": 2, "row": 2, "col": 2}],
     "group index"),
    ([{"group": 0, "row": 0, "col": 0}, {"group": 0, "row": 1, "col": 0}, {"group": 1, "row": 3, "col": 2}],
     "on the grid"),
    ([{"group": 0, "row": 0, "col": 0}, {"group": 0, "row": 0, "col": 0}, {"group": 1, "row": 2, "col": 2}],
     "its own cell"),
])
def test_scenes_with_malformed_objects_are_rejected(objects, message):
    with pytest.raises(ValueError, match=message):
        score_caption("two red circles left of a blue square", TWO | {"objects": objects, "grid_size": 3})


# --- relations judged by geometry ----------------------------------------------------------------

def _placed(relation, cells_a, cells_b):
    """TWO (A = two small red circles, B = one large blue square) drawn as `relation`, A and B in the given cells."""
    objects = [{"group": g, "row": r, "col": c} for g, cells in enumerate((cells_a, cells_b)) for r, c in cells]
    return TWO | {"relation": relation, "objects": objects, "grid_size": 3}


# A in the two top-left cells, B bottom right: A is left of and above B.
LEFT_AND_ABOVE = _placed("left", [(0, 0), (1, 0)], [(2, 2)])


@pytest.mark.parametrize("scene, first, second, expected", [
    (LEFT_AND_ABOVE, 0, 1, {"left", "above"}),
    (LEFT_AND_ABOVE, 1, 0, {"right", "below"}),
    (_placed("left", [(0, 0), (2, 0)], [(1, 2)]), 0, 1, {"left"}),            # B's row lies between A's
    (_placed("above", [(0, 1), (0, 2)], [(2, 1)]), 0, 1, {"above"}),          # shared column: no left/right
    (_placed("right", [(0, 2), (1, 2)], [(2, 1)]), 0, 1, {"right", "above"}),
    (_placed("below", [(2, 0), (2, 1)], [(1, 1)]), 0, 1, {"below"}),          # B's column among A's
    (_placed("below", [(2, 0), (1, 1)], [(0, 2)]), 0, 1, {"below", "left"}),
    (TWO, 0, 1, {"left"}),                                                    # no objects: the drawn one only
    (TWO, 1, 0, {"right"}),
])
def test_true_relations_of_a_scene_placed_by_hand(scene, first, second, expected):
    assert true_relations(scene, first, second) == expected


def test_true_relations_needs_the_two_groups_of_a_two_group_scene():
    for scene, first, second in ((LEFT_AND_ABOVE, 0, 0), (LEFT_AND_ABOVE, 0, 2), (ONE, 0, 1)):
        with pytest.raises(ValueError, match="true_relations"):
            true_relations(scene, first, second)


def test_the_drawn_relation_is_always_true_and_objects_lie_inside_their_recorded_cell():
    """Over thousands of sampled scenes (several grid sizes): the drawn relation is among the true
    relations both ways round, and every object, jitter and radius included, lies inside its cell."""
    two_group, several_true = 0, 0
    for grid_size, image_size, max_objects in ((3, 32, 4), (3, 24, 6), (4, 48, 9), (2, 16, 2)):
        config = shapes.ShapesConfig(image_size=image_size, grid_size=grid_size, max_objects=max_objects)
        cell_size = image_size / grid_size
        for index in range(1500):
            rng = np.random.default_rng(np.random.SeedSequence([grid_size, max_objects, index]))
            scene = shapes.sample_scene(config, rng, novel=bool(index % 5 == 0))
            for obj in scene.objects:
                assert (int(np.floor(obj.x / cell_size)), int(np.floor(obj.y / cell_size))) == (obj.col, obj.row)
                assert obj.col * cell_size <= obj.x - obj.radius and obj.x + obj.radius <= (obj.col + 1) * cell_size
                assert obj.row * cell_size <= obj.y - obj.radius and obj.y + obj.radius <= (obj.row + 1) * cell_size
                assert (obj.shape, obj.colour, obj.size) == (scene.groups[obj.group].shape,
                                                             scene.groups[obj.group].colour,
                                                             scene.groups[obj.group].size)
            if scene.relation is None:
                continue
            scene_dict = shapes.scene_to_dict(scene)
            forward, backward = true_relations(scene_dict, 0, 1), true_relations(scene_dict, 1, 0)
            assert scene.relation in forward, scene_dict
            assert backward == {shapes.INVERSE_RELATION[r] for r in forward}
            two_group += 1
            several_true += len(forward) > 1
    assert two_group > 3000
    assert several_true > 500  # the case the geometry fixes is common


def test_a_different_relation_that_is_also_true_scores_correct():
    for caption in ("two small red circles above a large blue square",   # drawn: left; above is true as well
                    "a large blue square below two small red circles",   # inverse template
                    "there are two small red circles left of a large blue square",
                    "a large blue square to the right of two small red circles"):
        score = score_caption(caption, LEFT_AND_ABOVE)
        _perfect(score, LEFT_AND_ABOVE)
        assert score.alignment in ((0, 1), (1, 0))
    assert content_accuracy({1: "two red circles above a blue square"}, {1: LEFT_AND_ABOVE})["relation"] == 1.0


@pytest.mark.parametrize("caption, errors", [
    ("two red circles right of a blue square", ("relation: right, is false (true: left, above)",)),
    ("two red circles below a blue square", ("relation: below, is false (true: left, above)",)),
    ("a blue square above two red circles", ("relation: above, is false (true: right, below)",)),
    ("a blue square left of two red circles", ("relation: left, is false (true: right, below)",)),
])
def test_a_false_relation_scores_wrong_naming_the_true_ones(caption, errors):
    score = score_caption(caption, LEFT_AND_ABOVE)
    assert score.errors == errors and not score.entirely_correct
    assert score.recall["relation"] == (0, 1) and score.precision["relation"] == (0, 1)
    for attribute in ("count", "colour", "shape", "size"):
        assert score.recall[attribute] == (2, 2)


def test_without_objects_only_the_drawn_relation_is_true():
    score = score_caption("two red circles above a blue square", TWO)
    assert score.errors == ("relation: above, is false (true: left)",)
    assert score.recall["relation"] == (0, 1)


def test_every_true_relation_of_generated_scenes_scores_correct_and_every_false_one_wrong():
    config = shapes.ShapesConfig(num_train=400)
    predictions, scenes, wrong = {}, {}, {}
    for example in shapes.generate_split(config, "train"):
        scene = shapes.scene_to_dict(example.scene)
        if scene["relation"] is None:
            continue
        np_a, np_b = (f"{shapes.COUNT_WORDS[g['count']][-1]} {g['size']} {g['colour']} "
                      f"{shapes.SHAPE_WORDS[g['shape']][0][g['count'] != 1]}" for g in scene["groups"])
        true = true_relations(scene, 0, 1)
        for relation in shapes.RELATIONS:
            caption = f"{np_a} {shapes.RELATION_WORDS[relation][0]} {np_b}"
            key = example.image_id * 10 + shapes.RELATIONS.index(relation)
            (predictions if relation in true else wrong)[key] = caption
            scenes[key] = scene
    two_group = len(scenes) // len(shapes.RELATIONS)
    assert two_group > 150 and len(predictions) > 1.1 * two_group  # more than one true relation in many scenes
    right = content_accuracy(predictions, scenes)
    assert right["relation"] == right["relation_precision"] == right["entirely_correct"] == 1.0
    false = content_accuracy(wrong, scenes)
    assert false["relation"] == false["relation_precision"] == false["entirely_correct"] == 0.0
