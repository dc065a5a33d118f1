"""Content accuracy of `capnas_shapes` captions: parse a caption with the generator's own words and
score what it says against the scene that the generator drew.

Notation of `shapes`: a scene holds group A, or groups A and B with `relation` of A to B; a group is
`count` objects of one colour, shape and size. Captions follow the templates of `shapes._one_caption`,
with NP = count [size] colour shape and BE = "is" / "are":

    one group:  NP | there BE NP | NP on a <background> background | <prefix> NP | NP in the picture
    two groups: NPa REL NPb | there BE NPa REL NPb | NPb INV NPa | NPa BE REL NPb

`parse_caption` reads any caption of the grammar

    [<prefix> | there BE] NP [[BE] REL NP] [on a <background> background | in the picture]

(BE before REL only without a lead-in), which holds every template and the few recombinations of
their parts that a model may write ("a picture of NPa REL NPb"); every word must come from the word
tables of `shapes` (synonyms included). A caption parses into the mentioned groups in caption order
and the relation of the first mentioned group to the second: for "NPb INV NPa" that is B's relation
to A, and the scorer orients it through its alignment to the scene.

Relations are judged by geometry: a stated relation is correct iff it is true of the scene, i.e. in
`true_relations` of the two groups it names, read from the grid cells of the scene's objects. The
generator draws one relation, but others often hold as well (A in the top-left cell, B in the
bottom-right: A is both left of and above B); a caption stating any of them is right, although the
references name only the drawn one. Scene dicts without "objects" (written before
`shapes.scene_to_dict` recorded them) fall back to the drawn relation as the only true one.

Scores per attribute (count, colour, shape, size, relation), each a (correct, total) tally:
  * recall, over what the scene holds: per scene group its count, colour, shape and size, per
    two-group scene its relation, correct iff the caption states a true relation between the two
    scene groups. A group the caption does not mention is wrong in all of them. Size is also
    correct when the caption omits it where the generator may (`shapes.size_required`).
  * precision, over what the caption says: per mentioned group its count, colour, shape and, if
    said, size; the relation if stated, correct iff true of the two groups the mentions align to.
    A mention aligned to no scene group is wrong in all of them.
An unparsed caption says nothing (precision totals 0) and names nothing (every recall tally wrong).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping, NamedTuple, Sequence

from capnas_tf.data import shapes
from capnas_tf.data.text import caption_words

ATTRIBUTES = ("count", "colour", "shape", "size", "relation")
_GROUP_ATTRIBUTES = ("count", "colour", "shape")  # always said, so always scored in both directions
_BE_WORDS = ("is", "are")

# Word -> canonical name, built from the generator's tables so the parser can never drift from it.
_COUNT_OF = {w: n for n, words in shapes.COUNT_WORDS.items() for w in words}
_SIZE_OF = {w: s for s, words in shapes.SIZE_WORDS.items() for w in words}
_COLOUR_OF = {w: c for c, words in shapes.COLOUR_WORDS.items() for w in words}
_SHAPE_OF = {w: (s, plural) for s, pairs in shapes.SHAPE_WORDS.items() for pair in pairs
             for plural, w in enumerate(pair)}
_RELATION_OF = {tuple(p.split()): r for r, phrases in shapes.RELATION_WORDS.items() for p in phrases}
_BACKGROUND_OF = {w: b for b, words in shapes.BACKGROUND_WORDS.items() for w in words}
_PREFIXES = tuple(tuple(p.split()) for p in shapes.PREFIXES)


class Mention(NamedTuple):
    """One noun phrase of a caption: `size` is None where the caption does not say it."""

    count: int
    size: str | None
    colour: str
    shape: str


@dataclasses.dataclass(frozen=True)
class ParsedCaption:
    """What a caption says.

    Attributes:
      groups: the mentioned groups in caption order (one or two), canonical names of `shapes`.
      relation: the relation of `groups[0]` to `groups[1]` (one of `shapes.RELATIONS`),
        None for one group.
      grammatical_errors: slips that do not change the content, e.g. "number: two red circle"
        (count and shape word disagree) or "verb: is two red circles"; the attributes still parse.
    """

    groups: tuple[Mention, ...]
    relation: str | None
    grammatical_errors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CaptionScore:
    """The content score of one caption against its scene.

    Attributes:
      parsed: the parse, or None when the caption does not parse.
      recall: attribute -> (correct, total) over what the scene holds (see module doc).
      precision: attribute -> (correct, total) over what the caption says.
      alignment: per mention, the index of its scene group, or None (an extra mention).
      entirely_correct: parsed, mentions exactly the scene's groups, every said attribute right,
        sizes omitted only where allowed, relation true if the scene has one. Equivalent to
        `parsed is not None and not errors`; grammatical errors do not count against it.
      errors: human-readable content errors, said value first, e.g. "colour: red, is green",
        "size: omitted, is small", "relation: left, is false (true: right, above)" (the true
        relations in `shapes.RELATIONS` order), "missing: three small blue squares",
        "extra: one red circle", "unparsed".
    """

    parsed: ParsedCaption | None
    recall: Mapping[str, tuple[int, int]]
    precision: Mapping[str, tuple[int, int]]
    alignment: tuple[int | None, ...]
    entirely_correct: bool
    errors: tuple[str, ...]


# --- parsing ------------------------------------------------------------------------------------

def parse_caption(caption: str) -> ParsedCaption | None:
    """Parses `caption` (see the module doc for the grammar).

    The caption is normalised like `text.normalize_caption` (ASCII lower case, punctuation
    removed), so "Two red circles." parses like "two red circles".

    Returns:
      The mentioned groups and relation, or None when a word is unknown, a part is missing (an NP
      without colour or shape, a dangling relation) or words are left over.
    """
    words = tuple(caption_words(caption))
    # "a" opens both an NP and the prefixes "a picture of", "a drawing of": try each reading.
    leads = [(0, None)] + [(len(p), "prefix") for p in _PREFIXES if words[:len(p)] == p]
    if words[:1] == ("there",) and words[1:2] and words[1] in _BE_WORDS:
        leads.append((2, words[1]))
    for start, lead in leads:
        parsed = _parse_after_lead(words, start, lead)
        if parsed is not None:
            return parsed
    return None


def _parse_after_lead(words: tuple[str, ...], pos: int, lead: str | None) -> ParsedCaption | None:
    """`NP [[BE] REL NP] [trailer]` from `pos` to the end; `lead` is None, "prefix", or the BE of "there BE"."""
    errors: list[str] = []
    np_start = pos
    first = _noun_phrase(words, pos, errors)
    if first is None:
        return None
    np_a, pos = first
    np_a_words = " ".join(words[np_start:pos])
    be = lead if lead in _BE_WORDS else None
    # "NPa BE REL NPb" is a sentence of its own: after "there BE" or a prefix its BE would be a second verb.
    if lead is None and pos < len(words) and words[pos] in _BE_WORDS:
        be, pos = words[pos], pos + 1
        if _relation_at(words, pos) is None:
            return None
    if be is not None and (be == "is") != (np_a.count == 1):  # the generator's BE agrees with NPa
        errors.append(f"verb: {be} {np_a_words}")
    mentions, relation = [np_a], None
    found = _relation_at(words, pos)
    if found is not None:
        relation, pos = found
        second = _noun_phrase(words, pos, errors)
        if second is None:
            return None
        np_b, pos = second
        mentions.append(np_b)
    if _after_trailer(words, pos) != len(words):
        return None
    return ParsedCaption(tuple(mentions), relation, tuple(errors))


def _noun_phrase(words: tuple[str, ...], pos: int, errors: list[str]) -> tuple[Mention, int] | None:
    """NP = count [size] colour shape at `pos`, and the position after it; a number slip goes to `errors`."""
    start = pos
    if pos >= len(words) or words[pos] not in _COUNT_OF:
        return None
    count = _COUNT_OF[words[pos]]
    pos += 1
    size = _SIZE_OF.get(words[pos]) if pos < len(words) else None
    if size is not None:
        pos += 1
    if pos + 1 >= len(words) or words[pos] not in _COLOUR_OF or words[pos + 1] not in _SHAPE_OF:
        return None
    colour = _COLOUR_OF[words[pos]]
    shape, plural = _SHAPE_OF[words[pos + 1]]
    if plural != (count != 1):
        errors.append("number: " + " ".join(words[start:pos + 2]))
    return Mention(count, size, colour, shape), pos + 2


def _relation_at(words: tuple[str, ...], pos: int) -> tuple[str, int] | None:
    """(relation, position after its phrase) if a REL phrase starts at `pos`."""
    for phrase, relation in _RELATION_OF.items():
        if words[pos:pos + len(phrase)] == phrase:
            return relation, pos + len(phrase)
    return None


def _after_trailer(words: tuple[str, ...], pos: int) -> int:
    """The position after an optional "on a <background> background" / "in the picture" at `pos`."""
    rest = words[pos:]
    if len(rest) == 4 and rest[:2] == ("on", "a") and rest[2] in _BACKGROUND_OF and rest[3] == "background":
        return pos + 4
    if rest == ("in", "the", "picture"):
        return pos + 3
    return pos


# --- scoring ------------------------------------------------------------------------------------

def score_caption(caption: str, scene: Mapping | shapes.Scene) -> CaptionScore:
    """Scores what `caption` says against `scene` (see the module doc for the tallies).

    Mentions are aligned to scene groups one to one, by the assignment with the most matching
    attributes (count, colour, shape, size where said, and the relation if it is true of the groups
    the assignment gives the mentions); ties keep caption order = scene order. With more mentions than scene groups the
    surplus mention aligns to nothing; with fewer, a scene group stays unmentioned.

    Args:
      caption: a generated caption (raw text).
      scene: `shapes.scene_to_dict(scene)` (e.g. decoded from the TFDS `scene` feature), or a `shapes.Scene`.
        Without "objects" (older data) only the drawn relation counts as true.

    Returns:
      The CaptionScore.

    Raises:
      ValueError: for a malformed scene (see `true_relations`).
    """
    groups, scene_relation, cells = _scene_parts(scene)
    parsed = parse_caption(caption)
    recall = {a: [0, 0] for a in ATTRIBUTES}
    precision = {a: [0, 0] for a in ATTRIBUTES}
    for group_attribute in _GROUP_ATTRIBUTES + ("size",):
        recall[group_attribute][1] = len(groups)
    recall["relation"][1] = int(scene_relation is not None)
    if parsed is None:
        return CaptionScore(None, _frozen(recall), _frozen(precision), (), False, ("unparsed",))

    mentions = parsed.groups
    alignment = max(_alignments(len(mentions), len(groups)),
                    key=lambda a: _agreement(parsed, a, groups, scene_relation, cells))
    errors: list[str] = []
    for mention, j in zip(mentions, alignment):
        group = None if j is None else groups[j]
        for attribute in _GROUP_ATTRIBUTES:
            _tally(precision, attribute, group is not None and getattr(mention, attribute) == getattr(group, attribute))
        if mention.size is not None:
            _tally(precision, "size", group is not None and mention.size == group.size)
        if group is None:
            errors.append(f"extra: {_describe(mention)}")
    size_optional = not shapes.size_required(groups)
    for j, group in enumerate(groups):
        mention = mentions[alignment.index(j)] if j in alignment else None
        if mention is None:
            errors.append(f"missing: {_describe(group)}")
            continue
        for attribute in _GROUP_ATTRIBUTES:
            said, true = getattr(mention, attribute), getattr(group, attribute)
            recall[attribute][0] += said == true
            if said != true:
                errors.append(f"{attribute}: {_name(attribute, said)}, is {_name(attribute, true)}")
        recall["size"][0] += mention.size == group.size or (mention.size is None and size_optional)
        if mention.size is not None and mention.size != group.size:
            errors.append(f"size: {mention.size}, is {group.size}")
        elif mention.size is None and not size_optional:
            errors.append(f"size: omitted, is {group.size}")
    if parsed.relation is not None:
        true = _aligned_relations(alignment, scene_relation, cells)
        right = true is not None and parsed.relation in true
        _tally(precision, "relation", right)
        recall["relation"][0] += right  # never right without a scene relation
        if true is not None and not right:
            named = ", ".join(r for r in shapes.RELATIONS if r in true) or "none"
            errors.append(f"relation: {parsed.relation}, is false (true: {named})")
    return CaptionScore(parsed, _frozen(recall), _frozen(precision), alignment, not errors, tuple(errors))


def content_accuracy(predictions: Mapping[int, str], scenes: Mapping[int, Mapping]) -> dict[str, float]:
    """Micro-averaged content accuracy of one caption per image.

    Every tally of `score_caption` is summed over the images of `predictions`, then divided:

      count, colour, shape, size, relation: recall, the headline accuracy: correct / total over
        what the scenes hold (a scene group's count, colour, shape, size; a two-group scene's relation).
      count_precision, …, relation_precision: correct / total over what the captions say.
      entirely_correct: share of captions with `CaptionScore.entirely_correct`.
      parsed: share of captions that parse.

    A value is float("nan") only when its total is 0, i.e. there is nothing to score: no two-group
    scenes (relation), no caption that states a size or relation (size_precision,
    relation_precision), or no predictions at all. Otherwise it is a fraction in [0, 1].

    Args:
      predictions: `{image_id: caption}`; images of `scenes` without a prediction are not scored.
      scenes: `{image_id: shapes.scene_to_dict(scene)}`, e.g. `CaptionData.scenes(split)`.

    Raises:
      ValueError: naming the ids of `predictions` that `scenes` lacks.
    """
    missing = sorted(set(predictions) - set(scenes))
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", …" if len(missing) > 10 else "")
        raise ValueError(f"content_accuracy: {len(missing)} predicted image id(s) have no scene: {shown}.")
    recall = {a: [0, 0] for a in ATTRIBUTES}
    precision = {a: [0, 0] for a in ATTRIBUTES}
    entirely, parsed = 0, 0
    for image_id, caption in predictions.items():
        score = score_caption(caption, scenes[image_id])
        for attribute in ATTRIBUTES:
            for sums, tallies in ((recall, score.recall), (precision, score.precision)):
                sums[attribute][0] += tallies[attribute][0]
                sums[attribute][1] += tallies[attribute][1]
        entirely += score.entirely_correct
        parsed += score.parsed is not None
    n = len(predictions)
    return ({a: _ratio(*recall[a]) for a in ATTRIBUTES}
            | {f"{a}_precision": _ratio(*precision[a]) for a in ATTRIBUTES}
            | {"entirely_correct": _ratio(entirely, n), "parsed": _ratio(parsed, n)})


def true_relations(scene: Mapping | shapes.Scene, first_group: int, second_group: int) -> set[str]:
    """Every relation of `shapes.RELATIONS` that holds from one group of `scene` to the other.

    Read from the grid cells of the objects: "left" iff every object of `first_group` has a smaller
    column than every object of `second_group`, "right" iff a larger one; "above" and "below" likewise
    with rows (row 0 at the top). The drawn relation always holds (the generator places the groups on
    either side of a grid line), others may too. A scene dict without "objects" (older data) knows
    only the drawn relation: the result is then that relation, oriented from `first_group`.

    Args:
      scene: `shapes.scene_to_dict(scene)` or a `shapes.Scene` with two groups.
      first_group, second_group: indices into the scene's groups, 0 and 1 in either order.

    Returns:
      The relations of `first_group` to `second_group` that hold (possibly several).

    Raises:
      ValueError: if the group indices are not 0 and 1 of a two-group scene, or the scene is
        malformed (group count and relation disagree; objects whose group is out of range, whose cells
        repeat or lie off the grid, or whose number per group differs from the group's count).
    """
    groups, relation, cells = _scene_parts(scene)
    if len(groups) != 2 or {first_group, second_group} != {0, 1}:
        raise ValueError(f"true_relations needs the groups 0 and 1 of a two-group scene, received "
                         f"{first_group}, {second_group} of {len(groups)} group(s).")
    return set(_relations_between(first_group, second_group, relation, cells))


def _scene_parts(scene: Mapping | shapes.Scene):
    """(groups, drawn relation, per group the (row, col) cells of its objects, or None without "objects")."""
    if isinstance(scene, shapes.Scene):
        scene = shapes.scene_to_dict(scene)
    groups = tuple(shapes.Group(count=int(g["count"]), shape=g["shape"], colour=g["colour"], size=g["size"])
                   for g in scene["groups"])
    relation = scene.get("relation")
    if not 1 <= len(groups) <= 2 or (relation is not None) != (len(groups) == 2):
        raise ValueError(f"a scene has one group without relation or two groups with one, received {scene!r}.")
    if scene.get("objects") is None:
        return groups, relation, None
    grid_size = scene.get("grid_size")
    cells: list[list[tuple[int, int]]] = [[] for _ in groups]
    for obj in scene["objects"]:
        g, cell = int(obj["group"]), (int(obj["row"]), int(obj["col"]))
        on_grid = grid_size is None or all(0 <= x < int(grid_size) for x in cell)
        if not 0 <= g < len(groups) or min(cell) < 0 or not on_grid:
            raise ValueError(f"a scene object has a group index into groups and a cell on the grid, "
                             f"received {obj!r} in {scene!r}.")
        cells[g].append(cell)
    if [len(c) for c in cells] != [g.count for g in groups] or len({c for cs in cells for c in cs}) != sum(
            len(c) for c in cells):
        raise ValueError(f"a scene has one object per counted member of each group, each in its own cell, "
                         f"received {scene!r}.")
    return groups, relation, tuple(tuple(c) for c in cells)


def _relations_between(first: int, second: int, relation: str | None, cells) -> frozenset[str]:
    """The relations of group `first` to group `second` that hold (see `true_relations`)."""
    if cells is None:  # older scene dicts: only the drawn relation of A (0) to B (1) is known
        return frozenset({relation if (first, second) == (0, 1) else shapes.INVERSE_RELATION[relation]})
    rows_a, cols_a = zip(*cells[first])
    rows_b, cols_b = zip(*cells[second])
    holds = {"left": max(cols_a) < min(cols_b), "right": min(cols_a) > max(cols_b),
             "above": max(rows_a) < min(rows_b), "below": min(rows_a) > max(rows_b)}
    return frozenset(r for r in shapes.RELATIONS if holds[r])


def _alignments(num_mentions: int, num_groups: int):
    """Every one-to-one assignment of as many mentions as possible to scene groups; identity first."""
    k = min(num_mentions, num_groups)
    for chosen in itertools.combinations(range(num_mentions), k):
        for targets in itertools.permutations(range(num_groups), k):
            alignment: list[int | None] = [None] * num_mentions
            for i, j in zip(chosen, targets):
                alignment[i] = j
            yield tuple(alignment)


def _agreement(parsed: ParsedCaption, alignment, groups, scene_relation, cells) -> int:
    """Matching attributes under `alignment`: what the best alignment maximises."""
    matches = 0
    for mention, j in zip(parsed.groups, alignment):
        if j is not None:
            group = groups[j]
            matches += sum(getattr(mention, a) == getattr(group, a) for a in _GROUP_ATTRIBUTES)
            matches += mention.size is not None and mention.size == group.size
    if parsed.relation is not None:
        true = _aligned_relations(alignment, scene_relation, cells)
        matches += true is not None and parsed.relation in true
    return matches


def _aligned_relations(alignment: Sequence[int | None], scene_relation: str | None, cells) -> frozenset[str] | None:
    """The true relations of the first mention's group to the second's (None unless both align)."""
    if scene_relation is None or len(alignment) != 2 or None in alignment:
        return None
    # "NPa REL NPb" aligns as (0, 1); "NPb INV NPa" the other way round, (1, 0).
    return _relations_between(alignment[0], alignment[1], scene_relation, cells)


def _describe(group: Mention | shapes.Group) -> str:
    """A noun phrase in canonical words: "three small blue squares", "one red circle"."""
    singular, plural = shapes.SHAPE_WORDS[group.shape][0]
    words = [_name("count", group.count)] + ([group.size] if group.size else []) + [group.colour]
    return " ".join(words + [singular if group.count == 1 else plural])


def _name(attribute: str, value) -> str:
    # Counts read as words ("two"); "one" rather than "a" for 1, the last of its words.
    return shapes.COUNT_WORDS[value][-1] if attribute == "count" and value in shapes.COUNT_WORDS else str(value)


def _tally(tallies: dict[str, list[int]], attribute: str, correct: bool) -> None:
    tallies[attribute][0] += bool(correct)
    tallies[attribute][1] += 1


def _frozen(tallies: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    return {a: (int(c), int(t)) for a, (c, t) in tallies.items()}


def _ratio(correct: int, total: int) -> float:
    return correct / total if total else math.nan
