"""absl flags of `python -m capnas_tf.train`, and their translation into the typed configs.

Only entry points import this module; library code receives configs.
"""
from __future__ import annotations

from absl import flags

from capnas_tf.config import SearchConfig, SupernetConfig

FLAGS = flags.FLAGS

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

# -- data --------------------------------------------------------------------------------------------
flags.DEFINE_enum("dataset", "capnas_shapes", ["capnas_shapes", "coco", "karpathy", "coco_captions_tfds"],
                  "Caption dataset: the bundled synthetic capnas_shapes, COCO-format annotations + images, "
                  "a Karpathy-split JSON + images, or TFDS coco_captions (downloads).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's own, ~/tensorflow_datasets).")
flags.DEFINE_string("annotations", None, "COCO-format caption annotation JSON (--dataset=coco) or Karpathy "
                    "split JSON such as dataset_coco.json (--dataset=karpathy).")
flags.DEFINE_string("image_dir", None, "Folder of the images named by --annotations.")
flags.DEFINE_integer("image_size", 32, "Images are resized to image_size × image_size.")
flags.DEFINE_integer("max_caption_len", 16, "Caption length L in tokens, <start> and <end> included; "
                     "longer captions are truncated, shorter ones padded.")
flags.DEFINE_integer("min_word_count", 5, "Words seen fewer times in the training captions become <unk>.")
flags.DEFINE_integer("batch_size", 32, "Global batch size of every stream (split over replicas).")
flags.DEFINE_enum("on_bad_example", "error", ["error", "skip"],
                  "A corrupt image or empty caption: stop with an error naming it, or skip and count it.")

# -- search ------------------------------------------------------------------------------------------
_S, _N = SearchConfig(), SupernetConfig()
flags.DEFINE_enum("search_strategy", _S.strategy, ["three_stage", "darts", "gdas", "random_ws", "reinforce"],
                  "How the architecture is searched: three_stage (the method), darts (bilevel DARTS), gdas "
                  "(hard Gumbel-softmax paths), random_ws (random search with weight sharing), reinforce "
                  "(ENAS-style LSTM controller).")
flags.DEFINE_enum("hypergradient", _S.hypergradient, ["exact", "finite_difference"],
                  "exact: nested GradientTapes through both unrolled steps; finite_difference: central "
                  "differences for the Hessian-vector products (first-order memory).")
flags.DEFINE_enum("stage2", _S.stage2, ["soft", "straight_through"],
                  "How the Stage II loss stays differentiable in E', F' (see capnas_tf/search/captioning.py).")
flags.DEFINE_integer("darts_order", _S.darts_order, "DARTS baseline: 1 (first order) or 2 (second order).")
flags.DEFINE_integer("search_epochs", _S.epochs, "Search epochs.")
flags.DEFINE_integer("steps_per_epoch", _S.steps_per_epoch, "Search steps per epoch; 0 = one pass over D_tr.")
flags.DEFINE_integer("warmup_epochs", _S.warmup_epochs, "Epochs of weight training with A frozen.")
flags.DEFINE_string("decoder", _S.decoder, "Decoder F of the searched captioner (lstm | transformer).")
flags.DEFINE_string("student_encoder", _S.student_encoder, "Encoder of the Stage II student W.")
flags.DEFINE_string("student_decoder", _S.student_decoder, "Decoder of the Stage II student W.")
flags.DEFINE_float("eta_e", _S.eta_e, "η_e: step size of the virtual step E' = E − η_e ∇_E L_tr.")
flags.DEFINE_float("eta_f", _S.eta_f, "η_f: step size of the virtual step F' = F − η_f ∇_F L_tr.")
flags.DEFINE_float("eta_w", _S.eta_w, "η_w: step size of the virtual step W' = W − η_w ∇_W L(W, U, E', F').")
flags.DEFINE_float("weight_lr", _S.weight_lr, "AdamW learning rate of E and F.")
flags.DEFINE_float("student_lr", _S.student_lr, "AdamW learning rate of W.")
flags.DEFINE_float("weight_decay", _S.weight_decay, "Decoupled weight decay of E, F, W.")
flags.DEFINE_float("arch_lr", _S.arch_lr, "η_a: Adam learning rate of A.")
flags.DEFINE_float("arch_weight_decay", _S.arch_weight_decay, "Decoupled weight decay of A.")
flags.DEFINE_float("grad_clip", _S.grad_clip, "Clip the weight gradients to this global norm (0: off).")
flags.DEFINE_float("fd_epsilon", _S.fd_epsilon, "ε of the finite differences; the step is ε/‖v‖.")
flags.DEFINE_bool(
    "reuse_unrolled_gradients", _S.reuse_unrolled_gradients,
    "three_stage and darts (order 2): take the weight steps with the gradients the unrolled step already "
    "computed (∇_{E,F} L_tr at the A before its update; for three_stage also ∇_W L against the virtual "
    "teacher E', F'), i.e. simultaneous instead of alternating updates. Saves a supernet forward and "
    "backward (and for three_stage a greedy decode and the student's step) per search step; changes the "
    "numerics slightly. Off: the paper's alternation.")
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


def search_config_from_flags() -> SearchConfig:
    supernet = SupernetConfig(
        channels=FLAGS.supernet_channels, num_cells=FLAGS.supernet_cells, num_nodes=FLAGS.supernet_nodes,
        primitives=tuple(FLAGS.primitives), relaxation=FLAGS.relaxation, partial_channels=FLAGS.partial_channels,
        max_skip_connect=None if FLAGS.max_skip_connect < 0 else FLAGS.max_skip_connect)
    return SearchConfig(
        strategy=FLAGS.search_strategy, hypergradient=FLAGS.hypergradient, stage2=FLAGS.stage2,
        darts_order=FLAGS.darts_order, epochs=FLAGS.search_epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        warmup_epochs=FLAGS.warmup_epochs, decoder=FLAGS.decoder, student_encoder=FLAGS.student_encoder,
        student_decoder=FLAGS.student_decoder, eta_e=FLAGS.eta_e, eta_f=FLAGS.eta_f, eta_w=FLAGS.eta_w,
        weight_lr=FLAGS.weight_lr, student_lr=FLAGS.student_lr, weight_decay=FLAGS.weight_decay,
        arch_lr=FLAGS.arch_lr, arch_weight_decay=FLAGS.arch_weight_decay, grad_clip=FLAGS.grad_clip,
        fd_epsilon=FLAGS.fd_epsilon, reuse_unrolled_gradients=FLAGS.reuse_unrolled_gradients,
        dtype_policy=FLAGS.dtype_policy, loss_scale=FLAGS.loss_scale, xla=FLAGS.xla, log_every=FLAGS.log_every,
        checkpoint_every=FLAGS.checkpoint_every, eval_images=FLAGS.search_eval_images, gdas_tau_max=FLAGS.gdas_tau_max, gdas_tau_min=FLAGS.gdas_tau_min,
        random_ws_candidates=FLAGS.random_ws_candidates, random_ws_rank_batches=FLAGS.random_ws_rank_batches,
        controller_units=FLAGS.controller_units, controller_lr=FLAGS.controller_lr,
        reinforce_entropy_weight=FLAGS.reinforce_entropy_weight,
        reinforce_baseline_decay=FLAGS.reinforce_baseline_decay, supernet=supernet)


def data_config_from_flags():
    from capnas_tf.data.pipeline import DataConfig

    return DataConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, annotations=FLAGS.annotations,
                      image_dir=FLAGS.image_dir, image_size=FLAGS.image_size,
                      max_caption_len=FLAGS.max_caption_len, min_word_count=FLAGS.min_word_count,
                      batch_size=FLAGS.batch_size, seed=FLAGS.seed, on_bad_example=FLAGS.on_bad_example)


def run_config_from_flags():
    from capnas_tf.jobs import RunConfig

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
flags.DEFINE_bool("export_saved_model", _R.export_saved_model, "Write <workdir>/export/saved_model/1/ (TF Serving).")
flags.DEFINE_bool("export_onnx", _R.export_onnx, "Write <workdir>/export/captioner.onnx and vocab.txt.")
flags.DEFINE_bool("blind_baseline", _R.blind_baseline,
                  "Also retrain the image-blind baseline: the same decoder, recipe and captions with the image "
                  "replaced by a constant (encoder blind), in <workdir>/retrain/blind/, reported in metrics.json as "
                  "blind_baseline; what a captioner scores without looking. Costs a second, decoder-only retrain.")
flags.DEFINE_string("selection_metric", _R.selection_metric,
                    "Validation score whose best epoch is kept (ties: higher CIDEr). auto: content/entirely_correct "
                    "on datasets with scenes (capnas_shapes), else CIDEr; or CIDEr, BLEU-1..BLEU-4, or content/KEY "
                    "with KEY one of count, colour, shape, size, relation, entirely_correct, parsed (scenes only).")


def retrain_config_from_flags() -> RetrainConfig:
    if FLAGS.mode == "pipeline" and FLAGS.retrain_encoder != "darts":
        raise ValueError(f"--retrain_encoder={FLAGS.retrain_encoder} cannot be used with --mode=pipeline, which "
                         "retrains the searched genotype (encoder darts); use --mode=retrain for a fixed encoder.")
    return RetrainConfig(
        encoder=FLAGS.retrain_encoder, genotype=FLAGS.genotype, channels=FLAGS.retrain_channels,
        num_cells=FLAGS.retrain_cells,
        drop_path_prob=FLAGS.retrain_drop_path_prob, decoder=FLAGS.retrain_decoder, epochs=FLAGS.retrain_epochs,
        steps_per_epoch=FLAGS.retrain_steps_per_epoch, batch_size=FLAGS.retrain_batch_size, lr=FLAGS.retrain_lr,
        weight_decay=FLAGS.retrain_weight_decay, grad_clip=FLAGS.retrain_grad_clip, beam_width=FLAGS.beam_width,
        max_eval_images=FLAGS.max_eval_images, final_metrics=tuple(FLAGS.final_metrics), baseline=FLAGS.baseline,
        xla=FLAGS.retrain_xla, export_saved_model=FLAGS.export_saved_model, export_onnx=FLAGS.export_onnx,
        blind_baseline=FLAGS.blind_baseline, selection_metric=FLAGS.selection_metric)
