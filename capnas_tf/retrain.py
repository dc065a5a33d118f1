"""Retraining: the captioner of a genotype trained from scratch, evaluated, and exported.

    result = retrain_job(RunConfig(workdir="runs/q"), RetrainConfig(genotype="DARTS_V2"), data)

Writes under `<workdir>/retrain/`: `checkpoints/` (latest, for resuming) and `best/` (the best
validation CIDEr), `tensorboard/`, `captioner.keras` (the best model), `metrics.json` and
`samples.png`; and, per the export flags, `<workdir>/export/saved_model/1/` and
`<workdir>/export/captioner.onnx` + `vocab.txt`. Re-running the same call resumes after the last
finished epoch.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

from capnas_tf import evaluate, io_utils
from capnas_tf.captioner import Captioner
from capnas_tf.checkpointing import model_state, restore_checkpoint
from capnas_tf.config import RetrainConfig
from capnas_tf.data.text import normalize_caption
from capnas_tf.decoders import get_decoder
from capnas_tf.encoders import ENCODERS
from capnas_tf.search.captioning import caption_loss
from capnas_tf.search_space.genotype import resolve_genotype


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    """What a retrain produced: the best model, its scores and the files written."""

    captioner: Captioner
    best_epoch: int
    best_validation_cider: float
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
                       num_cells=config.num_cells, drop_path_prob=config.drop_path_prob, name="encoder")
    return factory(name="encoder")


def build_captioner(config: RetrainConfig, *, vocab_size: int, max_caption_len: int, image_size: int) -> Captioner:
    """Encoder (`build_encoder`) + decoder, built. The decoder reads prefixes of L − 1 tokens."""
    encoder = build_encoder(config)
    decoder = get_decoder(config.decoder, vocab_size=vocab_size, max_len=max_caption_len - 1)
    captioner = Captioner(encoder, decoder, name="captioner")
    captioner(tf.zeros([1, image_size, image_size, 3]), tf.ones([1, max_caption_len - 1], tf.int32))
    return captioner


def build_optimizer(config: RetrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW with a cosine decay of the learning rate to 0 over `total_steps`."""
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(1, total_steps))
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                                  global_clipnorm=config.grad_clip or None)


def make_train_step(captioner: Captioner, optimizer, *, jit_compile: bool = False):
    """A compiled step: teacher-forced masked token NLL of tokens[:, 1:], one AdamW update."""

    @tf.function(jit_compile=jit_compile)
    def train_step(images, tokens):
        with tf.GradientTape() as tape:
            logits = captioner(images, tokens[:, :-1], training=True)  # (B, L − 1, V)
            loss = caption_loss(logits, tokens)
        variables = captioner.trainable_variables
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

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
    from capnas_tf.search_space.genotype import resolve_genotype

    arch = {"encoder": config.encoder, "decoder": config.decoder}
    if config.encoder == "darts":
        arch.update(genotype=resolve_genotype(config.genotype).to_dict(), channels=config.channels,
                    num_cells=config.num_cells)
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
                f"--genotype / --retrain_encoder / --retrain_channels / --retrain_cells / --retrain_decoder). Use "
                f"another --workdir, or delete {workdir} to retrain from scratch.")
        return
    os.makedirs(workdir, exist_ok=True)
    io_utils.atomic_write_json(path, arch)


class _RetrainState:
    """The checkpointed state: model (every variable, see `model_state`), optimizer, finished epochs,
    best validation CIDEr."""

    def __init__(self, workdir: str, captioner: Captioner, optimizer):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_cider = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_cider")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        checkpoint = tf.train.Checkpoint(model=model_state(captioner), optimizer=optimizer, epoch=self.epoch,
                                         best_cider=self.best_cider, best_epoch=self.best_epoch)
        self.latest = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=1)
        self.best = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "best"), max_to_keep=1)
        self.checkpoint = checkpoint

    def resume(self) -> int:
        if self.latest.latest_checkpoint:
            restore_checkpoint(self.checkpoint, self.latest.latest_checkpoint)
        return int(self.epoch.numpy())

    def restore_best(self) -> None:
        if self.best.latest_checkpoint:
            restore_checkpoint(self.checkpoint, self.best.latest_checkpoint)


def _train_epoch(step_fn, batches, steps: int, *, epoch: int, log, log_every: int, writer, global_step: int) -> float:
    losses, start = [], time.perf_counter()
    for i, batch in enumerate(batches.take(steps)):
        loss = float(step_fn(batch["image"], batch["tokens"]))
        if not math.isfinite(loss):
            raise FloatingPointError(f"retrain: non-finite loss {loss} at epoch {epoch + 1}, step {i + 1}.")
        losses.append(loss)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            rate = (i + 1) / (time.perf_counter() - start)
            log(f"  epoch {epoch + 1} step {i + 1}/{steps} loss {loss:.3f} ({rate:.1f} steps/s)")
            with writer.as_default(step=global_step + i + 1):
                tf.summary.scalar("train/loss", loss)
    return sum(losses) / max(1, len(losses))


def retrain_job(run, config: RetrainConfig, data, *, log=print) -> RetrainResult:
    """Retrains (or resumes) the captioner of `config.genotype` in `<run.workdir>/retrain`.

    Args:
      run: `jobs.RunConfig` (workdir, seed).
      config: the RetrainConfig.
      data: a `CaptionData` (D_tr for training, `validation` for model selection, `test`/`test_novel`).
      log: progress printer.

    Returns:
      A `RetrainResult` holding the best-validation-CIDEr captioner and its test metrics.
    """
    keras.utils.set_random_seed(run.seed)
    workdir = os.path.join(run.workdir, "retrain")
    batch_size = config.batch_size or data.config.batch_size
    steps = config.steps_per_epoch or max(1, data.num_train_examples // batch_size)
    captioner = build_captioner(config, vocab_size=len(data.vocab), max_caption_len=data.max_caption_len,
                                image_size=data.image_size)
    optimizer = build_optimizer(config, config.epochs * steps)
    optimizer.build(captioner.trainable_variables)
    check_architecture(workdir, architecture_of(config))
    state = _RetrainState(workdir, captioner, optimizer)
    first_epoch = state.resume()
    encoder_name = (f"{config.genotype} (C={config.channels}, {config.num_cells} cells, " if config.encoder == "darts"
                    else f"{config.encoder} encoder (")
    log(f"Retrain: {encoder_name}{captioner.encoder.count_params():,} encoder params) + {config.decoder} decoder "
        f"({captioner.decoder.count_params():,} params); {config.epochs} epochs × {steps} steps, batch "
        f"{batch_size}" + (f"; resuming after epoch {first_epoch}" if first_epoch else "") + f" → {workdir}")
    step_fn = make_train_step(captioner, optimizer, jit_compile=config.xla)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    batches = data.train_dataset(batch_size, repeat=True)
    history = _read_history(workdir)
    for epoch in range(first_epoch, config.epochs):
        if config.drop_path_prob > 0:
            captioner.encoder.set_drop_path_prob(config.drop_path_prob * epoch / config.epochs)
        loss = _train_epoch(step_fn, batches, steps, epoch=epoch, log=log, log_every=config.log_every,
                            writer=writer, global_step=epoch * steps)
        scores = evaluate.evaluate_captioner(captioner, data, splits=("validation",), beam_width=config.beam_width,
                                             max_images=config.max_eval_images,
                                             metrics=evaluate.CHEAP_METRIC_GROUPS)["validation"]
        with writer.as_default(step=(epoch + 1) * steps):
            for name, value in scores.items():
                tf.summary.scalar(f"validation/{name}", value)
        history.append({"epoch": epoch + 1, "train_loss": loss, **{f"val_{k}": v for k, v in scores.items()}})
        state.epoch.assign(epoch + 1)
        improved = scores["CIDEr"] > float(state.best_cider.numpy())
        if improved:
            state.best_cider.assign(scores["CIDEr"])
            state.best_epoch.assign(epoch + 1)
            state.best.save(checkpoint_number=epoch + 1)
        state.latest.save(checkpoint_number=epoch + 1)
        io_utils.atomic_write_json(os.path.join(workdir, "history.json"), history)
        log(f"Epoch {epoch + 1}/{config.epochs}: loss {loss:.3f}, validation CIDEr {scores['CIDEr']:.3f}, "
            f"BLEU-4 {scores['BLEU-4']:.3f}" + (" (best)" if improved else ""))
    writer.flush()
    state.restore_best()
    captioner.save(os.path.join(workdir, "captioner.keras"))
    metrics, test_captions = _final_metrics(captioner, data, config, history, state, log)
    metrics_path = os.path.join(workdir, "metrics.json")
    io_utils.atomic_write_json(metrics_path, metrics)
    samples_path = os.path.join(workdir, "samples.png")
    evaluate.save_sample_grid(samples_path, data, test_captions, split="test")
    exports = export_captioner(captioner, data.vocab, run.workdir, config, image_size=data.image_size, log=log)
    return RetrainResult(captioner, int(state.best_epoch.numpy()), float(state.best_cider.numpy()), metrics,
                         metrics_path, samples_path, exports)


def _read_history(workdir: str) -> list:
    path = os.path.join(workdir, "history.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return []


def _final_metrics(captioner, data, config: RetrainConfig, history, state, log) -> tuple[dict, dict]:
    """Test metrics of the best model and of the trivial baseline, scored concurrently."""
    splits = evaluate.evaluation_splits(data)
    captions = {s: evaluate.caption_dataset(captioner, data.eval_dataset(s), data.vocab, beam_width=config.beam_width,
                                            max_images=config.max_eval_images) for s in splits}
    jobs = {("model", s): (captions[s], data.references(s)) for s in splits}
    baseline = None
    if config.baseline == "frequent_caption":
        baseline = most_frequent_caption(data)
        jobs.update({("baseline", s): ({i: baseline for i in captions[s]}, data.references(s)) for s in splits})
    start = time.perf_counter()
    scores = evaluate.score_many(jobs, metrics=config.final_metrics)
    log(f"Scored {len(jobs)} caption sets in {time.perf_counter() - start:.1f} s")
    metrics = {
        "model": {s: scores[("model", s)] for s in splits},
        "decoding": "greedy" if config.beam_width == 1 else f"beam search (width {config.beam_width})",
        "best_epoch": int(state.best_epoch.numpy()),
        "best_validation_CIDEr": float(state.best_cider.numpy()),
        "history": history,
        "config": dataclasses.asdict(config),
        "num_images": {s: len(captions[s]) for s in splits},
    }
    if baseline is not None:
        metrics["baseline"] = {
            "kind": "frequent_caption: every image gets the most frequent normalised training caption",
            "caption": baseline, **{s: scores[("baseline", s)] for s in splits}}
    for s in splits:
        line = f"  {s}: model " + ", ".join(f"{k} {v:.3f}" for k, v in scores[("model", s)].items())
        if baseline is not None:
            line += f" | baseline CIDEr {scores[('baseline', s)].get('CIDEr', float('nan')):.3f}"
        log(line)
    return metrics, captions["test"]


def export_captioner(captioner: Captioner, vocab, workdir: str, config: RetrainConfig, *, image_size: int,
                     log=print) -> dict:
    """The exports asked for by `config`: {"saved_model": dir, "onnx": file} (absent if not asked)."""
    exports = {}
    if config.export_saved_model:
        from capnas_tf.export.saved_model import export_saved_model

        exports["saved_model"] = export_saved_model(captioner, vocab, os.path.join(workdir, "export", "saved_model"),
                                                    image_size=image_size, beam_width=config.beam_width)
        log(f"SavedModel → {exports['saved_model']}")
    if config.export_onnx:
        from capnas_tf.export.onnx import export_onnx

        exports["onnx"] = export_onnx(captioner, vocab, os.path.join(workdir, "export"), image_size=image_size)
        log(f"ONNX → {exports['onnx']}")
    return exports
