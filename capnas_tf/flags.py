"""absl flags of `python -m capnas_tf.train`, and their translation into the typed configs.

Only entry points import this module; library code receives configs. The flags are defined in sections
(run, data, search, retrain, export; `HELP_SECTIONS`), which is how `--help` lists them
(`use_sectioned_help`); `--helpfull` adds the flags of every library.
"""
from __future__ import annotations

import re
import sys
from typing import Mapping, NamedTuple, Sequence

from absl import app, flags

from capnas_tf.config import ConfigError, DataConfig, RunConfig, SearchConfig, SupernetConfig

FLAGS = flags.FLAGS


class HelpSection(NamedTuple):
    heading: str
    flags: tuple[str, ...]


# name → the heading and flags of a section of this module, in the order they are defined.
HELP_SECTIONS: dict[str, HelpSection] = {}


def _end_section(name: str, heading: str) -> None:
    """Files the flags this module defined since the previous section under `name`."""
    filed = {flag for section in HELP_SECTIONS.values() for flag in section.flags}
    HELP_SECTIONS[name] = HelpSection(heading, tuple(
        f.name for f in FLAGS.get_flags_for_module(__name__) if f.name not in filed))


# -- run ---------------------------------------------------------------------------------------------
flags.DEFINE_enum("mode", "search", ["search", "retrain", "pipeline"],
                  "search: three-stage (or baseline) search → genotype.json; retrain: train the captioner "
                  "of --genotype from scratch, evaluate, export; pipeline: search, then retrain its genotype.")
flags.DEFINE_string("workdir", "runs/default", "Directory for every output of the run; re-running the same "
                    "command resumes from its last checkpoint.")
flags.DEFINE_integer("seed", 0, "Global random seed (data order, initialisation, relaxation samples).")
flags.DEFINE_bool("deterministic", False, "Enable TensorFlow's deterministic ops (reproducible, slower).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy; `mirrored` uses every visible GPU (or CPU).")
_end_section("run", "run (every --mode)")

# -- data --------------------------------------------------------------------------------------------
class _FractionsParser(flags.ListParser):
    """Comma-separated numbers ("0.8,0.1,0.1") → a list of floats; their range is DataConfig's to check."""

    def __init__(self):
        super().__init__()
        self.syntactic_help = "comma-separated numbers"

    def parse(self, argument):
        items = super().parse(argument)
        try:
            return [float(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(f"expected comma-separated numbers such as 0.8,0.1,0.1, received {argument!r}") from None


flags.DEFINE_enum("dataset", "capnas_shapes", ["capnas_shapes", "coco", "karpathy", "coco_captions_tfds"],
                  "Caption dataset: the bundled synthetic capnas_shapes, COCO-format annotations + images, "
                  "a Karpathy-split JSON + images, or TFDS coco_captions (downloads).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's own, ~/tensorflow_datasets).")
flags.DEFINE_string("annotations", None, "--dataset=coco: the COCO-format caption JSON of the training images "
                    "(validation and test are cut from it by --split_fractions unless --val_annotations / "
                    "--test_annotations give them); its images without captions are the unlabeled images U "
                    "(--unlabeled_source=auto). --dataset=karpathy: the Karpathy-split JSON (dataset_coco.json, "
                    "dataset_flickr8k.json, …), whose splits are used as they are.")
flags.DEFINE_string("val_annotations", None, "--dataset=coco: COCO-format caption JSON of the validation images "
                    "(images in --image_dir); default: a share of --annotations (--split_fractions).")
flags.DEFINE_string("test_annotations", None, "--dataset=coco: COCO-format caption JSON of the test images; "
                    "default: a share of --annotations (--split_fractions).")
flags.DEFINE_string("image_dir", None, "Folder of the images named by the annotation files (--dataset=coco | "
                    "karpathy); a file name may not be absolute or lead out of it.")
flags.DEFINE(_FractionsParser(), "split_fractions", None,
             "--dataset=coco: train,validation,test shares of the captioned images of --annotations, e.g. "
             "0.8,0.1,0.1: three numbers >= 0 that sum to 1, train > 0, and 0 for a split given by its own "
             "file (--val_annotations, --test_annotations). Each image goes to one split by a fixed hash of "
             "its id. Default: 0.1 to each split without its own file, the rest to train.",
             serializer=flags.CsvListSerializer(","))
flags.DEFINE_enum("unlabeled_source", "auto", ["auto", "train", "holdout", "folder"],
                  "Where the unlabeled images U of Stage II come from. auto: the dataset's own images without "
                  "captions (capnas_shapes' unlabeled split; the images of --annotations that have no caption), "
                  "else as train. train: the training images with their captions dropped. holdout: "
                  "--unlabeled_fraction of the training images, moved out of training, captions dropped. "
                  "folder: every image file under --unlabeled_dir (.jpg, .jpeg, .png, .gif, .bmp).")
flags.DEFINE_float("unlabeled_fraction", 0.2, "--unlabeled_source=holdout: the share of the training images "
                   "held out as U, in (0, 1), chosen by a fixed hash of the image id.")
flags.DEFINE_string("unlabeled_dir", None, "--unlabeled_source=folder: the folder of images without captions.")
flags.DEFINE_integer("image_size", 32, "Images are resized to image_size × image_size.")
flags.DEFINE_integer("max_caption_len", 16, "Caption length L in tokens, <start> and <end> included; "
                     "longer captions are truncated, shorter ones padded.")
flags.DEFINE_integer("min_word_count", 5, "Words seen fewer times in the training captions become <unk>.")
flags.DEFINE_integer("batch_size", 32, "Global batch size of every stream (split over replicas).")
flags.DEFINE_enum("on_bad_example", "error", ["error", "skip"],
                  "A bad example (a missing, corrupt or unsupported image; an image entry without an integer id "
                  "or whose file name leads out of --image_dir; an empty, non-text or invalid-Unicode caption): "
                  "stop with an error naming its file and entry, or skip it, log it and count it.")
flags.DEFINE_bool("validate_images", True, "Before training, decode every image once with the decoder training "
                  "uses, so that a bad image is named (or skipped) up front rather than failing inside tf.data.")
_end_section("data", "data (every --mode)")

# -- search ------------------------------------------------------------------------------------------
_S, _N = SearchConfig(), SupernetConfig()
flags.DEFINE_enum("search_strategy", _S.strategy, ["three_stage", "darts", "gdas", "random_ws", "reinforce"],
                  "How the architecture is searched: three_stage (the method), darts (bilevel DARTS), gdas "
                  "(hard Gumbel-softmax paths), random_ws (random search with weight sharing), reinforce "
                  "(ENAS-style LSTM controller).")
flags.DEFINE_enum("hypergradient", _S.hypergradient, ["exact", "finite_difference"],
                  "exact: nested GradientTapes through both unrolled steps; finite_difference: central "
                  "differences for the Hessian-vector products (first-order memory).")
flags.DEFINE_enum("hypergradient_terms", _S.hypergradient_terms, ["full", "paper"],
                  "three_stage: full: the exact gradient of the unrolled objective f(A) = L(W'; D_val); paper: "
                  "the published two-term estimator (the paths through E' and F' only), which drops the direct "
                  "Stage II term −η_w ∇²_{A,W} L_u · v of the teacher's own A (capnas_tf/search/hypergradient.py).")
flags.DEFINE_enum("stage2", _S.stage2, ["soft", "straight_through"],
                  "How the Stage II loss stays differentiable in E', F' (see capnas_tf/search/captioning.py).")
flags.DEFINE_integer("darts_order", _S.darts_order, "DARTS baseline: 1 (first order) or 2 (second order).")
flags.DEFINE_integer("search_epochs", _S.epochs, "Search epochs.")
flags.DEFINE_integer("steps_per_epoch", _S.steps_per_epoch, "Search steps per epoch; 0 = one pass over D_tr.")
flags.DEFINE_integer("warmup_epochs", _S.warmup_epochs, "Epochs of weight training with A frozen.")
flags.DEFINE_string("decoder", _S.decoder, "Decoder F of the searched captioner (lstm | transformer).")
flags.DEFINE_string("student_encoder", _S.student_encoder, "Encoder of the Stage II student W.")
flags.DEFINE_string("student_decoder", _S.student_decoder, "Decoder of the Stage II student W.")
flags.DEFINE_float("decoder_dropout", _S.decoder_dropout, "Dropout rate inside F and W (default: each decoder's "
                   "own). Over several replicas each draws its own masks: 0 makes a distributed step equal the "
                   "one-device step on the same global batch.")
flags.DEFINE_float("eta_e", _S.eta_e, "η_e: step size of the virtual step E' = E − η_e ∇_E L_tr.")
flags.DEFINE_float("eta_f", _S.eta_f, "η_f: step size of the virtual step F' = F − η_f ∇_F L_tr.")
flags.DEFINE_float("eta_w", _S.eta_w, "η_w: step size of the virtual step W' = W − η_w ∇_W L(W, U, E', F').")
flags.DEFINE_float("weight_lr", _S.weight_lr, "AdamW learning rate of E and F.")
flags.DEFINE_float("student_lr", _S.student_lr, "AdamW learning rate of W.")
flags.DEFINE_float("weight_decay", _S.weight_decay, "Decoupled weight decay of E, F, W.")
flags.DEFINE_float("arch_lr", _S.arch_lr, "η_a: Adam learning rate of A.")
flags.DEFINE_float("arch_weight_decay", _S.arch_weight_decay, "λ: weight decay of A (see --arch_weight_decay_mode).")
flags.DEFINE_enum("arch_weight_decay_mode", _S.arch_weight_decay_mode, ["coupled", "decoupled"],
                  "coupled: Adam on ∇A + λA, L2 added to A's gradient before Adam (DARTS: torch.optim.Adam's "
                  "weight_decay); decoupled: AdamW, A ← A − η_a λ A beside the Adam step.")
flags.DEFINE_float("arch_grad_clip", _S.arch_grad_clip, "Clip ∇A to this global norm before A's step, before λA "
                   "is added (0: off, as in DARTS).")
flags.DEFINE_float("grad_clip", _S.grad_clip, "Clip the weight gradients to this global norm (0: off).")
flags.DEFINE_float("fd_epsilon", _S.fd_epsilon, "ε of the finite differences; the step is ε/‖v‖.")
flags.DEFINE_bool(
    "reuse_unrolled_gradients", _S.reuse_unrolled_gradients,
    "three_stage and darts (order 2): take the weight steps with the gradients the unrolled step already "
    "computed (∇_{E,F} L_tr at the A before its update; for three_stage also ∇_W L against the virtual "
    "teacher E', F'), i.e. simultaneous instead of alternating updates. Saves a supernet forward and "
    "backward (and for three_stage a greedy decode and the student's step) per search step; changes the "
    "numerics slightly. BatchNorm statistics and dropout seeds advance with the passes whose gradients are "
    "reused (Stage I's for E, F; Stage II's for W). Off: the paper's alternation.")
flags.DEFINE_enum("dtype_policy", _S.dtype_policy, ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy of the search's models (variables stay float32). mixed_bfloat16 halves "
                  "activation memory and needs no loss scale; mixed_float16 (GPUs) scales every tape's loss "
                  "by --loss_scale. Both need --hypergradient=exact for second-order searches.")
flags.DEFINE_float("loss_scale", _S.loss_scale,
                   "S: every tape of the search differentiates S·L and divides by S (a power of two; 0: 1024 "
                   "under mixed_float16, else 1). Lower it if a float16 search stops on an Inf gradient.")
flags.DEFINE_bool("xla", _S.xla, "Compile the search step with XLA (often slower on CPU; measure). One replica "
                  "only: refused over several (--strategy=mirrored on 2+ devices, multi_worker).")
flags.DEFINE_integer("log_every", _S.log_every, "Log a progress line and TensorBoard scalars every N steps.")
flags.DEFINE_integer("checkpoint_every", _S.checkpoint_every, "Checkpoint every N steps (and every epoch).")
# On by default for runs from the command line; off in SearchConfig so that benchmarks and tests pay for it
# only when they ask.
flags.DEFINE_integer("search_eval_images", 100, "After each search epoch, the genotype found so far "
                     "(on the shared supernet weights) greedily captions this many validation images; BLEU-4 and "
                     "CIDEr, and on capnas_shapes the content accuracy of the captions (val/content/*), go to the "
                     "log and TensorBoard (val/*). 0: off. Needs Java, like every caption metric.")
flags.DEFINE_float("gdas_tau_max", _S.gdas_tau_max, "gdas: Gumbel-softmax temperature τ at the first "
                   "architecture step (decays linearly to --gdas_tau_min).")
flags.DEFINE_float("gdas_tau_min", _S.gdas_tau_min, "gdas: temperature τ at the last architecture step.")
flags.DEFINE_integer("random_ws_candidates", _S.random_ws_candidates, "random_ws: N architectures drawn "
                     "uniformly and ranked by validation caption loss on the shared weights.")
flags.DEFINE_integer("random_ws_rank_batches", _S.random_ws_rank_batches, "random_ws: the ranking scores every "
                     "candidate on the D_val batches of the search's last R steps (N·R forward passes).")
flags.DEFINE_integer("controller_units", _S.controller_units, "reinforce: LSTM size of the controller.")
flags.DEFINE_float("controller_lr", _S.controller_lr, "reinforce: Adam learning rate of the controller.")
flags.DEFINE_float("reinforce_entropy_weight", _S.reinforce_entropy_weight,
                   "reinforce: β, weight of the controller's entropy bonus.")
flags.DEFINE_float("reinforce_baseline_decay", _S.reinforce_baseline_decay,
                   "reinforce: δ of the moving-average reward baseline b ← δ·b + (1 − δ)·R.")
flags.DEFINE_integer("supernet_channels", _N.channels, "C: initial channels of the supernet.")
flags.DEFINE_integer(
    "partial_channels", _N.partial_channels,
    "PC-DARTS' K: only 1/K of each supernet edge's channels go through its candidate ops (the rest bypass "
    "them and a channel shuffle mixes the two); cuts the supernet's activation memory and compute. Must "
    "divide --supernet_channels. 1: off (every channel through every op).")
flags.DEFINE_integer("supernet_cells", _N.num_cells, "Number of supernet cells.")
flags.DEFINE_integer("supernet_nodes", _N.num_nodes, "Intermediate nodes per cell.")
flags.DEFINE_list("primitives", list(_N.primitives), "Candidate operations of every mixed edge (names "
                  "registered in capnas_tf.search_space.ops.OPS).")
flags.DEFINE_enum("relaxation", _N.relaxation, ["softmax"], "Relaxation of A into op weights for the "
                  "three_stage and darts strategies (DARTS' softmax); gdas, random_ws and reinforce sample "
                  "their own one-hot paths.")
flags.DEFINE_integer("max_skip_connect", _N.max_skip_connect,
                     "Cap on skip_connect ops in the derived normal cell (DARTS collapse remedy); -1: no cap.")
_end_section("search", "search (--mode=search | pipeline)")


# -- flags → configs ---------------------------------------------------------------------------------
# For each config built from flags: dataclass field → the flag that sets it, or (flag, conversion of the
# flag's value). The *_config_from_flags functions read these tables, and `describe_config_error` reads
# them backwards to name the flag behind a config error; one-to-one within each config.
SUPERNET_FLAGS = {
    "channels": "supernet_channels", "num_cells": "supernet_cells", "num_nodes": "supernet_nodes",
    "primitives": ("primitives", tuple), "relaxation": "relaxation", "partial_channels": "partial_channels",
    "max_skip_connect": ("max_skip_connect", lambda n: None if n < 0 else n),
}
SEARCH_FLAGS = {
    "strategy": "search_strategy", "hypergradient": "hypergradient", "hypergradient_terms": "hypergradient_terms",
    "stage2": "stage2",
    "darts_order": "darts_order", "epochs": "search_epochs", "steps_per_epoch": "steps_per_epoch",
    "warmup_epochs": "warmup_epochs", "decoder": "decoder", "student_encoder": "student_encoder",
    "student_decoder": "student_decoder", "decoder_dropout": "decoder_dropout",
    "eta_e": "eta_e", "eta_f": "eta_f", "eta_w": "eta_w",
    "weight_lr": "weight_lr", "student_lr": "student_lr", "weight_decay": "weight_decay", "arch_lr": "arch_lr",
    "arch_weight_decay": "arch_weight_decay", "arch_weight_decay_mode": "arch_weight_decay_mode",
    "arch_grad_clip": "arch_grad_clip", "grad_clip": "grad_clip", "fd_epsilon": "fd_epsilon",
    "reuse_unrolled_gradients": "reuse_unrolled_gradients", "dtype_policy": "dtype_policy",
    "loss_scale": "loss_scale", "xla": "xla", "log_every": "log_every", "checkpoint_every": "checkpoint_every",
    "eval_images": "search_eval_images", "gdas_tau_max": "gdas_tau_max", "gdas_tau_min": "gdas_tau_min",
    "random_ws_candidates": "random_ws_candidates", "random_ws_rank_batches": "random_ws_rank_batches",
    "controller_units": "controller_units", "controller_lr": "controller_lr",
    "reinforce_entropy_weight": "reinforce_entropy_weight", "reinforce_baseline_decay": "reinforce_baseline_decay",
}
DATA_FLAGS = {
    "dataset": "dataset", "data_dir": "data_dir", "annotations": "annotations", "image_dir": "image_dir",
    "val_annotations": "val_annotations", "test_annotations": "test_annotations",
    "split_fractions": ("split_fractions", lambda v: None if v is None else tuple(v)),
    "unlabeled_source": "unlabeled_source", "unlabeled_fraction": "unlabeled_fraction",
    "unlabeled_dir": "unlabeled_dir", "validate_images": "validate_images",
    "image_size": "image_size", "max_caption_len": "max_caption_len", "min_word_count": "min_word_count",
    "batch_size": "batch_size", "seed": "seed", "on_bad_example": "on_bad_example",
}


def _fields_from_flags(table: dict) -> dict:
    fields = {}
    for field, spec in table.items():
        flag, convert = (spec, None) if isinstance(spec, str) else spec
        value = FLAGS[flag].value
        fields[field] = convert(value) if convert else value
    return fields


def search_config_from_flags() -> SearchConfig:
    return SearchConfig(**_fields_from_flags(SEARCH_FLAGS),
                        supernet=SupernetConfig(**_fields_from_flags(SUPERNET_FLAGS)))


def data_config_from_flags():
    return DataConfig(**_fields_from_flags(DATA_FLAGS))


def run_config_from_flags():
    return RunConfig(workdir=FLAGS.workdir, seed=FLAGS.seed, deterministic=FLAGS.deterministic,
                     distribution=FLAGS.strategy)


# =====================================================================================================
# -- retrain (capnas_tf.retrain; --mode=retrain | pipeline) ------------------------------------------
# =====================================================================================================
from capnas_tf.config import RetrainConfig  # noqa: E402

_R = RetrainConfig()
flags.DEFINE_string("genotype", _R.genotype, "Genotype to retrain: a known name (DARTS_V2, …) or a genotype.json "
                    "path; --mode=pipeline uses the one its search derived.")
flags.DEFINE_string("retrain_encoder", _R.encoder, "Encoder of the retrained captioner: darts (the DiscreteEncoder of "
                    "--genotype) or a fixed baseline of capnas_tf.encoders (conv, gap, …); --mode=retrain only.")
flags.DEFINE_integer("retrain_channels", _R.channels, "C: initial channels of the retrained DiscreteEncoder.")
flags.DEFINE_integer("retrain_cells", _R.num_cells, "Number of cells of the retrained DiscreteEncoder.")
flags.DEFINE_float("retrain_drop_path_prob", _R.drop_path_prob, "Drop-path probability (linear ramp; 0: off).")
flags.DEFINE_string("retrain_decoder", _R.decoder, "Decoder of the retrained captioner (lstm | transformer).")
flags.DEFINE_integer("retrain_epochs", _R.epochs, "Retraining epochs (validation scores after each, see "
                     "--selection_metric).")
flags.DEFINE_integer("retrain_steps_per_epoch", _R.steps_per_epoch, "Retraining steps per epoch; 0 = one pass.")
flags.DEFINE_integer("retrain_batch_size", _R.batch_size, "Retraining batch size; 0 = --batch_size.")
flags.DEFINE_float("retrain_lr", _R.lr, "AdamW peak learning rate of retraining (cosine decay to 0).")
flags.DEFINE_float("retrain_weight_decay", _R.weight_decay, "Decoupled weight decay of retraining.")
flags.DEFINE_float("retrain_grad_clip", _R.grad_clip, "Global-norm gradient clipping of retraining (0: off).")
flags.DEFINE_integer("beam_width", _R.beam_width, "Caption decoding for evaluation: 1 = greedy, K > 1 = beam search.")
flags.DEFINE_integer("max_eval_images", _R.max_eval_images, "At most this many images per evaluation split (0: all).")
flags.DEFINE_list("final_metrics", list(_R.final_metrics), "Scorer groups of the final test metrics "
                  "(BLEU, METEOR, ROUGE-L, CIDEr); METEOR costs ~15 s of JVM start-up per split.")
flags.DEFINE_enum("baseline", _R.baseline, ["frequent_caption", "none"],
                  "Trivial baseline reported in metrics.json: always the most frequent training caption.")
flags.DEFINE_bool("retrain_xla", _R.xla, "Compile the retraining step with XLA (measure on CPU first).")
flags.DEFINE_bool("blind_baseline", _R.blind_baseline,
                  "Also retrain the image-blind baseline: the same decoder, recipe and captions with the image "
                  "replaced by a constant (encoder blind), in <workdir>/retrain/blind/, reported in metrics.json as "
                  "blind_baseline; what a captioner scores without looking. Costs a second, decoder-only retrain.")
flags.DEFINE_string("selection_metric", _R.selection_metric,
                    "Validation score whose best epoch is kept (ties: higher CIDEr). auto: content/entirely_correct "
                    "on datasets with scenes (capnas_shapes), else CIDEr; or CIDEr, BLEU-1..BLEU-4, or content/KEY "
                    "with KEY one of count, colour, shape, size, relation, entirely_correct, parsed (scenes only).")
_end_section("retrain", "retrain and evaluation (--mode=retrain | pipeline)")

# -- export (of the retrained captioner) -------------------------------------------------------------
flags.DEFINE_bool("export_saved_model", _R.export_saved_model, "Write <workdir>/export/saved_model/1/ (TF Serving).")
flags.DEFINE_bool("export_onnx", _R.export_onnx, "Write <workdir>/export/captioner.onnx and vocab.txt.")
flags.DEFINE_integer("export_max_pixels", _R.export_max_pixels,
                     "The SavedModel refuses images whose header declares more pixels (width × height), "
                     "before decoding them.")
_end_section("export", "export of the retrained captioner (--mode=retrain | pipeline)")


RETRAIN_FLAGS = {
    "encoder": "retrain_encoder", "genotype": "genotype", "channels": "retrain_channels",
    "num_cells": "retrain_cells", "drop_path_prob": "retrain_drop_path_prob", "decoder": "retrain_decoder",
    "epochs": "retrain_epochs", "steps_per_epoch": "retrain_steps_per_epoch", "batch_size": "retrain_batch_size",
    "lr": "retrain_lr", "weight_decay": "retrain_weight_decay", "grad_clip": "retrain_grad_clip",
    "beam_width": "beam_width", "max_eval_images": "max_eval_images", "final_metrics": ("final_metrics", tuple),
    "baseline": "baseline", "xla": "retrain_xla", "export_saved_model": "export_saved_model",
    "export_onnx": "export_onnx", "export_max_pixels": "export_max_pixels", "blind_baseline": "blind_baseline",
    "selection_metric": "selection_metric",
}


def retrain_config_from_flags() -> RetrainConfig:
    if FLAGS.mode == "pipeline" and FLAGS.retrain_encoder != "darts":
        raise ValueError(f"--retrain_encoder={FLAGS.retrain_encoder} cannot be used with --mode=pipeline, which "
                         "retrains the searched genotype (encoder darts); use --mode=retrain for a fixed encoder.")
    return RetrainConfig(**_fields_from_flags(RETRAIN_FLAGS))


# -- config errors on the command line ---------------------------------------------------------------
CONFIG_FLAGS = {"SearchConfig": SEARCH_FLAGS, "SupernetConfig": SUPERNET_FLAGS, "DataConfig": DATA_FLAGS,
                "RetrainConfig": RETRAIN_FLAGS}
# (config class name, field) → flag name: the tables above read backwards.
FLAG_OF_FIELD = {(config, field): spec if isinstance(spec, str) else spec[0]
                 for config, table in CONFIG_FLAGS.items() for field, spec in table.items()}
for _config, _table in CONFIG_FLAGS.items():  # one-to-one, or an error could name the wrong flag
    _flags = [spec if isinstance(spec, str) else spec[0] for spec in _table.values()]
    assert len(set(_flags)) == len(_flags), f"{_config}: a flag sets two fields"
del _config, _table, _flags

# "RetrainConfig.lr must be > 0, received -1.0." — the form of the errors that are not `ConfigError`s.
_FIELD_MESSAGE = re.compile(r"^(?P<config>\w+Config)\.(?P<field>\w+)\b\s*(?P<expected>.*?)"
                            r"(?:[,;]\s*received .*)?$", re.DOTALL)


def describe_config_error(error: ValueError) -> str:
    """`--flag=value: what was expected` for the error of a config built from flags (a `ConfigError`,
    or a ValueError whose message starts `SomeConfig.field …`); its message as it is otherwise."""
    if isinstance(error, ConfigError):
        config, field, expected = error.config, error.field, f"must be {error.expected}"
        for other in error.related:  # "< epochs (4)" → "< --search_epochs (4)"
            if (config, other) in FLAG_OF_FIELD:
                expected = re.sub(rf"\b{other}\b", f"--{FLAG_OF_FIELD[config, other]}", expected)
    else:
        match = _FIELD_MESSAGE.match(str(error))
        if not match:
            return str(error)
        config, field, expected = match["config"], match["field"], match["expected"].rstrip(".")
    flag = FLAG_OF_FIELD.get((config, field))
    if flag is None:  # a field no flag sets
        value = error.value if isinstance(error, ConfigError) else "?"
        return f"{config}.{field}={value!r}: {expected}"
    return f"{FLAGS[flag].serialize() or f'--{flag} (not set)'}: {expected}"


def configs_from_flags() -> dict:
    """Every config of `capnas_tf.jobs.run`, from the parsed flags; a ValueError (see
    `describe_config_error`) if any is out of range or the search's precision settings do not go
    together (`precision.check_precision`, which the search would only run after reading the data).
    Builds nothing and reads no data."""
    from capnas_tf.search.precision import check_precision

    configs = dict(run=run_config_from_flags(), data=data_config_from_flags(), search=search_config_from_flags(),
                   retrain=retrain_config_from_flags())
    check_precision(configs["search"])
    return configs


# -- --help ------------------------------------------------------------------------------------------
def sectioned_help(sections: Mapping[str, Sequence[str]]) -> str:
    """absl's listing of the flags of each section under its heading ({heading: flag names})."""
    parts = []
    for heading, names in sections.items():
        for name in names:  # key flags of a pseudo-module named like the heading: absl renders them
            FLAGS.register_key_flag_for_module(heading, FLAGS[name])
        parts.append(FLAGS.module_help(heading))
    return "\n".join(parts)


def use_sectioned_help(sections: Mapping[str, Sequence[str]] | None = None) -> None:
    """Makes `--help` (`-?`, `--helpshort`) print the entry point's docstring and `sectioned_help(sections)`
    (default: every `HELP_SECTIONS`) instead of absl's list of the main module's own flags. `--helpfull`
    still lists every flag of every module. Call before `app.run`."""
    if sections is None:
        sections = {section.heading: section.flags for section in HELP_SECTIONS.values()}

    def show_help():
        doc = sys.modules["__main__"].__doc__ or f"\nUSAGE: {sys.argv[0]} [flags]\n"
        sys.stdout.write(f"{doc}\nflags:\n{sectioned_help(sections)}\n\nTry --helpfull to get a list of all flags.\n")
        sys.exit(1)  # as absl's --help

    class SectionedHelpFlag(app.HelpFlag):
        def parse(self, argument):
            if self._parse(argument):
                show_help()

    class SectionedHelpshortFlag(SectionedHelpFlag):
        NAME, SHORT_NAME = "helpshort", None

    app.define_help_flags()  # absl's, so that app.run does not define them again
    for name in ("help", "?", "helpshort"):
        if name in FLAGS:
            delattr(FLAGS, name)
    for flag in (SectionedHelpFlag(), SectionedHelpshortFlag()):
        flags.DEFINE_flag(flag, module_name="absl.app")
