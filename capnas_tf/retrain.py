"""Retraining: the captioner of a genotype trained from scratch, evaluated, and exported.

    result = retrain_job(RunConfig(workdir="runs/q"), RetrainConfig(genotype="DARTS_V2"), data)

Writes under `<workdir>/retrain/`: `checkpoints/` (latest, for resuming) and `best/` (the epoch of the
best validation score, `RetrainConfig.selection_metric`, recorded in `selection.json`: a resume
under another one is refused), `tensorboard/`, `history.json`,
`captioner.keras` (the best model), `metrics.json` and `samples.png`; and, per the export flags,
`<workdir>/export/saved_model/1/` and `<workdir>/export/captioner.onnx` + `vocab.txt`. With
`RetrainConfig.blind_baseline` the image-blind baseline (the same decoder and recipe, the image
replaced by a constant) is trained by the same loop in `<workdir>/retrain/blind/` (its own
checkpoints, history, TensorBoard and `captioner.keras`; no exports). Re-running the same call
resumes both after their last finished epoch.

Validation after each epoch: beam-search (or greedy) captions of the validation images, scored by BLEU and
CIDEr and, on datasets with scenes, by content accuracy (`data.shapes_content`: did the caption name
the right counts, colours, shapes, sizes and relation); and the teacher-forced next-token accuracy of
the validation captions (`metrics.TokenAccuracy`). metrics.json: per test split the COCO scores,
`content` and `diversity` of the model, the most-frequent-caption `baseline` and the `blind_baseline`,
and the `reference_level` (each human reference scored against the others).

Options of the training (`RetrainConfig`): scheduled sampling (`ScheduledSampling`: decoder inputs
mixed with the model's own tokens, by a schedule over the steps); an encoder that starts from a local
weights file (`encoders.load_encoder_weights`) and stays frozen for the first epochs
(`encoders.FreezeThenUnfreeze`).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable

import keras
import tensorflow as tf

from capnas_tf import evaluation, io_utils
from capnas_tf.captioner import Captioner
from capnas_tf.checkpointing import CheckpointKeeper, FiniteCheck, model_state, named_variables, what_is_kept
from capnas_tf.config import RetrainConfig
from capnas_tf.data.text import PAD_ID, normalize_caption
from capnas_tf.decoders import get_decoder
from capnas_tf.decoders.losses import caption_loss
from capnas_tf.decoders.scheduled_sampling import scheduled_sampling_inputs, teacher_forcing_probability
from capnas_tf.distribute import (check_global_batch, check_jit_compile, check_workers_agree, configure_runtime,
                                  distribute_dataset, get_distribution_strategy)
from capnas_tf.encoders import ENCODERS, FreezeThenUnfreeze, load_encoder_weights
from capnas_tf.metrics import TokenAccuracy
from capnas_tf.search_space.genotypes import resolve_genotype


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    """What a retrain produced: the best model, its scores and the files written."""

    captioner: Captioner
    best_epoch: int
    best_validation_score: float  # of `selection_metric` at `best_epoch`
    selection_metric: str  # the resolved name ("auto" resolved), e.g. "content/entirely_correct"
    metrics: dict
    metrics_path: str
    samples_path: str
    exports: dict


def build_encoder(config: RetrainConfig) -> keras.layers.Layer:
    """`DiscreteEncoder(genotype)` for encoder="darts", else the named fixed encoder at its default sizes."""
    if config.encoder not in ENCODERS:
        raise ValueError(f"RetrainConfig.encoder must be a name of capnas_tf.encoders.ENCODERS "
                         f"{sorted(ENCODERS)}, received {config.encoder!r}.")
    factory = ENCODERS[config.encoder]  # not get_encoder(name, …): its first argument is called `name` too
    if config.encoder == "darts":
        return factory(genotype=resolve_genotype(config.genotype), channels=config.channels,
                       num_cells=config.num_cells, drop_path_prob=config.drop_path_prob,
                       pool_batchnorm=config.pool_batchnorm, name="encoder")
    return factory(name="encoder")


ENCODER_WEIGHTS_SETTING = "RetrainConfig.encoder_weights (--retrain_encoder_weights)"


def decoder_options(config: RetrainConfig) -> dict:
    """The keyword arguments the recipe gives its decoder beyond the decoder's defaults."""
    counting = {"count_heads": config.count_heads} if config.decoder == "transformer" else {}
    return {"dropout": config.decoder_dropout, **counting}


def build_captioner(config: RetrainConfig, *, vocab_size: int, max_caption_len: int, image_size: int,
                    encoder: keras.layers.Layer | None = None) -> Captioner:
    """Encoder (`build_encoder`, or `encoder`) + decoder, built; the encoder's weights loaded from
    `config.encoder_weights` if set. The decoder reads prefixes of L − 1 tokens.

    Raises:
      encoders.EncoderWeightsError: naming the setting and the file, if `config.encoder_weights` is no
        file or does not fit the encoder (`encoders.load_encoder_weights`).
    """
    encoder = encoder if encoder is not None else build_encoder(config)
    decoder = get_decoder(config.decoder, vocab_size=vocab_size, max_len=max_caption_len - 1,
                          **decoder_options(config))
    captioner = Captioner(encoder, decoder, name="captioner")
    captioner(tf.zeros([1, image_size, image_size, 3]), tf.ones([1, max_caption_len - 1], tf.int32))
    if config.encoder_weights:
        load_encoder_weights(captioner.encoder, config.encoder_weights, where=ENCODER_WEIGHTS_SETTING)
    return captioner


def build_optimizer(config: RetrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW with a cosine decay of the learning rate to 0 over `total_steps`."""
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total_steps))
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                  global_clipnorm=config.grad_clip or None)


@dataclasses.dataclass(frozen=True)
class ScheduledSampling:
    """Scheduled sampling in the retrain's step (`decoders.scheduled_sampling`): at optimizer step i each
    decoder input t ≥ 1 is the ground truth with probability ε_i, else the model's own token.

    Attributes:
      teacher_forcing_probability: i ↦ ε_i (a float32 scalar tensor).
      sample: draw the model's tokens from its softmax rather than taking the argmax.
      seed: the run's seed; step i on replica r draws with fold_in(fold_in([seed, 0], i), r), so a resumed
        run draws what an uninterrupted one would, and replicas draw apart.
    """

    teacher_forcing_probability: Callable
    sample: bool = False
    seed: int = 0

    def step_seed(self, step) -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        fold_in = tf.random.experimental.stateless_fold_in
        return fold_in(fold_in(tf.constant([self.seed, 0], tf.int64), step), replica)

    def decoder_inputs(self, decoder, features, prefix, *, step, captions_per_image: int = 1) -> tf.Tensor:
        """The decoder input `[B·k, T]` of step i for the ground-truth `prefix` (`scheduled_sampling_inputs`)."""
        return scheduled_sampling_inputs(decoder, features, prefix,
                                         teacher_forcing_prob=self.teacher_forcing_probability(step),
                                         seed=self.step_seed(step), sample=self.sample, pad_id=PAD_ID,
                                         captions_per_image=captions_per_image)


def scheduled_sampling_of(config: RetrainConfig, *, total_steps: int, seed: int) -> ScheduledSampling | None:
    """`config.scheduled_sampling` as a `ScheduledSampling` (None when "off"); "linear" decays over
    `config.scheduled_sampling_decay_steps`, or over `total_steps` when that is 0."""
    if config.scheduled_sampling == "off":
        return None
    if config.scheduled_sampling == "linear":
        params = dict(decay_steps=config.scheduled_sampling_decay_steps or max(1, total_steps),
                      minimum=config.scheduled_sampling_min)
    else:
        params = dict(k=config.scheduled_sampling_k)
    schedule = functools.partial(teacher_forcing_probability, schedule=config.scheduled_sampling, **params)
    return ScheduledSampling(schedule, sample=config.scheduled_sampling_sample, seed=seed)


def training_logits(captioner: Captioner, images, tokens, *, step, scheduled_sampling: ScheduledSampling | None):
    """The logits `[N, T, V]` a training step fits, and the captions `[N, L]` they fit (T = L − 1).

    `tokens` is `[B, L]` (one caption per image, N = B) or `[B, k, L]` (k captions per image, N = B·k: the
    encoder, and what the decoder derives from the image alone, run once per image). The decoder is
    teacher-forced on each caption's prefix, or fed the decoder input of `scheduled_sampling` at `step`."""
    features = captioner.encoder(images, training=True)
    k = 1
    if tokens.shape.rank == 3:
        k = tokens.shape[1]
        tokens = tf.reshape(tokens, [-1, tokens.shape[-1]])
    prefix = tokens[:, :-1]
    if scheduled_sampling is not None:
        prefix = scheduled_sampling.decoder_inputs(captioner.decoder, features, prefix, step=step,
                                                   captions_per_image=k)
    return captioner.decoder(features, prefix, training=True, captions_per_image=k), tokens


def make_train_step(captioner: Captioner, optimizer, *, jit_compile: bool = False,
                    dist: tf.distribute.Strategy | None = None, scheduled_sampling: ScheduledSampling | None = None):
    """A compiled step: masked token NLL of tokens[:, 1:] (teacher-forced, or with `scheduled_sampling`
    at the optimizer's step count), one AdamW update of the captioner's trainable variables.

    Under `dist` (the strategy the captioner and optimizer were built in), `images` and `tokens` are
    distributed values: each replica's loss is its part of the global mean (`caption_loss`), the optimizer
    sums the replicas' gradients, and the step returns the global mean loss."""
    dist = dist or tf.distribute.get_strategy()
    check_jit_compile(dist, jit_compile)

    def replica_step(images, tokens):
        with tf.GradientTape() as tape:
            logits, targets = training_logits(captioner, images, tokens, step=optimizer.iterations,
                                              scheduled_sampling=scheduled_sampling)  # (N, L − 1, V), (N, L)
            loss = caption_loss(logits, targets)
        variables = captioner.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(jit_compile=jit_compile)
    def train_step(images, tokens):
        return dist.reduce(tf.distribute.ReduceOp.SUM, dist.run(replica_step, args=(images, tokens)), axis=None)

    return train_step


def most_frequent_caption(data) -> str:
    """The normalised training caption seen most often (ties: the first in sorted order)."""
    counts = collections.Counter(normalize_caption(c) for refs in data.references("train").values() for c in refs)
    best = max(counts.values())
    return min(c for c, n in counts.items() if n == best)


ARCHITECTURE_FILE = "architecture.json"


def architecture_of(config: RetrainConfig) -> dict:
    """What the checkpoints' variables mean: encoder (and for "darts" the resolved genotype, C and cells)
    and decoder. Checkpoints restore by position and shape, so two genotypes whose ops have the same
    variable shapes (max_pool vs avg_pool, another input index) would otherwise load each other's weights."""
    from capnas_tf.search_space.genotypes import resolve_genotype

    arch = {"encoder": config.encoder, "decoder": config.decoder}
    if config.encoder == "darts":
        arch.update(genotype=resolve_genotype(config.genotype).to_dict(), channels=config.channels,
                    num_cells=config.num_cells)
        if config.pool_batchnorm:  # absent: pooling alone, so that records without the key keep their meaning
            arch.update(pool_batchnorm=True)
    return arch


def check_architecture(workdir: str, arch: dict) -> None:
    """Records `arch` in `<workdir>/architecture.json`, or refuses a workdir whose checkpoints were
    written for another architecture (nothing in it is touched)."""
    path = os.path.join(workdir, ARCHITECTURE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        if recorded != arch:
            differing = sorted(k for k in set(recorded) | set(arch) if recorded.get(k) != arch.get(k))
            raise ValueError(
                f"Retrain workdir {workdir} holds checkpoints of another architecture ({path}: "
                f"{', '.join(differing)} differ{'s' if len(differing) == 1 else ''} from this run's "
                f"--genotype / --retrain_encoder / --retrain_channels / --retrain_cells / --retrain_pool_batchnorm "
                f"/ --retrain_decoder). Use another --workdir, or delete {workdir} to retrain from scratch.")
        return
    os.makedirs(workdir, exist_ok=True)
    io_utils.atomic_write_json(path, arch)


# --- validation scores and the selection of the kept epoch --------------------------------------------

VALIDATION_COCO_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr")  # of evaluation.CHEAP_METRIC_GROUPS
# content_accuracy keys validated (and logged, TensorBoarded) after each epoch, as "content/<key>"
VALIDATION_CONTENT_KEYS = ("count", "colour", "shape", "size", "relation", "entirely_correct", "parsed")


def validation_score_names(data) -> tuple[str, ...]:
    """The names of the per-epoch validation scores of `data`: the COCO ones, "token_accuracy", and
    "content/<key>" where the dataset has scenes."""
    content = () if data.scenes("validation") is None else tuple(f"content/{k}" for k in VALIDATION_CONTENT_KEYS)
    return VALIDATION_COCO_KEYS + ("token_accuracy",) + content


def resolve_selection_metric(config: RetrainConfig, data) -> str:
    """`config.selection_metric` with "auto" resolved ("content/entirely_correct" with scenes, else "CIDEr").

    Raises:
      ValueError: the name is no validation score of `data` (e.g. "content/…" on COCO, or a typo).
    """
    has_scenes = data.scenes("validation") is not None
    if config.selection_metric == "auto":
        return "content/entirely_correct" if has_scenes else "CIDEr"
    names = validation_score_names(data)
    if config.selection_metric in names:
        return config.selection_metric
    why = ""
    if config.selection_metric.startswith("content/") and not has_scenes:
        why = (f" Content scores need a dataset whose images come with scenes (capnas_shapes); "
               f"{data.config.dataset!r} has none.")
    raise ValueError(f"RetrainConfig.selection_metric (--selection_metric) must be 'auto' or the name of a "
                     f"validation score, one of {list(names)}; received {config.selection_metric!r}.{why}")


class Validation:
    """The per-epoch validation of one retrain: its caption loop and its teacher-forced pass are traced once and
    reused every epoch (and for the test captions), since they read the captioner's variables, not copies.

    A fresh `tf.function` per epoch would retrace both and let Grappler optimise them again: about 10 s of a
    2-core CPU per epoch at the default recipe, against 2 s of captioning and 3 s of teacher forcing.
    """

    def __init__(self, captioner: Captioner, data, config: RetrainConfig):
        self.data, self.config = data, config
        self.caption_ids = evaluation.make_caption_fn(captioner, beam_width=config.beam_width)
        self._accuracy = TokenAccuracy(pad_id=PAD_ID)

        @tf.function(reduce_retracing=True)  # the last batch may be smaller
        def update(images, tokens):
            self._accuracy.update_state(tokens[:, 1:], captioner(images, tokens[:, :-1], training=False))

        self._update = update

    def token_accuracy(self) -> float:
        """Teacher-forced next-token accuracy (`metrics.TokenAccuracy`: argmax of logits_t = token t + 1, over
        the non-pad tokens) on the validation captions, every one, or the first `config.max_eval_images`."""
        batch_size = self.config.batch_size or self.data.config.batch_size
        pairs = self.data.validation_dataset(batch_size, repeat=False, shuffle=False, drop_remainder=False)
        if self.config.max_eval_images:
            pairs = pairs.unbatch().take(self.config.max_eval_images).batch(batch_size)
        self._accuracy.reset_state()
        for batch in pairs:
            self._update(batch["image"], batch["tokens"])
        return float(self._accuracy.result())

    def scores(self) -> dict[str, float]:
        """The validation scores (`validation_score_names`), on all validation images unless
        `config.max_eval_images`."""
        scores, captions = evaluation.evaluate_captioner(
            self.caption_ids, self.data, splits=("validation",), max_images=self.config.max_eval_images,
            metrics=evaluation.CHEAP_METRIC_GROUPS, return_captions=True)
        scores = dict(scores["validation"])
        scores["token_accuracy"] = self.token_accuracy()
        content = evaluation.content_scores(captions["validation"], self.data, "validation")
        if content is not None:
            scores.update({f"content/{k}": content[k] for k in VALIDATION_CONTENT_KEYS})
        return scores


SELECTION_FILE = "selection.json"


def check_selection_metric(workdir: str, selection_metric: str) -> None:
    """Records the resolved selection metric in `<workdir>/selection.json`, or refuses to resume a workdir
    whose kept epoch was chosen by another one (its recorded best score would be of another scale)."""
    path = os.path.join(workdir, SELECTION_FILE)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)["selection_metric"]
        if recorded != selection_metric:
            raise ValueError(
                f"Retrain workdir {workdir} keeps the epoch of the best validation {recorded} ({path}); this run "
                f"selects by {selection_metric}. Pass --selection_metric={recorded} to resume it, or use another "
                f"--workdir.")
        return
    io_utils.atomic_write_json(path, {"selection_metric": selection_metric})


def _selection_value(value: float) -> float:
    """NaN (nothing to score, e.g. relation without two-group scenes) never wins."""
    return value if math.isfinite(value) else -math.inf


class NonFiniteStateError(FloatingPointError):
    """A variable of the retrain's state (weights, BatchNorm statistics, optimizer slots) holds NaN or Inf
    after an epoch; nothing of that epoch is written."""


class _RetrainState:
    """The checkpointed state: model (every variable, see `model_state`), optimizer, finished epochs, and
    the kept epoch: its validation score of the selection metric and its CIDEr (the tie-break).

    `checkpoints/` and `best/` keep two each, so a resume falls back past a truncated or corrupt newest one;
    nothing non-finite is ever saved (`check_finite`)."""

    def __init__(self, workdir: str, captioner: Captioner, optimizer):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_score")
        self.best_tiebreak = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_tiebreak")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        checkpoint = tf.train.Checkpoint(model=model_state(captioner), optimizer=optimizer, epoch=self.epoch,
                                         best_validation_score=self.best_score,
                                         best_validation_tiebreak=self.best_tiebreak, best_epoch=self.best_epoch)
        # The kept scores are -inf until an epoch is kept: only the model's and optimizer's values are checked.
        self.finite = FiniteCheck(named_variables({"model": captioner, "optimizer": optimizer}))
        self.encoder_prefix = f"{captioner.name}/{captioner.encoder.name}/"
        self.latest = CheckpointKeeper(checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=2,
                                       finite=self.finite)
        self.best = CheckpointKeeper(checkpoint, os.path.join(workdir, "best"), max_to_keep=2, finite=self.finite)
        self.checkpoint = checkpoint

    def resume(self) -> int:
        """Restores the newest usable checkpoint of `checkpoints/` and returns its epoch (0: none). A kept
        epoch of `best/` past it (written after the checkpoint the resume fell back to) is left out."""
        self.latest.restore_latest()
        epoch = int(self.epoch.numpy())
        self.best.forget_after(epoch)
        return epoch

    def restore_best(self) -> None:
        self.best.restore_latest()

    def check_finite(self, epoch: int) -> None:
        """Raises `NonFiniteStateError` naming the first variable holding NaN or Inf after `epoch`."""
        bad = self.finite.first_non_finite()
        if bad is None:
            return
        item, name = bad
        part = ("optimizer" if item == "optimizer"
                else "encoder" if name.startswith(self.encoder_prefix) else "decoder")
        raise self.diverged(f"{part} variable {name} is not finite (NaN or Inf) after epoch {epoch}", epoch)

    def diverged(self, what: str, epoch: int) -> NonFiniteStateError:
        """The error that stops a diverged epoch: `what` went non-finite, and what stays on disk."""
        kept = what_is_kept(self.latest.latest_checkpoint)
        return NonFiniteStateError(
            f"retrain: {what}; the training diverged (lower --retrain_lr, or set --retrain_grad_clip). Nothing of "
            f"epoch {epoch} was written: {kept}; best/ is untouched.")

    def improves(self, score: float, tiebreak: float) -> bool:
        """Whether an epoch of these scores beats the kept one (the first epoch always does)."""
        best = (float(self.best_score.numpy()), float(self.best_tiebreak.numpy()))
        return int(self.best_epoch.numpy()) == 0 or (_selection_value(score), _selection_value(tiebreak)) > best

    def keep(self, epoch: int, score: float, tiebreak: float) -> None:
        self.best_score.assign(_selection_value(score))
        self.best_tiebreak.assign(_selection_value(tiebreak))
        self.best_epoch.assign(epoch)
        self.best.save(checkpoint_number=epoch)


def _train_epoch(step_fn, batches, steps: int, *, epoch: int, log, log_every: int, writer, global_step: int,
                 dist: tf.distribute.Strategy) -> float:
    losses, start = [], time.perf_counter()
    for i, batch in enumerate(distribute_dataset(dist, batches.take(steps))):
        loss = float(step_fn(batch["image"], batch["tokens"]))
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is not finite ({loss}) at epoch {epoch + 1}, step {i + 1}")
        losses.append(loss)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            rate = (i + 1) / (time.perf_counter() - start)
            log(f"  epoch {epoch + 1} step {i + 1}/{steps} loss {loss:.3f} ({rate:.1f} steps/s)")
            with writer.as_default(step=global_step + i + 1):
                tf.summary.scalar("train/loss", loss)
    return sum(losses) / max(1, len(losses))


@dataclasses.dataclass(frozen=True)
class _Trained:
    """What `_train_and_select` leaves: the captioner at its kept epoch, and how it got there."""

    captioner: Captioner
    caption_ids: Callable  # images → token ids, traced (`Validation.caption_ids`)
    workdir: str
    history: list
    best_epoch: int
    best_validation_score: float


def _epoch_line(epoch: int, config: RetrainConfig, loss: float, scores: dict, selection_metric: str,
                improved: bool) -> str:
    line = (f"Epoch {epoch}/{config.epochs}: loss {loss:.3f}, validation CIDEr {scores['CIDEr']:.3f}, "
            f"BLEU-4 {scores['BLEU-4']:.3f}, token accuracy {scores['token_accuracy']:.3f}")
    content = {k[len("content/"):]: v for k, v in scores.items() if k.startswith("content/")}
    if content:
        line += "; content " + evaluation.content_line(content)
    return line + (f" (best {selection_metric})" if improved else "")


def _train_and_select(captioner: Captioner, config: RetrainConfig, data, workdir: str, *, arch: dict,
                      description: str, batch_size: int, steps: int, selection_metric: str, seed: int, log,
                      dist: tf.distribute.Strategy) -> _Trained:
    """The training loop of every retrain (the model's and the blind baseline's): trains `captioner` (or
    resumes it from `<workdir>/checkpoints`) for the epochs `config.epochs` asks, its encoder frozen for the
    first `config.freeze_encoder_epochs`, validates after each epoch (log, TensorBoard, `history.json`),
    keeps the epoch of the best `selection_metric` in `<workdir>/best`, restores it and saves it as
    `<workdir>/captioner.keras`. Exports nothing. `captioner` was built under `dist.scope()`; every worker
    of a multi-worker run validates the whole validation split (the same scores everywhere). `seed` seeds
    the draws of scheduled sampling."""
    with dist.scope():
        optimizer = build_optimizer(config, config.epochs * steps)
        # every variable, the encoder's too: a Keras optimizer refuses variables it was not built with,
        # and the encoder is still trainable here (`freeze` switches it per epoch below)
        optimizer.build(captioner.trainable_variables)
    freeze = (FreezeThenUnfreeze(captioner.encoder, config.freeze_encoder_epochs * steps)
              if config.freeze_encoder_epochs else None)
    check_architecture(workdir, arch)
    check_selection_metric(workdir, selection_metric)
    state = _RetrainState(workdir, captioner, optimizer)
    first_epoch = state.resume()
    check_workers_agree(dist, first_epoch, "the epoch the retrain resumes after")
    per_image = f" images × {config.captions_per_image} captions" if config.captions_per_image > 1 else ""
    log(f"Retrain: {description}; {config.epochs} epochs × {steps} steps, batch {batch_size}{per_image}; checkpoint kept by "
        f"validation {selection_metric}" + (f"; resuming after epoch {first_epoch}" if first_epoch else "")
        + f" → {workdir}")
    sampling = scheduled_sampling_of(config, total_steps=config.epochs * steps, seed=seed)
    step_fn = None
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    batches = (data.train_groups(batch_size, config.captions_per_image, repeat=True) if config.captions_per_image > 1
               else data.train_dataset(batch_size, repeat=True))
    # epochs past the resumed checkpoint (it may be an older one than the newest: `CheckpointKeeper`) are redone
    history = [h for h in _read_history(workdir) if h["epoch"] <= first_epoch]
    validation = Validation(captioner, data, config)
    for epoch in range(first_epoch, config.epochs):
        if config.drop_path_prob > 0:
            captioner.encoder.set_drop_path_prob(config.drop_path_prob * epoch / config.epochs)
        switched = freeze is not None and freeze(epoch * steps)
        if switched or step_fn is None:  # the step reads the trainable variables when traced
            if freeze is not None:
                log(f"  epoch {epoch + 1}: encoder {'trainable' if captioner.encoder.trainable else 'frozen'}")
            step_fn = make_train_step(captioner, optimizer, jit_compile=config.xla, dist=dist,
                                      scheduled_sampling=sampling)
        try:
            loss = _train_epoch(step_fn, batches, steps, epoch=epoch, log=log, log_every=config.log_every,
                                writer=writer, global_step=epoch * steps, dist=dist)
        except FloatingPointError as e:
            raise state.diverged(str(e), epoch + 1) from None
        state.check_finite(epoch + 1)  # before anything of this epoch is written
        scores = validation.scores()
        with writer.as_default(step=(epoch + 1) * steps):
            for name, value in scores.items():
                tf.summary.scalar(f"validation/{name}", value)
        history.append({"epoch": epoch + 1, "train_loss": loss, **{f"val_{k}": v for k, v in scores.items()}})
        state.epoch.assign(epoch + 1)
        improved = state.improves(scores[selection_metric], scores["CIDEr"])
        if improved:
            state.keep(epoch + 1, scores[selection_metric], scores["CIDEr"])
        state.latest.save(checkpoint_number=epoch + 1)
        io_utils.atomic_write_json(os.path.join(workdir, "history.json"), history)
        log(_epoch_line(epoch + 1, config, loss, scores, selection_metric, improved))
    writer.flush()
    if freeze is not None:
        captioner.encoder.trainable = True  # a model frozen to the end is saved as an ordinary one
    state.restore_best()
    io_utils.remove_stale_temps(workdir)  # of a save killed half-way
    io_utils.save_keras_atomically(captioner, os.path.join(workdir, "captioner.keras"))
    best_epoch = int(state.best_epoch.numpy())
    best_score = next((h[f"val_{selection_metric}"] for h in history if h["epoch"] == best_epoch), math.nan)
    return _Trained(captioner, validation.caption_ids, workdir, history, best_epoch, float(best_score))


def _prefixed(log, prefix: str):
    return lambda line: log(prefix + line)


BLIND_LOG_PREFIX = "[blind baseline] "


def retrain_job(run, config: RetrainConfig, data, *, dist=None, log=print) -> RetrainResult:
    """Retrains (or resumes) the captioner of `config.genotype` in `<run.workdir>/retrain`, and with
    `config.blind_baseline` the image-blind baseline in `<run.workdir>/retrain/blind`.

    Args:
      run: `jobs.RunConfig` (workdir, seed).
      config: the RetrainConfig.
      data: a `CaptionData` (D_tr for training, `validation` for model selection, `test`/`test_novel`).
      dist: the tf.distribute strategy, created before any other TensorFlow op (`jobs.run` does); default:
        `get_distribution_strategy(run.distribution)`, which works for the single-process strategies only.
        The batch (`config.batch_size` or the data's) is the global one, split over all replicas.
      log: progress printer; the blind baseline's lines start with "[blind baseline] ".

    Returns:
      A `RetrainResult` holding the captioner of the best validation `selection_metric` and its test metrics.

    Raises:
      ValueError: `config.selection_metric` is no validation score of `data` (before anything is trained).
    """
    selection_metric = resolve_selection_metric(config, data)
    workdir = os.path.join(run.workdir, "retrain")
    batch_size = config.batch_size or data.config.batch_size
    steps = config.steps_per_epoch or max(1, data.num_train_examples // (batch_size * config.captions_per_image))
    warning = configure_runtime(run.seed, run.deterministic)
    if warning:
        log(f"Warning: {warning}")
    dist = dist or get_distribution_strategy(run.distribution)
    check_global_batch(dist, batch_size, "--retrain_batch_size (or --batch_size)")
    with dist.scope():
        captioner = build_captioner(config, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                    image_size=data.image_size)
    encoder_name = (f"{config.genotype} (C={config.channels}, {config.num_cells} cells, " if config.encoder == "darts"
                    else f"{config.encoder} encoder (")
    description = (f"{encoder_name}{captioner.encoder.count_params():,} encoder params) + {config.decoder} decoder "
                   f"({captioner.decoder.count_params():,} params)")
    model = _train_and_select(captioner, config, data, workdir, arch=architecture_of(config), description=description,
                              batch_size=batch_size, steps=steps, selection_metric=selection_metric, seed=run.seed,
                              log=log, dist=dist)
    blind = None
    if config.blind_baseline and config.encoder != "blind":
        blind = _train_blind_baseline(run, config, data, captioner, batch_size=batch_size, steps=steps,
                                      selection_metric=selection_metric, log=_prefixed(log, BLIND_LOG_PREFIX),
                                      dist=dist)
    metrics, test_captions = _final_metrics(model, blind, data, config, selection_metric, log)
    metrics_path = os.path.join(workdir, "metrics.json")
    io_utils.atomic_write_json(metrics_path, metrics)
    samples_path = os.path.join(workdir, "samples.png")
    evaluation.save_sample_grid(samples_path, data, test_captions, split="test")
    exports = export_captioner(captioner, data.vocab, run.workdir, config, image_size=data.image_size, log=log)
    return RetrainResult(captioner, model.best_epoch, model.best_validation_score, selection_metric, metrics,
                         metrics_path, samples_path, exports)


def _train_blind_baseline(run, config: RetrainConfig, data, captioner: Captioner, *, batch_size: int, steps: int,
                          selection_metric: str, log, dist: tf.distribute.Strategy) -> _Trained:
    """The image-blind baseline: `config`'s decoder and recipe (seed included), its encoder replaced by a
    `BlindEncoder` of the model encoder's output shape, trained by `_train_and_select` in `retrain/blind`."""
    from capnas_tf.encoders import BlindEncoder

    grid, _ = captioner.encoder(tf.zeros([1, data.image_size, data.image_size, 3]), training=False)
    grid_shape = tuple(int(d) for d in grid.shape[1:])
    blind_config = dataclasses.replace(config, encoder="blind", drop_path_prob=0.0, encoder_weights="",
                                       freeze_encoder_epochs=0)
    keras.utils.set_random_seed(run.seed)
    with dist.scope():
        blind = build_captioner(blind_config, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                image_size=data.image_size, encoder=BlindEncoder(grid_shape=grid_shape, name="encoder"))
    description = (f"image-blind baseline: constant zero features {list(grid_shape)} (no encoder weights) + "
                   f"{config.decoder} decoder ({blind.decoder.count_params():,} params)")
    arch = {**architecture_of(blind_config), "grid_shape": list(grid_shape)}
    return _train_and_select(blind, blind_config, data, os.path.join(run.workdir, "retrain", "blind"), arch=arch,
                             description=description, batch_size=batch_size, steps=steps,
                             selection_metric=selection_metric, seed=run.seed, log=log, dist=dist)


def _read_history(workdir: str) -> list:
    path = os.path.join(workdir, "history.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return []


BLIND_BASELINE_KIND = ("blind: the same decoder and recipe trained on the same captions with every image replaced "
                       "by a constant (zero features); what the captions' language alone scores")


def _final_metrics(model: _Trained, blind: _Trained | None, data, config: RetrainConfig, selection_metric: str,
                   log) -> tuple[dict, dict]:
    """Test metrics of the kept model, the trivial baseline, the blind baseline and the references, all COCO
    scores from one `score_many` call (`evaluation.score_caption_sets`)."""
    splits = evaluation.evaluation_splits(data)

    def captions_of(trained: _Trained) -> dict:
        return {s: evaluation.caption_dataset(trained.caption_ids, data.eval_dataset(s), data.vocab,
                                              max_images=config.max_eval_images)
                for s in splits}

    caption_sets = {"model": captions_of(model)}
    baseline = None
    if config.baseline == "frequent_caption":
        baseline = most_frequent_caption(data)
        caption_sets["baseline"] = {s: {i: baseline for i in caption_sets["model"][s]} for s in splits}
    if blind is not None:
        caption_sets["blind"] = captions_of(blind)
    scores, reference_level = evaluation.score_caption_sets(caption_sets, data, metrics=config.final_metrics, log=log)
    metrics = {
        "model": scores["model"],
        "decoding": "greedy" if config.beam_width == 1 else f"beam search (width {config.beam_width})",
        "best_epoch": model.best_epoch,
        "selection_metric": selection_metric,
        "best_validation_score": model.best_validation_score,
        "history": model.history,
        "config": dataclasses.asdict(config),
        "num_images": {s: len(caption_sets["model"][s]) for s in splits},
        "reference_level": reference_level,
    }
    if baseline is not None:
        metrics["baseline"] = {
            "kind": "frequent_caption: every image gets the most frequent normalised training caption",
            "caption": baseline, **scores["baseline"]}
    if blind is not None:
        metrics["blind_baseline"] = {"kind": BLIND_BASELINE_KIND, "workdir": blind.workdir, "best_epoch": blind.best_epoch,
                                     "best_validation_score": blind.best_validation_score, "history": blind.history,
                                     **scores["blind"]}
    for s in splits:
        log(f"  {s}: model {evaluation.summary_line(scores['model'][s])}")
        for who, label in (("baseline", "frequent-caption baseline"), ("blind", "blind baseline")):
            if who in scores:
                log(f"  {s}: {label} {evaluation.summary_line(scores[who][s])}")
        if s in reference_level:
            log(f"  {s}: references (each against the other {reference_level[s]['scored_against']}) "
                f"{evaluation.summary_line(reference_level[s])}")
    return metrics, caption_sets["model"]["test"]


def export_captioner(captioner: Captioner, vocab, workdir: str, config: RetrainConfig, *, image_size: int,
                     log=print) -> dict:
    """The exports asked for by `config`: {"saved_model": dir, "onnx": file} (absent if not asked)."""
    exports = {}
    if config.export_saved_model:
        from capnas_tf.export.saved_model import export_saved_model

        exports["saved_model"] = export_saved_model(captioner, vocab, os.path.join(workdir, "export", "saved_model"),
                                                    image_size=image_size, beam_width=config.beam_width,
                                                    max_pixels=config.export_max_pixels)
        log(f"SavedModel → {exports['saved_model']}")
    if config.export_onnx:
        from capnas_tf.export.onnx import export_onnx

        exports["onnx"] = export_onnx(captioner, vocab, os.path.join(workdir, "export"), image_size=image_size,
                                      beam_width=config.beam_width)
        log(f"ONNX → {exports['onnx']}")
    return exports
