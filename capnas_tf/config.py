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
from typing import ClassVar

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


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it runs.

    Args:
      workdir: the folder of every output of the run (resumed from its last checkpoint).
      seed: the global seed (initialisation, relaxation samples; the data order has `DataConfig.seed`).
      deterministic: TensorFlow's deterministic ops.
      distribution: the tf.distribute strategy (`distribute.get_distribution_strategy`).
    """

    workdir: str
    seed: int = 0
    deterministic: bool = False
    distribution: str = "default"


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

    dataset: str = "capnas_shapes"
    data_dir: str | None = None
    annotations: str | None = None
    val_annotations: str | None = None
    test_annotations: str | None = None
    image_dir: str | None = None
    split_fractions: tuple[float, float, float] | None = None
    image_size: int = 32
    max_caption_len: int = 16
    min_word_count: int = 5
    batch_size: int = 32
    seed: int = 0
    deterministic: bool = True
    shuffle_buffer: int = 4096
    cache: str = "memory"
    on_bad_example: str = "error"
    validate_images: bool = True
    unlabeled_source: str = "auto"
    unlabeled_fraction: float = 0.2
    unlabeled_dir: str | None = None
    download: bool = False
    shapes: ShapesConfig = dataclasses.field(default_factory=ShapesConfig)

    def __post_init__(self):
        from capnas_tf.data.captions_io import ON_BAD_EXAMPLE
        from capnas_tf.data.pipeline import DATASET_SOURCES

        def fail(field: str, expected: str, related: tuple = ()):
            raise ConfigError("DataConfig", field, getattr(self, field), expected, related)

        if self.dataset not in DATASET_SOURCES:
            fail("dataset", f"one of {sorted(DATASET_SOURCES)}")
        for name, minimum in (("image_size", 1), ("max_caption_len", 2), ("batch_size", 1), ("min_word_count", 1)):
            if not _integer(getattr(self, name)) or getattr(self, name) < minimum:
                fail(name, f">= {minimum}")
        if self.on_bad_example not in ON_BAD_EXAMPLE:
            fail("on_bad_example", f"one of {list(ON_BAD_EXAMPLE)}")
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

    channels: int = 8
    num_cells: int = 5
    num_nodes: int = 4
    stem_multiplier: int = 3
    primitives: tuple = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3",
                         "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # the DARTS candidate set
    relaxation: str = "softmax"
    max_skip_connect: int | None = 2  # cap on skip_connect in the derived normal cell (DARTS collapse)
    partial_channels: int = 1  # PC-DARTS' K: 1/K of each edge's channels through its candidates (1: off)

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

    strategy: str = "three_stage"
    hypergradient: str = "exact"  # exact | finite_difference
    # full: the exact gradient of the unrolled objective; paper: the published E', F' terms only
    # (capnas_tf/search/hypergradient.py)
    hypergradient_terms: str = "full"
    stage2: str = "soft"  # soft | straight_through
    darts_order: int = 2
    epochs: int = 4
    steps_per_epoch: int = 0  # 0: one pass over D_tr
    warmup_epochs: int = 1
    # F and W attend over the encoder's grid (the retrain recipe's decoder): with the LSTM (Show and Tell),
    # F and W learn the caption templates but not the image within a search's budget, and A's hypergradient
    # has nothing about the image to follow (docs/recipe_variants.md).
    decoder: str = "transformer"
    student_encoder: str = "conv"
    student_decoder: str = "transformer"
    # Dropout inside F and W (None: each decoder's default). Over several replicas each replica draws its own
    # masks, so a step equals the one-device step on the same global batch only without dropout (0).
    decoder_dropout: float | None = None
    eta_e: float = 0.1  # η_e, η_f, η_w: virtual step sizes of the unrolled steps
    eta_f: float = 0.1
    eta_w: float = 0.1
    weight_lr: float = 2e-3
    student_lr: float = 2e-3
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3  # η_a
    arch_weight_decay: float = 1e-3  # λ
    # coupled: Adam on ∇A + λA (DARTS: torch.optim.Adam's weight_decay); decoupled: AdamW's A ← A − η_a λ A
    arch_weight_decay_mode: str = "coupled"
    # global-norm clip of ∇A before its step (0: off, as in DARTS; Adam's step is already bounded by η_a)
    arch_grad_clip: float = 0.0
    grad_clip: float = 5.0
    fd_epsilon: float = 0.01
    # Weight steps reuse the unrolled step's gradients (three_stage; darts order 2): see the flag's help.
    reuse_unrolled_gradients: bool = False
    # Keras dtype policy of the search's models and the tapes' loss scale S (0: the policy's default;
    # search/precision.py).
    dtype_policy: str = "float32"
    loss_scale: float = 0.0
    xla: bool = False
    log_every: int = 10
    checkpoint_every: int = 50
    # validation images captioned by the genotype after each epoch (0: off; the CLI's default is 100)
    eval_images: int = 0
    # gdas: Gumbel temperature τ, linear from τ_max to τ_min over the architecture steps (GDAS: 10 → 0.1)
    gdas_tau_max: float = 10.0
    gdas_tau_min: float = 0.1
    # random_ws: N architectures ranked by validation loss on the shared weights, over the last R batches
    random_ws_candidates: int = 20
    random_ws_rank_batches: int = 2
    # reinforce: ENAS controller (LSTM size, Adam rate, entropy bonus β, baseline decay δ)
    controller_units: int = 64
    controller_lr: float = 3.5e-3
    reinforce_entropy_weight: float = 1e-4
    reinforce_baseline_decay: float = 0.95
    supernet: SupernetConfig = dataclasses.field(default_factory=SupernetConfig)

    def __post_init__(self):
        """Range rules of every field (`ConfigError` naming it), checked before any data is read or
        graph traced. Where 0 is allowed it means: steps_per_epoch one pass over D_tr, warmup_epochs no
        warm-up, grad_clip and arch_grad_clip no clipping, weight decays none, checkpoint_every checkpoints
        at the ends of epochs only, eval_images no validation captions, loss_scale the dtype policy's
        default, reinforce_entropy_weight no entropy bonus, reinforce_baseline_decay a baseline of the last
        reward."""
        from capnas_tf.decoders import DECODERS
        from capnas_tf.encoders import ENCODERS
        from capnas_tf.search.captioning import STAGE2_LOSSES
        from capnas_tf.search.hypergradient import HYPERGRADIENT_TERMS, HYPERGRADIENTS
        from capnas_tf.search.precision import POLICIES
        from capnas_tf.search.strategies import (  # (capnas_tf.search registers the baselines)
            ARCH_WEIGHT_DECAY_MODES,
            STRATEGIES,
        )

        check = _Checker(self)
        check.one_of("strategy", STRATEGIES)
        check.one_of("hypergradient", HYPERGRADIENTS)
        check.one_of("hypergradient_terms", HYPERGRADIENT_TERMS)
        check.one_of("stage2", STAGE2_LOSSES)
        check.one_of("darts_order", (1, 2))
        check.at_least(1, "epochs")
        check.at_least(0, "steps_per_epoch", note=" (0: one pass over D_tr)")
        check.require("warmup_epochs", _number(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
                      f">= 0 and < epochs ({self.epochs}), so that at least one epoch updates A",
                      related=("epochs",))
        check.one_of("decoder", DECODERS)
        check.one_of("student_encoder", ENCODERS)
        check.one_of("student_decoder", DECODERS)
        check.require("decoder_dropout", self.decoder_dropout is None
                      or (_number(self.decoder_dropout) and 0 <= self.decoder_dropout < 1),
                      "None (each decoder's default) or in [0, 1)")
        check.positive("eta_e", "eta_f", "eta_w", "weight_lr", "student_lr", "arch_lr", "fd_epsilon")
        check.at_least(0, "weight_decay", "arch_weight_decay")
        check.one_of("arch_weight_decay_mode", ARCH_WEIGHT_DECAY_MODES)
        check.at_least(0, "grad_clip", "arch_grad_clip", note=" (0: no clipping)")
        check.one_of("dtype_policy", POLICIES)
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


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Retraining the captioner of a genotype from scratch, its evaluation and its export.

    The defaults are the recipe measured in docs/captioner_recipe.md: DARTS_V2 at C = 16 with the
    cross-attention transformer decoder, 4,500 steps of 32; on capnas_shapes (32×32, L = 16) the model
    and its image-blind baseline retrain in about 12 minutes on a 2-core CPU.

    Args:
      encoder: "darts" (default): the `DiscreteEncoder` of `genotype`; any other name of
        `capnas_tf.encoders.ENCODERS` ("conv", "gap", …) with its default sizes, ignoring `genotype`,
        `channels` and `num_cells` — fixed baselines trained by exactly the same recipe.
      genotype: a name of `KNOWN_GENOTYPES` ("DARTS_V2") or a genotype.json path (e.g. the search's).
      channels, num_cells: C and the number of cells of the `DiscreteEncoder` (may exceed the supernet's).
      drop_path_prob: DARTS' drop-path probability, ramped linearly over the epochs (0: off; "darts" only).
      decoder: a name of `capnas_tf.decoders.DECODERS` ("lstm", "transformer"), default sizes.
      epochs: training epochs; the validation scores are computed after each one.
      steps_per_epoch: steps per epoch; 0 = one pass over D_tr.
      batch_size: training batch size (0: DataConfig.batch_size).
      lr, weight_decay, grad_clip: AdamW learning rate (cosine-decayed to 0), decoupled weight decay,
        global-norm gradient clipping (0: off).
      beam_width: 1 = greedy decoding for validation and test captions; > 1 beam search.
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
        `retrain.VALIDATION_CONTENT_KEYS`; datasets with scenes only). Checked by `retrain_job` up front.
    """

    encoder: str = "darts"
    genotype: str = "DARTS_V2"
    channels: int = 16
    num_cells: int = 3
    drop_path_prob: float = 0.0
    decoder: str = "transformer"
    epochs: int = 6
    steps_per_epoch: int = 750  # 6 × 750 steps of 32: ~14 passes over capnas_shapes' 10,000 captions
    batch_size: int = 0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    beam_width: int = 1
    max_eval_images: int = 0
    final_metrics: tuple = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
    baseline: str = "frequent_caption"
    xla: bool = False
    export_saved_model: bool = True
    export_onnx: bool = True
    export_max_pixels: int = 4096 * 4096
    log_every: int = 50
    blind_baseline: bool = True
    selection_metric: str = "auto"

    def __post_init__(self):
        for name in ("channels", "num_cells", "epochs", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"RetrainConfig.{name} must be >= 1, received {getattr(self, name)!r}.")
        for name in ("steps_per_epoch", "batch_size", "max_eval_images", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetrainConfig.{name} must be >= 0, received {getattr(self, name)!r}.")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ValueError(f"RetrainConfig.drop_path_prob must be in [0, 1), received {self.drop_path_prob!r}.")
        if self.drop_path_prob > 0 and self.encoder != "darts":
            raise ValueError(f"RetrainConfig.drop_path_prob > 0 needs encoder='darts' (drop-path acts on DARTS "
                             f"cells), received encoder={self.encoder!r}, drop_path_prob={self.drop_path_prob!r}.")
        if self.baseline not in ("frequent_caption", "none"):
            raise ValueError(f"RetrainConfig.baseline must be 'frequent_caption' or 'none', received {self.baseline!r}.")
        if self.lr <= 0:
            raise ValueError(f"RetrainConfig.lr must be > 0, received {self.lr!r}.")
        if isinstance(self.export_max_pixels, bool) or not isinstance(self.export_max_pixels, int) \
                or self.export_max_pixels <= 0:
            raise ValueError(f"RetrainConfig.export_max_pixels must be an integer > 0, "
                             f"received {self.export_max_pixels!r}.")
