"""`capnas_shapes`: a procedural captioned-scene dataset, small enough to search and retrain on a CPU.

Each image shows 1–4 objects (shape × colour × size) placed on a coarse grid over a textured, noisy
background. Its captions name the objects with their counts and, when there are two groups of
objects, the spatial relation between them ("two small red squares to the left of a blue circle").
Relations and counts are what an encoder that only global-average-pools its features loses, so a
searched encoder has to keep spatial information to caption well.

Relations: the generator draws A's relation to B, then puts every object of A strictly on that side
of a grid line and every object of B on the other; along the other axis placement is free. So the
drawn relation always holds, but others may hold too (A in the top-left cell, B in the bottom-right:
A is left of and above B), and the references name only the drawn one. `scene_to_dict` records each
object's grid cell, from which `shapes_content.true_relations` reads every relation that holds, and
`shapes_content` judges a stated relation by that geometry.

Splits: `train` (captioned), `unlabeled` (the image set U; captions are generated but the TFDS
builder drops them), `validation`, `test`, and `test_novel`, whose images each hold at least one
(colour, shape) pair from `ShapesConfig.held_out_pairs`; those pairs never appear in any other split.

Determinism: example `index` of `split` is drawn from its own generator seeded by
`(seed, split code, index)`, so the same seed gives byte-identical images and captions whatever
the order (or subset) of examples generated. Pure numpy; objects are anti-aliased by 4× supersampling.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {  # name -> RGB in [0, 1]; all bright, so they stand out on the dark backgrounds
    "red": (0.92, 0.16, 0.14),
    "green": (0.18, 0.82, 0.22),
    "blue": (0.22, 0.40, 1.00),
    "yellow": (0.96, 0.90, 0.16),
    "purple": (0.68, 0.24, 0.90),
    "white": (0.96, 0.96, 0.96),
}
SIZES = ("small", "large")
RELATIONS = ("left", "right", "above", "below")  # relation of group A to group B
BACKGROUNDS = ("noise", "stripes", "checker", "gradient")
SPLITS = ("train", "unlabeled", "validation", "test", "test_novel")
# A stable small integer per split: the RNG of an example and its image_id derive from it.
SPLIT_CODES = {"train": 1, "unlabeled": 2, "validation": 3, "test": 4, "test_novel": 5}
IMAGE_ID_STRIDE = 10_000_000  # image_id = split code * stride + index: unique across splits
# One held-out partner per shape and no colour twice, so every colour and every shape is still seen
# in training, just never in these combinations.
DEFAULT_HELD_OUT_PAIRS = (
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "diamond"),
)

# Caption vocabulary: synonyms give the five references of an image different wordings. Public, so
# that `shapes_content` parses captions with exactly the words the generator writes:
#   SHAPE_WORDS[shape] = ((singular, plural), ...), COLOUR_WORDS[colour] / SIZE_WORDS[size] /
#   COUNT_WORDS[count] = (word, ...), RELATION_WORDS[relation] = (phrase, ...),
#   BACKGROUND_WORDS[background] = (adjective, ...), PREFIXES = (phrase, ...).
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "cross": (("cross", "crosses"),),
}
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COUNT_WORDS = {1: ("a", "one"), 2: ("two",), 3: ("three",), 4: ("four",),
                5: ("five",), 6: ("six",), 7: ("seven",), 8: ("eight",), 9: ("nine",)}
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
BACKGROUND_WORDS = {"noise": ("noisy", "grainy"), "stripes": ("striped",),
                     "checker": ("checkered",), "gradient": ("shaded", "dark")}
PREFIXES = ("a picture of", "an image of", "a drawing of")
_MAX_CAPTION_ATTEMPTS = 50


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """How to generate `capnas_shapes`.

    The defaults (32×32, 16000/1000/300/300/300 images) generate in about 20 seconds and let a whole
    search + retrain run on a CPU within minutes. 16,000 training images, not fewer, because the retrained
    captioner memorises a small set: trained on 2,000 it named the count of 98 % of the groups in training
    images and 75 % in validation images, trained on 16,000 95 % in validation images at the same budget
    (docs/recipe_variants.md).

    Args:
      image_size: side S of the square images.
      grid_size: objects sit in distinct cells of a `grid_size × grid_size` grid (jittered
        inside their cell), so they never overlap and relations are read from grid cells.
      num_train, num_unlabeled, num_validation, num_test, num_test_novel: images per split.
      captions_per_image: reference captions per image (5, like COCO).
      max_objects: at most this many objects per image (≤ grid_size² and ≤ 9).
      held_out_pairs: (colour, shape) pairs that appear only in `test_novel`.
      seed: the dataset seed.
    """

    image_size: int = 32
    grid_size: int = 3
    num_train: int = 16000
    num_unlabeled: int = 1000
    num_validation: int = 300
    num_test: int = 300
    num_test_novel: int = 300
    captions_per_image: int = 5
    max_objects: int = 4
    held_out_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELD_OUT_PAIRS
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "held_out_pairs", tuple(tuple(p) for p in self.held_out_pairs))
        if self.image_size < 8:
            raise ValueError(f"ShapesConfig.image_size must be >= 8, received {self.image_size}.")
        if self.grid_size < 2:
            raise ValueError(f"ShapesConfig.grid_size must be >= 2, received {self.grid_size}.")
        if not 1 <= self.max_objects <= min(9, self.grid_size**2):
            raise ValueError(f"ShapesConfig.max_objects must be in [1, min(9, grid_size**2)="
                             f"{min(9, self.grid_size ** 2)}], received {self.max_objects}.")
        if self.captions_per_image < 1:
            raise ValueError(f"ShapesConfig.captions_per_image must be >= 1, received {self.captions_per_image}.")
        if self.seed < 0:
            raise ValueError(f"ShapesConfig.seed must be >= 0, received {self.seed}.")
        for split in SPLITS:
            if split_size(self, split) < 0:
                raise ValueError(f"ShapesConfig.num_{split} must be >= 0, received {split_size(self, split)}.")
        for pair in self.held_out_pairs:
            if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
                raise ValueError(f"ShapesConfig.held_out_pairs entries must be (colour, shape) with colour in "
                                 f"{sorted(COLOURS)} and shape in {list(SHAPES)}, received {pair!r}.")
        if self.num_test_novel > 0 and not self.held_out_pairs:
            raise ValueError("ShapesConfig.num_test_novel > 0 needs at least one held_out_pairs entry.")
        if len(set(self.held_out_pairs)) == len(COLOURS) * len(SHAPES):
            raise ValueError("ShapesConfig.held_out_pairs holds out every (colour, shape) pair.")


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One drawn object: attributes, its place in pixels (centre x, centre y, radius), the index of
    its group in `Scene.groups` and its grid cell (`row`, `col`), which the whole object lies inside."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    group: int
    row: int
    col: int


@dataclasses.dataclass(frozen=True)
class Group:
    """`count` identical objects (same shape, colour, size) named by one noun phrase."""

    count: int
    shape: str
    colour: str
    size: str


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an image shows: one group, or two groups A and B with `relation` of A to B (the drawn
    relation, which always holds; others may hold too), placed on a `grid_size × grid_size` grid."""

    groups: tuple[Group, ...]
    relation: str | None
    background: str
    objects: tuple[ShapeObject, ...]
    grid_size: int


@dataclasses.dataclass(frozen=True)
class ShapesExample:
    """One generated example: uint8 image `[S, S, 3]`, its id, its reference captions and scene."""

    image: np.ndarray
    image_id: int
    captions: tuple[str, ...]
    scene: Scene


def scene_to_dict(scene: Scene) -> dict:
    """The JSON-able content of `scene` that captions describe.

    Returns:
      `{"groups": [{"count": int, "colour": str, "shape": str, "size": str}, ...], "relation": str
      | None, "objects": [{"group": int, "row": int, "col": int}, ...], "grid_size": int}` with the
      groups in scene order (A, then B) and the canonical names of `COLOURS`, `SHAPES`, `SIZES` and
      `RELATIONS`; `relation` is the drawn relation of A to B (None for one group); `objects` gives
      each object's group (an index into `groups`) and grid cell, in drawing order, so that every
      relation that holds can be read from the geometry (`shapes_content.true_relations`).
      Pixel positions and background are left out: no caption metric scores them.
    """
    return {
        "groups": [{"count": int(g.count), "colour": g.colour, "shape": g.shape, "size": g.size}
                   for g in scene.groups],
        "relation": scene.relation,
        "objects": [{"group": int(o.group), "row": int(o.row), "col": int(o.col)} for o in scene.objects],
        "grid_size": int(scene.grid_size),
    }


def size_required(groups: Sequence[Group]) -> bool:
    """Whether every caption of a scene with `groups` names the sizes.

    Only when the two groups share colour and shape: size is then all that tells them apart.
    """
    return len(groups) == 2 and (groups[0].shape, groups[0].colour) == (groups[1].shape, groups[1].colour)


def split_size(config: ShapesConfig, split: str) -> int:
    """Number of images of `split` under `config`."""
    _check_split(split)
    return getattr(config, f"num_{split}")


def image_id_for(split: str, index: int) -> int:
    """The int64 image_id of example `index` of `split` (unique across splits)."""
    _check_split(split)
    return SPLIT_CODES[split] * IMAGE_ID_STRIDE + index


def generate_split(config: ShapesConfig, split: str) -> Iterator[ShapesExample]:
    """Yields every example of `split` in index order."""
    for index in range(split_size(config, split)):
        yield generate_example(config, split, index)


def generate_example(config: ShapesConfig, split: str, index: int) -> ShapesExample:
    """Example `index` of `split`, a pure function of `(config, split, index)`.

    Args:
      config: the dataset configuration.
      split: one of `SPLITS`.
      index: position in the split, `0 <= index < split_size(config, split)`.

    Returns:
      The example; its RNG is seeded by `(config.seed, SPLIT_CODES[split], index)`.
    """
    _check_split(split)
    if not 0 <= index < split_size(config, split):
        raise IndexError(f"index must be in [0, {split_size(config, split)}) for split {split!r}, received {index}.")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLIT_CODES[split], index]))
    scene = sample_scene(config, rng, novel=(split == "test_novel"))
    image = render_scene(scene, config.image_size, rng)
    captions = describe_scene(scene, rng, config.captions_per_image)
    return ShapesExample(image=image, image_id=image_id_for(split, index), captions=captions, scene=scene)


def seen_pairs(config: ShapesConfig) -> tuple[tuple[str, str], ...]:
    """(colour, shape) pairs allowed outside `test_novel`."""
    held_out = set(config.held_out_pairs)
    return tuple(p for p in itertools.product(COLOURS, SHAPES) if p not in held_out)


# --- Scene sampling ---------------------------------------------------------------------------

def sample_scene(config: ShapesConfig, rng: np.random.Generator, *, novel: bool) -> Scene:
    """Draws the groups, their relation and their placement.

    Outside `test_novel` every group uses a seen (colour, shape) pair; in `test_novel` one group
    (chosen at random) uses a held-out pair.
    """
    groups = _sample_groups(config, rng, novel=novel)
    relation = str(rng.choice(RELATIONS)) if len(groups) == 2 else None
    cells = _place_groups(groups, relation, config.grid_size, rng)
    objects = tuple(
        _object_in_cell(group, g, cell, config, rng)
        for g, (group, group_cells) in enumerate(zip(groups, cells))
        for cell in group_cells
    )
    background = str(rng.choice(BACKGROUNDS))
    return Scene(groups=groups, relation=relation, background=background, objects=objects,
                 grid_size=config.grid_size)


def _sample_groups(config: ShapesConfig, rng: np.random.Generator, *, novel: bool) -> tuple[Group, ...]:
    max_objects = config.max_objects
    num_groups = 1 if max_objects == 1 or rng.random() < 0.4 else 2
    if num_groups == 1:
        counts = (int(rng.integers(1, max_objects + 1)),)
    else:
        first = int(rng.integers(1, max_objects))
        counts = (first, int(rng.integers(1, max_objects - first + 1)))
    seen = seen_pairs(config)
    novel_group = int(rng.integers(num_groups)) if novel else -1
    groups: list[Group] = []
    for g, count in enumerate(counts):
        while True:  # two groups must differ, or the caption could not tell them apart
            pairs = config.held_out_pairs if g == novel_group else seen
            colour, shape = pairs[int(rng.integers(len(pairs)))]
            group = Group(count=count, shape=shape, colour=colour, size=str(rng.choice(SIZES)))
            if all((o.shape, o.colour, o.size) != (shape, colour, group.size) for o in groups):
                break
        groups.append(group)
    return tuple(groups)


def _place_groups(groups, relation, grid_size, rng) -> list[list[tuple[int, int]]]:
    """Distinct (row, col) cells per group; with a relation, A's cells all lie strictly on its side."""
    all_cells = [(r, c) for r in range(grid_size) for c in range(grid_size)]
    if relation is None:
        chosen = rng.permutation(len(all_cells))[: groups[0].count]
        return [[all_cells[i] for i in chosen]]
    count_a, count_b = groups[0].count, groups[1].count
    # A boundary k splits the grid along one axis: A gets coordinates < k ("left"/"above") or >= k.
    axis = 1 if relation in ("left", "right") else 0
    a_first = relation in ("left", "above")
    feasible = []
    for k in range(1, grid_size):
        low, high = k * grid_size, (grid_size - k) * grid_size
        n_a, n_b = (low, high) if a_first else (high, low)
        if count_a <= n_a and count_b <= n_b:
            feasible.append(k)
    k = feasible[int(rng.integers(len(feasible)))]
    low_cells = [cell for cell in all_cells if cell[axis] < k]
    high_cells = [cell for cell in all_cells if cell[axis] >= k]
    cells_a, cells_b = (low_cells, high_cells) if a_first else (high_cells, low_cells)
    pick_a = rng.permutation(len(cells_a))[:count_a]
    pick_b = rng.permutation(len(cells_b))[:count_b]
    return [[cells_a[i] for i in pick_a], [cells_b[i] for i in pick_b]]


def _object_in_cell(group: Group, group_index: int, cell, config: ShapesConfig, rng) -> ShapeObject:
    cell_size = config.image_size / config.grid_size
    radius = cell_size * (0.46 if group.size == "large" else 0.28)
    slack = max(cell_size / 2 - radius, 0.0) * 0.9  # jitter that keeps the object inside its cell
    row, col = cell
    x = (col + 0.5) * cell_size + rng.uniform(-slack, slack)
    y = (row + 0.5) * cell_size + rng.uniform(-slack, slack)
    return ShapeObject(group.shape, group.colour, group.size, float(x), float(y), float(radius),
                       group=group_index, row=int(row), col=int(col))


# --- Rendering --------------------------------------------------------------------------------

_SUPERSAMPLE = 4


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws `scene` as a uint8 `[S, S, 3]` image: textured background, objects, pixel noise."""
    image = _background(scene.background, image_size, rng)
    for obj in scene.objects:
        colour = np.clip(np.asarray(COLOURS[obj.colour]) + rng.uniform(-0.06, 0.06, 3), 0.0, 1.0)
        _paint(image, obj, colour)
    image += rng.normal(0.0, 0.025, image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A dark float `[S, S, 3]` texture in about [0, 0.45]."""
    base = rng.uniform(0.06, 0.25)
    tint = rng.uniform(-0.04, 0.04, 3)
    amplitude = rng.uniform(0.06, 0.14)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    if kind == "noise":  # smooth blobs: coarse random field, nearest-upsampled
        coarse = rng.uniform(-1, 1, (4, 4))
        idx = np.minimum((np.arange(size) * 4) // size, 3)
        pattern = coarse[idx][:, idx]
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.15, 0.35)
        pattern = np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period))
    elif kind == "checker":
        cells = int(rng.integers(3, 7))
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        pattern = 2 * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    else:
        raise ValueError(f"background must be one of {BACKGROUNDS}, received {kind!r}.")
    grey = base + amplitude * pattern
    return np.clip(grey[..., None] + tint, 0.0, 1.0)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Inside-test of `shape` at offsets (dx, dy) from its centre in units of its radius (y down)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.82
    if shape == "diamond":
        return ax + ay <= 1.1
    if shape == "triangle":  # apex up at dy = -1, base at dy = 0.8
        return (dy <= 0.8) & (ax <= (dy + 1.0) * (1.1 / 1.8))
    if shape == "cross":
        return ((ax <= 0.34) & (ay <= 1.0)) | ((ay <= 0.34) & (ax <= 1.0))
    raise ValueError(f"shape must be one of {SHAPES}, received {shape!r}.")


def _paint(image: np.ndarray, obj: ShapeObject, colour: np.ndarray) -> None:
    """Alpha-composites `obj` into `image` in place, with coverage from 4×4 supersampling."""
    size = image.shape[0]
    x0, x1 = max(int(np.floor(obj.x - obj.radius)) - 1, 0), min(int(np.ceil(obj.x + obj.radius)) + 1, size)
    y0, y1 = max(int(np.floor(obj.y - obj.radius)) - 1, 0), min(int(np.ceil(obj.y + obj.radius)) + 1, size)
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)
    dx = (xs[None, :] - obj.x) / obj.radius
    dy = (ys[:, None] - obj.y) / obj.radius
    inside = _shape_mask(obj.shape, dx, dy).astype(np.float64)
    coverage = inside.reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    patch = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = patch * (1.0 - coverage) + colour * coverage


# --- Captions ---------------------------------------------------------------------------------

def describe_scene(scene: Scene, rng: np.random.Generator, num_captions: int) -> tuple[str, ...]:
    """`num_captions` reference captions of `scene`, distinct when the templates allow it."""
    captions: list[str] = []
    for _ in range(_MAX_CAPTION_ATTEMPTS):
        caption = _one_caption(scene, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == num_captions:
            return tuple(captions)
    while len(captions) < num_captions:  # tiny template space: repeats are still true captions
        captions.append(_one_caption(scene, rng))
    return tuple(captions)


def _one_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption from a random template and random synonyms.

    Templates, with NP = count [size] colour shape (size always said when `size_required`, else
    with probability 0.7; the shape word plural unless the count is 1) and BE = "is" after the
    count words of 1, else "are":
      one group:  NP | there BE NP | NP on a <background> background | <prefix> NP | NP in the picture
      two groups: NPa REL NPb | there BE NPa REL NPb | NPb INV NPa | NPa BE REL NPb
    where REL words the relation of A to B and INV its inverse (B's relation to A).

    Noun phrases have at most 4 words (count, size, colour, shape) and relations at most 4, so
    every template stays within 14 words: L = 16 (with <start> and <end>) never truncates one.
    """
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    groups = scene.groups
    with_size = size_required(groups) or rng.random() < 0.7
    phrases = [_noun_phrase(g, with_size, pick) for g in groups]
    if len(groups) == 1:
        (np_a,) = phrases
        background = f"on a {pick(BACKGROUND_WORDS[scene.background])} background"
        return [
            np_a,
            f"there {_be(np_a)} {np_a}",
            f"{np_a} {background}",
            f"{pick(PREFIXES)} {np_a}",
            f"{np_a} in the picture",
        ][int(rng.integers(5))]
    np_a, np_b = phrases
    relation = pick(RELATION_WORDS[scene.relation])
    inverse = pick(RELATION_WORDS[INVERSE_RELATION[scene.relation]])
    return [
        f"{np_a} {relation} {np_b}",
        f"there {_be(np_a)} {np_a} {relation} {np_b}",
        f"{np_b} {inverse} {np_a}",
        f"{np_a} {_be(np_a)} {relation} {np_b}",
    ][int(rng.integers(4))]


def _noun_phrase(group: Group, with_size: bool, pick) -> str:
    singular, plural = pick(SHAPE_WORDS[group.shape])
    words = [pick(COUNT_WORDS[group.count])]
    if with_size:
        words.append(pick(SIZE_WORDS[group.size]))
    words.append(pick(COLOUR_WORDS[group.colour]))
    words.append(singular if group.count == 1 else plural)
    return " ".join(words)


def _be(noun_phrase: str) -> str:
    # "there is one …", "there are two …"
    return "is" if noun_phrase.split(" ", 1)[0] in ("a", "one") else "are"


def _check_split(split: str) -> None:
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLITS)}, received {split!r}.")


def object_pairs(example: ShapesExample) -> set[tuple[str, str]]:
    """The (colour, shape) pairs drawn in `example`."""
    return {(o.colour, o.shape) for o in example.scene.objects}


def render_contact_sheet(examples: Sequence[ShapesExample], columns: int = 8) -> np.ndarray:
    """Tiles example images into one uint8 image (for looking at the data)."""
    size = examples[0].image.shape[0]
    rows = -(-len(examples) // columns)
    sheet = np.zeros((rows * (size + 2), columns * (size + 2), 3), np.uint8)
    for i, example in enumerate(examples):
        r, c = divmod(i, columns)
        sheet[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = example.image
    return sheet
