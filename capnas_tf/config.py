"""Every typed configuration of a run: `RunConfig` (workdir, seed, distribution), `DataConfig`,
`SupernetConfig`, `SearchConfig`, `RetrainConfig`. Library code takes these as arguments and never
reads flags; `capnas_tf.flags` turns absl flags into them.

Each config checks its fields at construction (`ConfigError` naming the field), names included: a
strategy, decoder, op or dataset must be one registered with its part, so this module sits above the
parts it names (`tests/test_import_graph.py`) and imports their tables when it checks."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Callable, ClassVar, Iterable

from capnas_tf.data.shapes import ShapesConfig


class ConfigError(ValueError):
    """A config field outside its range. Carries the dataclass (`config`, its class name), the `field`,
    its `value`, and what was `expected` (a phrase: "> 0", "one of [...]"); `related` lists the other
    fields of the same config that `expected` names (e.g. "< epochs (4)"), so that an entry point can
    name the flags behind them (`capnas_tf.flags.describe_config_error`)."""

    def __init__(self, config: str, field: str, value, expected: str, related: tuple = ()):
        self.config, self.field, self.value, self.expected, self.related = config, field, value, expected, related
        super().__init__(f"{config}.{field} must be {expected}; received {value!r}.")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _Checker:
    """`require(field, ok, expected)` and shorthands for the range rules of one config instance."""

    def __init__(self, config):
        self.config = config

    def require(self, field: str, ok: bool, expected: str, related: tuple = ()) -> None:
        if not ok:
            raise ConfigError(type(self.config).__name__, field, getattr(self.config, field), expected, related)

    def at_least(self, minimum, *fields: str, note: str = "") -> None:
        for field in fields:
            value = getattr(self.config, field)
            self.require(field, _number(value) and value >= minimum, f">= {minimum}{note}")

    def positive(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self.config, field)
            self.require(field, _number(value) and value > 0, "> 0")

    def one_of(self, field: str, names) -> None:
        self.require(field, getattr(self.config, field) in names, f"one of {sorted(names)}")


# --- the command line of each field -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field is set on the command line: `capnas_tf.flags` defines one absl flag per field
    that has one, with the field's default, and builds the configs from the parsed flags.

    Args:
      name: the flag's name (default: the field's).
      help: its help text.
      choices: None, or a function returning the allowed names. A fixed set (`registry=False`) becomes an
        absl enum; a registry (`registry=True`) stays open, so that names registered by --plugins are
        accepted, and the config checks the name when it is built (an error naming the flag and the
        registered names).
      parse, unparse: flag value → field value, and the field's default → the flag's default (e.g. -1 for
        None), where they differ.
      defined: False for a field that reads a flag another config's field defines (DataConfig.seed ← --seed).
    """

    name: str | None
    help: str
    choices: Callable[[], Iterable[str]] | None = None
    registry: bool = False
    parse: Callable | None = None
    unparse: Callable | None = None
    defined: bool = True


def option(default, *, help: str, flag: str | None = None, **kwargs):
    """A dataclass field with a default and its command-line `Flag` (`help`, `flag` name, and `Flag`'s
    other arguments)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(flag, help, **kwargs)})


def flag_of(field: dataclasses.Field) -> Flag | None:
    """The `Flag` of a config field, its name filled in; None for a field the command line does not set."""
    spec = field.metadata.get("flag")
    if spec is None or spec.name is not None:
        return spec
    return dataclasses.replace(spec, name=field.name)


def _none_if_negative(value):
    return None if value is not None and value < 0 else value


def _minus_one_if_none(value):
    return -1 if value is None else value


def _tuple_or_none(value):
    return None if value is None else tuple(value)


# The names a field may take, from the tables of the parts that define them (imported when asked, as
# this module sits above those parts).
def registered_strategies():
    from capnas_tf.search.strategies import STRATEGIES  # (capnas_tf.search registers the baselines)

    return STRATEGIES


def registered_decoders():
    from capnas_tf.decoders import DECODERS

    return DECODERS


def registered_encoders():
    from capnas_tf.encoders import ENCODERS

    return ENCODERS


def registered_datasets():
    from capnas_tf.data.pipeline import DATASET_SOURCES

    return DATASET_SOURCES


def stage2_losses():
    from capnas_tf.search.captioning import STAGE2_LOSSES

    return STAGE2_LOSSES


def hypergradient_estimators():
    from capnas_tf.search.hypergradient import HYPERGRADIENTS

    return HYPERGRADIENTS


def hypergradient_term_sets():
    from capnas_tf.search.hypergradient import HYPERGRADIENT_TERMS

    return HYPERGRADIENT_TERMS


def arch_weight_decay_modes():
    from capnas_tf.search.strategies import ARCH_WEIGHT_DECAY_MODES

    return ARCH_WEIGHT_DECAY_MODES


def dtype_policies():
    from capnas_tf.search.precision import POLICIES

    return POLICIES


def bad_example_actions():
    from capnas_tf.data.captions_io import ON_BAD_EXAMPLE

    return ON_BAD_EXAMPLE


def distribution_strategies():
    from capnas_tf.distribute import DISTRIBUTION_STRATEGIES

    return DISTRIBUTION_STRATEGIES


def scheduled_sampling_schedules():
    from capnas_tf.decoders.scheduled_sampling import SCHEDULES

    return ("off", *SCHEDULES)


def command_line_relaxations():
    """softmax only: the relaxation of A that three_stage and darts use; gdas relaxes A by its own
    (`search_space.relaxations.gumbel`), random_ws and reinforce sample whole paths."""
    return ("softmax",)


# --- run ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it runs (`distribution`: a name of `distribute.get_distribution_strategy`).
    The data's shuffles have a seed of their own, `DataConfig.seed` (the same --seed on the command line)."""

    workdir: str = option("runs/default",
        help="Directory for every output of the run; re-running the same command resumes from its last checkpoint.")
    seed: int = option(0, help="Global random seed (data order, initialisation, relaxation samples).")
    deterministic: bool = option(False, help="Enable TensorFlow's deterministic ops (reproducible, slower).")
    distribution: str = option("default", flag="strategy", choices=distribution_strategies,
        help="tf.distribute strategy; `mirrored` uses every visible GPU (or CPU).")


# --- data ---------------------------------------------------------------------------------------------

UNLABELED_SOURCES = ("auto", "train", "holdout", "folder")
FILE_DATASETS = ("coco", "karpathy")  # the datasets read from annotation files + an image folder


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which caption data to read and how to turn it into batches.

    Every rule below is checked at construction (`ConfigError` naming the field; the command line
    names its flag), files and folders included.

    Args:
      dataset: a name in `DATASET_SOURCES`: capnas_shapes | coco | karpathy | coco_captions_tfds.
      data_dir: TFDS data_dir (capnas_shapes, coco_captions_tfds); None: TFDS's default.
      annotations: an existing file, required by coco and karpathy and set for no other dataset:
        the COCO-format caption JSON of the training images (coco), or the Karpathy-split JSON.
      val_annotations, test_annotations: coco only: existing COCO-format files of the validation and
        test images, other than `annotations`. A split without one is cut from `annotations`.
      image_dir: an existing folder (coco, karpathy only) that the files' image names are relative to.
      split_fractions: coco only: (train, validation, test) shares of the captioned images of
        `annotations`, by a fixed hash of the image_id; three numbers >= 0 summing to 1, train > 0,
        and 0 for a split with a file of its own. None: 0.1 to each split without a file, the rest
        to train ((0.8, 0.1, 0.1) for one file).
      image_size: S; images are resized to S × S (capnas_shapes is generated at S).
      max_caption_len: L, caption length in tokens including <start> and <end>.
      min_word_count: words seen fewer times in the training captions become <unk>.
      batch_size: default global batch size of every stream.
      seed: seed of every shuffle (not of the dataset itself: see `shapes.seed`).
      deterministic: `tf.data.Options.deterministic`; with it, the same seed gives the same batches.
      shuffle_buffer: shuffle buffer of (image, caption) pairs.
      cache: "memory", "none", or a file path prefix for `Dataset.cache(filename)` (one file set per
        split and configuration: `<prefix>-<dataset>-<split>-<digest>`).
      on_bad_example: "error" raises `BadExampleError` naming the file; "skip" drops, logs and counts.
      validate_images: decode every image once, with the training decoder, before training.
      unlabeled_source: where U comes from: auto | train | holdout | folder (see module doc).
      unlabeled_fraction: share of training images moved to U by "holdout", in (0, 1).
      unlabeled_dir: the existing folder of U's images for "folder" (set for no other source).
      download: allow TFDS to download `coco_captions`.
      shapes: generation parameters of capnas_shapes (its image_size is replaced by `image_size`).
    """

    # The split each annotation file of dataset=coco gives, and the field naming the file.
    SPLIT_FILES: ClassVar[dict] = {"validation": "val_annotations", "test": "test_annotations"}

    dataset: str = option("capnas_shapes", choices=registered_datasets, registry=True,
        help="Caption dataset: the bundled synthetic capnas_shapes, COCO-format annotations + images, a "
             "Karpathy-split JSON + images, or TFDS coco_captions (downloads).")
    data_dir: str | None = option(None, help="TFDS data_dir (default: TFDS's own, ~/tensorflow_datasets).")
    annotations: str | None = option(None,
        help="--dataset=coco: the COCO-format caption JSON of the training images (validation and test are cut "
             "from it by --split_fractions unless --val_annotations / --test_annotations give them); its images "
             "without captions are the unlabeled images U (--unlabeled_source=auto). --dataset=karpathy: the "
             "Karpathy-split JSON (dataset_coco.json, dataset_flickr8k.json, …), whose splits are used as they "
             "are.")
    val_annotations: str | None = option(None,
        help="--dataset=coco: COCO-format caption JSON of the validation images (images in --image_dir); default: "
             "a share of --annotations (--split_fractions).")
    test_annotations: str | None = option(None,
        help="--dataset=coco: COCO-format caption JSON of the test images; default: a share of --annotations "
             "(--split_fractions).")
    image_dir: str | None = option(None,
        help="Folder of the images named by the annotation files (--dataset=coco | karpathy); a file name may not "
             "be absolute or lead out of it.")
    split_fractions: tuple[float, float, float] | None = option(None, parse=_tuple_or_none,
        help="--dataset=coco: train,validation,test shares of the captioned images of --annotations, e.g. "
             "0.8,0.1,0.1: three numbers >= 0 that sum to 1, train > 0, and 0 for a split given by its own file "
             "(--val_annotations, --test_annotations). Each image goes to one split by a fixed hash of its id. "
             "Default: 0.1 to each split without its own file, the rest to train.")
    image_size: int = option(32, help="Images are resized to image_size × image_size.")
    max_caption_len: int = option(16,
        help="Caption length L in tokens, <start> and <end> included; longer captions are truncated, shorter ones "
             "padded.")
    min_word_count: int = option(5, help="Words seen fewer times in the training captions become <unk>.")
    batch_size: int = option(32, help="Global batch size of every stream (split over replicas).")
    seed: int = option(0, defined=False, help="The run's --seed (RunConfig.seed).")
    deterministic: bool = True
    shuffle_buffer: int = 4096
    cache: str = "memory"
    on_bad_example: str = option("error", choices=bad_example_actions,
        help="A bad example (a missing, corrupt or unsupported image; an image entry without an integer id or "
             "whose file name leads out of --image_dir; an empty, non-text or invalid-Unicode caption): stop with "
             "an error naming its file and entry, or skip it, log it and count it.")
    validate_images: bool = option(True,
        help="Before training, decode every image once with the decoder training uses, so that a bad image is "
             "named (or skipped) up front rather than failing inside tf.data.")
    unlabeled_source: str = option("auto", choices=lambda: UNLABELED_SOURCES,
        help="Where the unlabeled images U of Stage II come from. auto: the dataset's own images without captions "
             "(capnas_shapes' unlabeled split; the images of --annotations that have no caption), else as train. "
             "train: the training images with their captions dropped. holdout: --unlabeled_fraction of the "
             "training images, moved out of training, captions dropped. folder: every image file under "
             "--unlabeled_dir (.jpg, .jpeg, .png, .gif, .bmp).")
    unlabeled_fraction: float = option(0.2,
        help="--unlabeled_source=holdout: the share of the training images held out as U, in (0, 1), chosen by a "
             "fixed hash of the image id.")
    unlabeled_dir: str | None = option(None, help="--unlabeled_source=folder: the folder of images without captions.")
    download: bool = False
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)

    def __post_init__(self):
        def fail(field: str, expected: str, related: tuple = ()):
            raise ConfigError("DataConfig", field, getattr(self, field), expected, related)

        if self.dataset not in registered_datasets():
            fail("dataset", f"one of {sorted(registered_datasets())}")
        for name, minimum in (("image_size", 1), ("max_caption_len", 2), ("batch_size", 1), ("min_word_count", 1)):
            if not _integer(getattr(self, name)) or getattr(self, name) < minimum:
                fail(name, f">= {minimum}")
        if self.on_bad_example not in bad_example_actions():
            fail("on_bad_example", f"one of {list(bad_example_actions())}")
        self._check_files(fail)
        self._check_split_fractions(fail)
        if self.unlabeled_source not in UNLABELED_SOURCES:
            fail("unlabeled_source", f"one of {list(UNLABELED_SOURCES)}")
        if not (_number(self.unlabeled_fraction) and 0.0 < self.unlabeled_fraction < 1.0):
            fail("unlabeled_fraction", "in (0, 1)")
        if self.unlabeled_source == "folder":
            if not self.unlabeled_dir:
                fail("unlabeled_dir", "set (a folder of images without captions) for unlabeled_source=folder",
                     related=("unlabeled_source",))
            if not os.path.isdir(self.unlabeled_dir):
                fail("unlabeled_dir", "an existing folder")
        elif self.unlabeled_dir is not None:
            fail("unlabeled_dir", f"unset for unlabeled_source={self.unlabeled_source}: only "
                 "unlabeled_source=folder reads it", related=("unlabeled_source",))

    def _check_files(self, fail) -> None:
        """The annotation files and image folder: set exactly where the dataset reads them, and there."""
        reads_files = self.dataset in FILE_DATASETS
        for field in ("annotations", "image_dir"):
            value = getattr(self, field)
            if reads_files and not value:
                what = ("the annotation file (COCO-format captions of the training images, or a Karpathy-split "
                        "JSON)" if field == "annotations" else "the folder of the images the annotations name")
                fail(field, f"set for dataset={self.dataset}: {what}", related=("dataset",))
            if not reads_files and value is not None:
                fail(field, f"unset for dataset={self.dataset}: only coco and karpathy read it", related=("dataset",))
        if reads_files and not os.path.isfile(self.annotations):
            fail("annotations", "an existing file")
        if reads_files and not os.path.isdir(self.image_dir):
            fail("image_dir", "an existing folder")
        for field in self.SPLIT_FILES.values():
            value = getattr(self, field)
            if value is None:
                continue
            if self.dataset != "coco":
                fail(field, f"unset for dataset={self.dataset}: only coco reads it (a Karpathy-split file "
                     "holds every split)", related=("dataset",))
            if not os.path.isfile(value):
                fail(field, "an existing file")
            if os.path.samefile(value, self.annotations):
                fail(field, "another file than annotations (the training images)", related=("annotations",))
        if (self.val_annotations and self.test_annotations
                and os.path.samefile(self.val_annotations, self.test_annotations)):
            fail("test_annotations", "another file than val_annotations", related=("val_annotations",))

    def _check_split_fractions(self, fail) -> None:
        value = self.split_fractions
        if value is None:
            return
        if self.dataset != "coco":
            fail("split_fractions", f"unset for dataset={self.dataset}: only coco splits a file",
                 related=("dataset",))
        numbers = tuple(value) if isinstance(value, (tuple, list)) else ()
        if len(numbers) != 3 or not all(_number(f) and f >= 0 for f in numbers):
            fail("split_fractions", "three numbers >= 0 (train, validation, test)")
        if abs(sum(numbers) - 1.0) > 1e-6:
            fail("split_fractions", f"three numbers summing to 1 (these sum to {sum(numbers):g})")
        if numbers[0] <= 0:
            fail("split_fractions", "three numbers whose first (the training share) is > 0")
        for share, (split, field) in zip(numbers[1:], self.SPLIT_FILES.items()):
            if share > 0 and getattr(self, field):
                fail("split_fractions", f"0 for {split}, which comes from its own file (given by {field})",
                     related=(field,))

    def resolved_split_fractions(self) -> tuple[float, float, float]:
        """(train, validation, test) shares of the captioned images of `annotations` (coco)."""
        if self.split_fractions is not None:
            return tuple(float(f) for f in self.split_fractions)
        shares = [0.0 if getattr(self, field) else 0.1 for field in self.SPLIT_FILES.values()]
        return (1.0 - sum(shares), *shares)


# --- search ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """The searched encoder E (a DARTS supernet) and its relaxation of A."""

    channels: int = option(8, flag="supernet_channels", help="C: initial channels of the supernet.")
    num_cells: int = option(5, flag="supernet_cells", help="Number of supernet cells.")
    num_nodes: int = option(4, flag="supernet_nodes", help="Intermediate nodes per cell.")
    stem_multiplier: int = 3
    primitives: tuple = option(  # the DARTS candidate set
        ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
         "dil_conv_5x5"), parse=tuple,
        help="Candidate operations of every mixed edge (names registered in capnas_tf.search_space.ops.OPS).")
    relaxation: str = option("softmax", choices=command_line_relaxations,
        help="Relaxation of A into op weights for the three_stage and darts strategies (DARTS' softmax); gdas, "
             "random_ws and reinforce sample their own one-hot paths.")
    max_skip_connect: int | None = option(2, parse=_none_if_negative, unparse=_minus_one_if_none,
        help="Cap on skip_connect ops in the derived normal cell (DARTS collapse remedy); -1: no cap.")
    partial_channels: int = option(1,
        help="PC-DARTS' K: only 1/K of each supernet edge's channels go through its candidate ops (the rest bypass "
             "them and a channel shuffle mixes the two); cuts the supernet's activation memory and compute. Must "
             "divide --supernet_channels. 1: off (every channel through every op).")

    def __post_init__(self):
        """Range rules of every field (`ConfigError` naming it), checked before anything is built."""
        from capnas_tf.search_space.ops import OPS
        from capnas_tf.search_space.relaxations import RELAXATIONS

        check = _Checker(self)
        check.at_least(1, "channels", "num_cells", "num_nodes", "stem_multiplier")
        primitives = self.primitives
        check.require("primitives", not isinstance(primitives, str) and len(tuple(primitives)) > 0
                      and len(set(primitives)) == len(tuple(primitives)),
                      "a non-empty sequence of distinct op names")
        unknown = [p for p in primitives if p not in OPS]
        check.require("primitives", not unknown, f"names of registered ops {sorted(OPS)}, not {unknown}")
        check.one_of("relaxation", RELAXATIONS)
        check.require("max_skip_connect", self.max_skip_connect is None
                      or (_number(self.max_skip_connect) and self.max_skip_connect >= 0), "None (no cap) or >= 0")
        # Every edge splits its C·2^r channels into K groups (search_space/mixed_op.py).
        check.require("partial_channels", _number(self.partial_channels) and self.partial_channels >= 1
                      and self.channels % self.partial_channels == 0,
                      f">= 1 and a divisor of channels ({self.channels}) (1: off)", related=("channels",))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The three-stage search (and its baselines)."""

    strategy: str = option("three_stage", flag="search_strategy", choices=registered_strategies, registry=True,
        help="How the architecture is searched: three_stage (the method), darts (bilevel DARTS), gdas (hard "
             "Gumbel-softmax paths), random_ws (random search with weight sharing), reinforce (ENAS-style LSTM "
             "controller).")
    hypergradient: str = option("exact", choices=hypergradient_estimators,
        help="exact: nested GradientTapes through both unrolled steps; forward_over_reverse: the same gradient with "
             "each Hessian-vector product the JVP of a gradient (tf.autodiff.ForwardAccumulator around a "
             "GradientTape), no second-order tape; finite_difference: central differences for the Hessian-vector "
             "products (first-order memory, not exact with ReLU and max-pooling).")
    hypergradient_terms: str = option("full", choices=hypergradient_term_sets,
        help="three_stage: full: the exact gradient of the unrolled objective f(A) = L(W'; D_val); paper: the "
             "published two-term estimator (the paths through E' and F' only), which drops the direct Stage II "
             "term −η_w ∇²_{A,W} L_u · v of the teacher's own A (capnas_tf/search/hypergradient.py).")
    stage2: str = option("soft", choices=stage2_losses, registry=True,
        help="How the Stage II loss stays differentiable in E', F' (see capnas_tf/search/captioning.py).")
    darts_order: int = option(2, help="DARTS baseline: 1 (first order) or 2 (second order).")
    epochs: int = option(4, flag="search_epochs", help="Search epochs.")
    steps_per_epoch: int = option(0, help="Search steps per epoch; 0 = one pass over D_tr.")
    warmup_epochs: int = option(1, help="Epochs of weight training with A frozen.")
    # F and W attend over the encoder's grid (the retrain recipe's decoder): with the LSTM (Show and Tell),
    # F and W learn the caption templates but not the image within a search's budget, and A's hypergradient
    # has nothing about the image to follow (docs/recipe_variants.md).
    decoder: str = option("transformer", choices=registered_decoders, registry=True,
        help="Decoder F of the searched captioner.")
    student_encoder: str = option("conv", choices=registered_encoders, registry=True,
        help="Encoder of the Stage II student W.")
    student_decoder: str = option("transformer", choices=registered_decoders, registry=True,
        help="Decoder of the Stage II student W.")
    decoder_dropout: float | None = option(None,
        help="Dropout rate inside F and W (default: each decoder's own). Over several replicas each draws its own "
             "masks: 0 makes a distributed step equal the one-device step on the same global batch.")
    eta_e: float = option(0.1, help="η_e: step size of the virtual step E' = E − η_e ∇_E L_tr.")
    eta_f: float = option(0.1, help="η_f: step size of the virtual step F' = F − η_f ∇_F L_tr.")
    eta_w: float = option(0.1, help="η_w: step size of the virtual step W' = W − η_w ∇_W L(W, U, E', F').")
    weight_lr: float = option(2e-3, help="AdamW learning rate of E and F.")
    student_lr: float = option(2e-3, help="AdamW learning rate of W.")
    weight_decay: float = option(3e-4, help="Decoupled weight decay of E, F, W.")
    arch_lr: float = option(3e-3, help="η_a: Adam learning rate of A.")
    arch_weight_decay: float = option(1e-3, help="λ: weight decay of A (see --arch_weight_decay_mode).")
    arch_weight_decay_mode: str = option("coupled", choices=arch_weight_decay_modes,
        help="coupled: Adam on ∇A + λA, L2 added to A's gradient before Adam (DARTS: torch.optim.Adam's "
             "weight_decay); decoupled: AdamW, A ← A − η_a λ A beside the Adam step.")
    # Off by default, as in DARTS: Adam's step is already bounded by η_a.
    arch_grad_clip: float = option(0.0,
        help="Clip ∇A to this global norm before A's step, before λA is added (0: off, as in DARTS).")
    # β-DARTS (arXiv 2203.01665) against the drift of A to parameter-free operations: its Beta-Decay term keeps
    # the softmax-activated A from growing one-sided; its weight rises linearly, as in β-DARTS' DARTS-space runs
    # (0 → 25 over 50 epochs).
    arch_beta_decay: float = option(0.0,
        help="β-DARTS' Beta-Decay: λ_t · mean over the edges e of both cells of logsumexp(A_e) is added to A's "
             "objective (its gradient λ_t softmax(A_e) / #edges after any clipping, beside λA), λ_t rising "
             "linearly from 0 at A's first step to this value at its last (0: off; β-DARTS: 25). Needs "
             "--arch_weight_decay_mode=coupled.")
    grad_clip: float = option(5.0, help="Clip the weight gradients to this global norm (0: off).")
    # 0.1 rather than DARTS' 0.01: on the supernet's ReLU and max-pooling kinks the larger step is the closer to
    # `exact` of those measured (cosine 0.8 against 0.4–0.6; docs/performance.md, benchmarks/fd_accuracy.py).
    fd_epsilon: float = option(0.1, help="ε of the finite differences; the step is ε/‖v‖ (DARTS: 0.01).")
    reuse_unrolled_gradients: bool = option(False,
        help="three_stage and darts (order 2): take the weight steps with the gradients the unrolled step already "
             "computed (∇_{E,F} L_tr at the A before its update; for three_stage also ∇_W L against the virtual "
             "teacher E', F'), i.e. simultaneous instead of alternating updates. Saves a supernet forward and "
             "backward (and for three_stage a greedy decode and the student's step) per search step; changes the "
             "numerics slightly. BatchNorm statistics and dropout seeds advance with the passes whose gradients "
             "are reused (Stage I's for E, F; Stage II's for W). Off: the paper's alternation.")
    dtype_policy: str = option("float32", choices=dtype_policies,
        help="Keras dtype policy of the search's models (variables stay float32). mixed_bfloat16 halves activation "
             "memory and needs no loss scale; mixed_float16 (GPUs) scales every tape's loss by --loss_scale. Both "
             "need --hypergradient=exact for second-order searches.")
    loss_scale: float = option(0.0,
        help="S: every tape of the search differentiates S·L and divides by S (a power of two; 0: 1024 under "
             "mixed_float16, else 1). Lower it if a float16 search stops on an Inf gradient.")
    xla: bool = option(False,
        help="Compile the search step with XLA (often slower on CPU; measure). One replica only: refused over "
             "several (--strategy=mirrored on 2+ devices, multi_worker).")
    log_every: int = option(10, help="Log a progress line and TensorBoard scalars every N steps.")
    checkpoint_every: int = option(50, help="Checkpoint every N steps (and every epoch).")
    eval_images: int = option(100, flag="search_eval_images",
        help="After each search epoch, the genotype found so far (on the shared supernet weights) greedily "
             "captions this many validation images; BLEU-4 and CIDEr, and on capnas_shapes the content accuracy of "
             "the captions (val/content/*), go to the log and TensorBoard (val/*). 0: off. Needs Java, like every "
             "caption metric.")
    gdas_tau_max: float = option(10.0,
        help="gdas: Gumbel-softmax temperature τ at the first architecture step (decays linearly to "
             "--gdas_tau_min).")
    gdas_tau_min: float = option(0.1, help="gdas: temperature τ at the last architecture step.")
    one_op_per_edge: bool = option(True,
        help="gdas, random_ws, reinforce: each supernet edge computes only the operation of the sampled path "
             "(tf.switch_case on the sampled index), not all of them; GDAS' gradient of A then flows through the "
             "selected op's weight only (false: every op, weighted by the one-hot path, and GDAS' ∇A also "
             "through the unselected ops' outputs). Over several replicas every op still runs (BatchNorm's "
             "all-reduce cannot sit inside a switch; search_space/mixed_op.py).")
    random_ws_candidates: int = option(20,
        help="random_ws: N architectures drawn uniformly and ranked by validation caption loss on the shared "
             "weights.")
    random_ws_rank_batches: int = option(2,
        help="random_ws: the ranking scores every candidate on the D_val batches of the search's last R steps (N·R "
             "forward passes).")
    controller_units: int = option(64, help="reinforce: LSTM size of the controller.")
    controller_lr: float = option(3.5e-3, help="reinforce: Adam learning rate of the controller.")
    reinforce_entropy_weight: float = option(1e-4, help="reinforce: β, weight of the controller's entropy bonus.")
    reinforce_baseline_decay: float = option(0.95,
        help="reinforce: δ of the moving-average reward baseline b ← δ·b + (1 − δ)·R.")
    supernet: SupernetConfig = dataclasses.field(default_factory=SupernetConfig)

    def __post_init__(self):
        """Range rules of every field (`ConfigError` naming it), checked before any data is read or
        graph traced. Where 0 is allowed it means: steps_per_epoch one pass over D_tr, warmup_epochs no
        warm-up, grad_clip and arch_grad_clip no clipping, weight decays none, checkpoint_every checkpoints
        at the ends of epochs only, eval_images no validation captions, loss_scale the dtype policy's
        default, reinforce_entropy_weight no entropy bonus, reinforce_baseline_decay a baseline of the last
        reward."""
        check = _Checker(self)
        check.one_of("strategy", registered_strategies())
        check.one_of("hypergradient", hypergradient_estimators())
        check.one_of("hypergradient_terms", hypergradient_term_sets())
        check.one_of("stage2", stage2_losses())
        check.one_of("darts_order", (1, 2))
        check.at_least(1, "epochs")
        check.at_least(0, "steps_per_epoch", note=" (0: one pass over D_tr)")
        check.require("warmup_epochs", _number(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
                      f">= 0 and < epochs ({self.epochs}), so that at least one epoch updates A",
                      related=("epochs",))
        check.one_of("decoder", registered_decoders())
        check.one_of("student_encoder", registered_encoders())
        check.one_of("student_decoder", registered_decoders())
        check.require("decoder_dropout", self.decoder_dropout is None
                      or (_number(self.decoder_dropout) and 0 <= self.decoder_dropout < 1),
                      "None (each decoder's default) or in [0, 1)")
        check.positive("eta_e", "eta_f", "eta_w", "weight_lr", "student_lr", "arch_lr", "fd_epsilon")
        check.at_least(0, "weight_decay", "arch_weight_decay")
        check.one_of("arch_weight_decay_mode", arch_weight_decay_modes())
        check.at_least(0, "grad_clip", "arch_grad_clip", note=" (0: no clipping)")
        check.at_least(0, "arch_beta_decay", note=" (0: off)")
        check.require("arch_beta_decay", not self.arch_beta_decay or self.arch_weight_decay_mode == "coupled",
                      "0 unless --arch_weight_decay_mode=coupled (A's Adam adds the Beta-Decay gradient)",
                      related=("arch_weight_decay_mode",))
        check.one_of("dtype_policy", dtype_policies())
        scale = self.loss_scale
        check.require("loss_scale", _number(scale) and (scale == 0 or (scale >= 1 and math.log2(scale).is_integer())),
                      "0 (the dtype policy's default) or a power of two >= 1, so that scaling is exact")
        check.at_least(1, "log_every")
        check.at_least(0, "checkpoint_every", note=" (0: only at the end of each epoch)")
        check.at_least(0, "eval_images", note=" (0: off)")
        check.positive("gdas_tau_min")
        check.require("gdas_tau_max", _number(self.gdas_tau_max) and self.gdas_tau_max >= self.gdas_tau_min,
                      f">= gdas_tau_min ({self.gdas_tau_min})", related=("gdas_tau_min",))
        check.at_least(1, "random_ws_candidates", "random_ws_rank_batches", "controller_units")
        if self.strategy == "random_ws" and self.steps_per_epoch:  # else the search checks it once it knows
            search_steps = (self.epochs - self.warmup_epochs) * self.steps_per_epoch
            check.require("random_ws_rank_batches", self.random_ws_rank_batches <= search_steps,
                          f"<= the {search_steps} search steps after the warm-up ((epochs - warmup_epochs) "
                          "× steps_per_epoch)", related=("epochs", "warmup_epochs", "steps_per_epoch"))
        check.positive("controller_lr")
        check.at_least(0, "reinforce_entropy_weight")
        check.require("reinforce_baseline_decay",
                      _number(self.reinforce_baseline_decay) and 0 <= self.reinforce_baseline_decay < 1, "in [0, 1)")
        check.require("supernet", isinstance(self.supernet, SupernetConfig), "a SupernetConfig")


BASELINES = ("frequent_caption", "none")  # RetrainConfig.baseline


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining the captioner of a genotype from scratch, its evaluation and its export.

    The defaults are the recipe measured in docs/captioner_recipe.md: CAPNAS_SHAPES_V1 at C = 16 with the
    cross-attention transformer decoder (no dropout), 3,600 steps (2 epochs × 1,800) of 32 images with 4
    captions each (its cost on a 2-core CPU is in that document).

    Args:
      encoder: "darts" (default): the `DiscreteEncoder` of `genotype`; any other name of
        `capnas_tf.encoders.ENCODERS` ("conv", "gap", …) with its default sizes, ignoring `genotype`,
        `channels` and `num_cells` — fixed baselines trained by exactly the same recipe.
      genotype: a name of `KNOWN_GENOTYPES` ("CAPNAS_SHAPES_V1", "DARTS_V2") or a genotype.json path (e.g.
        the search's).
      channels, num_cells: C and the number of cells of the `DiscreteEncoder` (may exceed the supernet's).
      drop_path_prob: DARTS' drop-path probability, ramped linearly over the epochs (0: off; "darts" only).
      pool_batchnorm: a BatchNorm (with γ, β) after each pooling op of the `DiscreteEncoder`, so that a
        pooling op is the supernet's candidate (pooling, then DARTS' affine-free BN) up to BN's γ, β;
        False: pooling alone, as in DARTS' final network ("darts" only).
      decoder: a name of `capnas_tf.decoders.DECODERS` ("lstm", "transformer"), default sizes.
      epochs: training epochs; the validation scores are computed after each one.
      steps_per_epoch: steps per epoch; 0 = as many as make one pass over D_tr's captions.
      batch_size: training batch size (0: DataConfig.batch_size): images per step.
      decoder_dropout: dropout rate inside the decoder.
      count_heads: heads of the transformer decoder's counting attention over its memory
        (`decoders.transformer.CountingAttention`); 0: none; the LSTM decoder has none.
      captions_per_image: k; each step trains on k captions of each of its batch_size images, the encoder
        run once per image (`CaptionData.train_groups`); 1: batch_size (image, caption) pairs.
      lr, weight_decay, grad_clip: AdamW learning rate (cosine-decayed to 0), decoupled weight decay,
        global-norm gradient clipping (0: off).
      beam_width: K, the beam of the validation and test captions and of both exports (the SavedModel and the
        ONNX graph decode alike); 1: greedy decoding. Width 3 scores the same content as greedy decoding and
        a CIDEr above the references' leave-one-out level (docs/recipe_variants.md).
      max_eval_images: at most this many images of each evaluation split (0: all).
      final_metrics: scorer groups of the final test metrics (METEOR starts a JVM: ~15 s per call).
      baseline: the trivial baseline reported next to the model: "frequent_caption" (always the most
        frequent training caption) or "none".
      xla: compile the training step with XLA (often slower on the CPU: docs/performance.md, "XLA on the CPU").
      export_saved_model, export_onnx: write `<workdir>/export/saved_model/1/` and
        `<workdir>/export/captioner.onnx` from the best checkpoint.
      export_max_pixels: the SavedModel's `serving_default` refuses an image whose header declares more
        pixels (width × height) than this, before decoding it ("error: too large" in its `status`).
      log_every: steps between progress lines and TensorBoard scalars.
      blind_baseline: also retrain the image-blind baseline: the same decoder by the same recipe on the
        same captions, its image replaced by a constant (encoder "blind"), in `<workdir>/retrain/blind/`,
        reported in metrics.json as `blind_baseline`. Costs a second, decoder-only retrain.
      selection_metric: the validation score whose best epoch is kept (ties: the higher CIDEr).
        "auto": "content/entirely_correct" on datasets with scenes (capnas_shapes), else "CIDEr";
        or any other validation score: "CIDEr", "BLEU-1" … "BLEU-4", "content/<key>" (keys of
        `retrain.VALIDATION_CONTENT_KEYS`; datasets with scenes only), or "token_accuracy". Checked by
        `retrain_job` up front.
      scheduled_sampling: "off" (teacher forcing), or the schedule of ε_i, the probability that decoder input
        t ≥ 1 is the ground-truth token rather than the model's own (Bengio et al. 2015, arXiv:1506.03099;
        `decoders.scheduled_sampling`), i counting optimizer steps: "linear" ε_i = max(ε_min, 1 − i / d),
        "exponential" ε_i = k^i, "inverse_sigmoid" ε_i = k / (k + exp(i / k)).
      scheduled_sampling_decay_steps: d of "linear" (0: the whole retrain, epochs × steps_per_epoch).
      scheduled_sampling_min: ε_min of "linear", in [0, 1].
      scheduled_sampling_k: k of "exponential" (0 < k < 1) and "inverse_sigmoid" (k ≥ 1); required by them.
      scheduled_sampling_sample: draw the model's tokens from its softmax instead of taking the argmax.
      encoder_weights: path of a local weights file loaded into the encoder before training (nothing is
        downloaded): for the keras.applications encoders ("mobilenet_v3_small", "resnet50", …) the
        application's own weights without its top (e.g. ImageNet's `…_notop.h5`, or a `.weights.h5` saved
        from the application with include_top=False); for the others a `.weights.h5` saved by
        `encoder.save_weights` from an encoder of the same architecture (e.g. `captioner.encoder` of an
        earlier retrain's `captioner.keras`). "" : the encoder starts from its random initialisation.
      freeze_encoder_epochs: keep the encoder frozen (weights and BatchNorm statistics fixed) for this many
        epochs, then fine-tune it with the decoder (`encoders.FreezeThenUnfreeze`); needs `encoder_weights`.
    """

    encoder: str = option("darts", flag="retrain_encoder",
        help="Encoder of the retrained captioner: darts (the DiscreteEncoder of --genotype) or a fixed baseline of "
             "capnas_tf.encoders (conv, gap, …); --mode=retrain only.")
    genotype: str = option("CAPNAS_SHAPES_V1",
        help="Genotype to retrain: a known name (CAPNAS_SHAPES_V1, DARTS_V2, …) or a genotype.json path; "
             "--mode=pipeline uses the one its search derived.")
    channels: int = option(16, flag="retrain_channels", help="C: initial channels of the retrained DiscreteEncoder.")
    num_cells: int = option(3, flag="retrain_cells", help="Number of cells of the retrained DiscreteEncoder.")
    drop_path_prob: float = option(0.0, flag="retrain_drop_path_prob",
        help="Drop-path probability (linear ramp; 0: off).")
    pool_batchnorm: bool = option(True, flag="retrain_pool_batchnorm",
        help="A BatchNorm after each pooling op of the retrained DiscreteEncoder, as the supernet's pooling candidates "
             "have, so that the op retrained is the op searched; false: pooling alone (DARTS' final network).")
    decoder: str = option("transformer", flag="retrain_decoder",
        help="Decoder of the retrained captioner (lstm | transformer).")
    epochs: int = option(2, flag="retrain_epochs",
        help="Retraining epochs (validation scores after each, see --selection_metric).")
    # 2 × 1,800 steps of 32 images × 4 captions: 7.2 passes over capnas_shapes' 16,000 training images
    steps_per_epoch: int = option(1800, flag="retrain_steps_per_epoch", help="Retraining steps per epoch; 0 = one pass.")
    batch_size: int = option(0, flag="retrain_batch_size", help="Retraining batch size, in images; 0 = --batch_size.")
    decoder_dropout: float = option(0.0, flag="retrain_decoder_dropout",
        help="Dropout rate inside the retrained decoder. 0 learned counts and relations faster at the default "
             "budget than the decoders' own 0.1 (docs/recipe_variants.md).")
    count_heads: int = option(4, flag="retrain_count_heads",
        help="Counting-attention heads of the retrained transformer decoder (sigmoid-gated attention among the "
             "image's grid slots, so each slot knows how many others look like it); 0: none. Other decoders "
             "have none (docs/recipe_variants.md).")
    captions_per_image: int = option(4, flag="retrain_captions_per_image",
        help="k: each training step takes batch_size images with k of their captions each (the encoder runs once "
             "per image); 1: batch_size (image, caption) pairs.")
    lr: float = option(3e-3, flag="retrain_lr", help="AdamW peak learning rate of retraining (cosine decay to 0).")
    weight_decay: float = option(1e-4, flag="retrain_weight_decay", help="Decoupled weight decay of retraining.")
    grad_clip: float = option(5.0, flag="retrain_grad_clip",
        help="Global-norm gradient clipping of retraining (0: off).")
    beam_width: int = option(3, help="Caption decoding of validation, test and both exports: K > 1 = beam search "
                             "of width K, 1 = greedy.")
    max_eval_images: int = option(0, help="At most this many images per evaluation split (0: all).")
    final_metrics: tuple = option(("BLEU", "METEOR", "ROUGE-L", "CIDEr"), parse=tuple,
        help="Scorer groups of the final test metrics (BLEU, METEOR, ROUGE-L, CIDEr); METEOR costs ~15 s of JVM "
             "start-up per split.")
    baseline: str = option("frequent_caption", choices=lambda: BASELINES,
        help="Trivial baseline reported in metrics.json: always the most frequent training caption.")
    xla: bool = option(False, flag="retrain_xla", help="Compile the retraining step with XLA (measure on CPU first).")
    export_saved_model: bool = option(True, help="Write <workdir>/export/saved_model/1/ (TF Serving).")
    export_onnx: bool = option(True, help="Write <workdir>/export/captioner.onnx and vocab.txt.")
    export_max_pixels: int = option(4096 * 4096,
        help="The SavedModel refuses images whose header declares more pixels (width × height), before decoding "
             "them.")
    log_every: int = 50
    blind_baseline: bool = option(True,
        help="Also retrain the image-blind baseline: the same decoder, recipe and captions with the image replaced "
             "by a constant (encoder blind), in <workdir>/retrain/blind/, reported in metrics.json as "
             "blind_baseline; what a captioner scores without looking. Costs a second, decoder-only retrain.")
    selection_metric: str = option("auto",
        help="Validation score whose best epoch is kept (ties: higher CIDEr). auto: content/entirely_correct on "
             "datasets with scenes (capnas_shapes), else CIDEr; or CIDEr, BLEU-1..BLEU-4, token_accuracy, or "
             "content/KEY with KEY one of count, colour, shape, size, relation, entirely_correct, parsed (scenes "
             "only).")
    scheduled_sampling: str = option("off", choices=scheduled_sampling_schedules,
        help="Scheduled sampling (Bengio et al. 2015): decoder input t >= 1 is the ground truth with probability "
             "eps_i, else the model's own token; eps_i by step i: linear max(min, 1 - i/decay_steps), exponential "
             "k^i, inverse_sigmoid k/(k + exp(i/k)); off: teacher forcing.")
    scheduled_sampling_decay_steps: int = option(0,
        help="Steps of the linear schedule's decay from 1 to --scheduled_sampling_min (0: the whole retrain).")
    scheduled_sampling_min: float = option(0.0, help="Floor of the linear schedule's eps, in [0, 1].")
    scheduled_sampling_k: float = option(0.0,
        help="k of the exponential (0 < k < 1) and inverse_sigmoid (k >= 1) schedules; required by them.")
    scheduled_sampling_sample: bool = option(False,
        help="Draw the model's tokens from its softmax instead of taking the argmax.")
    encoder_weights: str = option("", flag="retrain_encoder_weights",
        help="Local weights file loaded into the encoder before training (never downloaded): for the "
             "keras.applications encoders the application's weights without top (e.g. ImageNet's *_notop.h5); "
             "for the others a .weights.h5 saved by encoder.save_weights from the same architecture.")
    freeze_encoder_epochs: int = option(0,
        help="Keep the encoder (weights and BatchNorm statistics) frozen for this many epochs, then fine-tune it; "
             "needs --retrain_encoder_weights.")

    def __post_init__(self):
        for name in ("channels", "num_cells", "epochs", "beam_width", "captions_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"RetrainConfig.{name} must be >= 1, received {getattr(self, name)!r}.")
        for name in ("steps_per_epoch", "batch_size", "max_eval_images", "grad_clip", "weight_decay", "count_heads"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetrainConfig.{name} must be >= 0, received {getattr(self, name)!r}.")
        if not (_number(self.decoder_dropout) and 0.0 <= self.decoder_dropout < 1.0):
            raise ValueError(f"RetrainConfig.decoder_dropout must be in [0, 1), received {self.decoder_dropout!r}.")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ValueError(f"RetrainConfig.drop_path_prob must be in [0, 1), received {self.drop_path_prob!r}.")
        if self.drop_path_prob > 0 and self.encoder != "darts":
            raise ValueError(f"RetrainConfig.drop_path_prob > 0 needs encoder='darts' (drop-path acts on DARTS "
                             f"cells), received encoder={self.encoder!r}, drop_path_prob={self.drop_path_prob!r}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"RetrainConfig.baseline must be 'frequent_caption' or 'none', "
                             f"received {self.baseline!r}.")
        if self.lr <= 0:
            raise ValueError(f"RetrainConfig.lr must be > 0, received {self.lr!r}.")
        if isinstance(self.export_max_pixels, bool) or not isinstance(self.export_max_pixels, int) \
                or self.export_max_pixels <= 0:
            raise ValueError(f"RetrainConfig.export_max_pixels must be an integer > 0, "
                             f"received {self.export_max_pixels!r}.")
        self._check_scheduled_sampling()
        self._check_encoder_weights()

    def _check_scheduled_sampling(self):
        check = _Checker(self)
        check.one_of("scheduled_sampling", scheduled_sampling_schedules())
        check.at_least(0, "scheduled_sampling_decay_steps", note=" (0: the whole retrain)")
        check.require("scheduled_sampling_min", _number(self.scheduled_sampling_min)
                      and 0 <= self.scheduled_sampling_min <= 1, "in [0, 1]")
        k, related = self.scheduled_sampling_k, ("scheduled_sampling",)
        if self.scheduled_sampling == "exponential":
            check.require("scheduled_sampling_k", _number(k) and 0 < k < 1,
                          "in (0, 1) for scheduled_sampling 'exponential' (ε_i = k^i)", related)
        elif self.scheduled_sampling == "inverse_sigmoid":
            check.require("scheduled_sampling_k", _number(k) and k >= 1,
                          ">= 1 for scheduled_sampling 'inverse_sigmoid' (ε_i = k / (k + exp(i / k)))", related)

    def _check_encoder_weights(self):
        check = _Checker(self)
        check.require("encoder_weights", isinstance(self.encoder_weights, str)
                      and (not self.encoder_weights or os.path.isfile(self.encoder_weights)),
                      "'' or the path of an existing local weights file")
        check.require("encoder_weights", not (self.encoder_weights and self.encoder == "blind"),
                      "'' with encoder 'blind', which has no weights", ("encoder",))
        n = self.freeze_encoder_epochs
        check.require("freeze_encoder_epochs", _number(n) and n == int(n) and 0 <= n <= self.epochs,
                      f">= 0 and <= epochs ({self.epochs})", ("epochs",))
        check.require("freeze_encoder_epochs", n == 0 or bool(self.encoder_weights),
                      "0 without encoder_weights (freezing a randomly initialised encoder is almost surely a "
                      "mistake)", ("encoder_weights",))
