"""Captioning evaluation splits and scoring them: the library behind retraining's evaluation and
`python -m capnas_tf.evaluate` (its command line, `capnas_tf/evaluate.py`).

    captions = caption_dataset(captioner, data.eval_dataset("test"), vocab)   # {image_id: caption}
    scores = evaluate_captioner(captioner, data, splits=("test",))           # {"test": {"CIDEr": …}}

Every caption set is scored by `score_caption_sets`: the COCO metrics, and per split its `content`
accuracy (datasets with scenes: what the captions say about the images, `data.shapes_content`) and
`diversity` (`diagnostics.caption_diversity`), beside the `reference_level`: the same scores of the
human references, each scored against the others (leave one out). `save_sample_grid` draws the first
captions of a split; `load_model_for_evaluation` opens a retrain workdir or an export directory.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.decoders.decoding import decode_captions
from capnas_tf.metrics import ALL_METRIC_GROUPS, score_many

CHEAP_METRIC_GROUPS = ("BLEU", "CIDEr")  # per-epoch validation: no METEOR JVM start-up


def make_caption_fn(captioner, *, beam_width: int = 1, jit_compile: bool = False) -> Callable:
    """A `tf.function` images `[B, S, S, 3]` → token ids `[B, T]` (retraces per batch shape only)."""

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def caption_ids(images):
        return decode_captions(captioner, images, beam_width=beam_width)[0]

    return caption_ids


def _ids_fn(captioner, beam_width: int) -> Callable:
    """`captioner` may be a Keras Captioner or already a callable images → ids."""
    if hasattr(captioner, "decoder") and hasattr(captioner, "encode"):
        return make_caption_fn(captioner, beam_width=beam_width)
    return captioner


def caption_dataset(captioner, dataset: tf.data.Dataset, vocab, *, beam_width: int = 1,
                    max_images: int = 0) -> dict[int, str]:
    """Captions every image of an evaluation stream.

    Args:
      captioner: a `Captioner`, or a callable float32 images `[B, S, S, 3]` → int32 ids `[B, T]`
        (e.g. a SavedModel's `caption_pixels` signature wrapped to return `token_ids`).
      dataset: batches `{"image", "image_id"}` (`CaptionData.eval_dataset`); padding rows of
        image_id −1 are dropped.
      vocab: the `Vocabulary` that turns ids into words.
      beam_width: 1 = greedy, K > 1 = beam search (ignored for a callable).
      max_images: stop after this many images (0: all).

    Returns:
      {image_id: caption} in the stream's order.
    """
    ids_fn = _ids_fn(captioner, beam_width)
    captions: dict[int, str] = {}
    for batch in dataset:
        ids = np.asarray(ids_fn(batch["image"]))  # (B, T)
        for image_id, row in zip(batch["image_id"].numpy().tolist(), ids):
            if image_id < 0:  # padding of the last batch
                continue
            captions[image_id] = vocab.decode(row)
            if max_images and len(captions) >= max_images:
                return captions
    return captions


def evaluation_splits(data) -> tuple[str, ...]:
    """The test splits of a dataset: `test`, plus `test_novel` where it exists."""
    return tuple(s for s in ("test", "test_novel") if s in data.splits)


def evaluate_captioner(captioner, data, *, splits: Sequence[str] | None = None, beam_width: int = 1,
                       max_images: int = 0, metrics: Sequence[str] = ALL_METRIC_GROUPS,
                       batch_size: int | None = None, return_captions: bool = False):
    """Captions and scores evaluation splits.

    Args:
      captioner: as in `caption_dataset`.
      data: a `CaptionData`.
      splits: split names; default `evaluation_splits(data)`.
      beam_width, max_images: as in `caption_dataset`.
      metrics: scorer groups of `score_captions`.
      batch_size: evaluation batch size (default the data's).
      return_captions: also return {split: {image_id: caption}}.

    Returns:
      {split: {metric: score}} (and the captions, with `return_captions`).
    """
    splits = tuple(splits or evaluation_splits(data))
    captions = {split: caption_dataset(captioner, data.eval_dataset(split, batch_size), data.vocab,
                                       beam_width=beam_width, max_images=max_images) for split in splits}
    scores = score_many({s: (captions[s], data.references(s)) for s in splits}, metrics=metrics)
    return (scores, captions) if return_captions else scores


def content_scores(predictions: Mapping[int, str], data, split: str) -> dict | None:
    """`shapes_content.content_accuracy` of `predictions` against the scenes of `split`, or None where the
    dataset has no scenes (COCO)."""
    scenes = data.scenes(split)
    if scenes is None:
        return None
    from capnas_tf.data.shapes_content import content_accuracy

    return content_accuracy(predictions, scenes)


def score_caption_sets(caption_sets: Mapping[str, Mapping[str, Mapping[int, str]]], data, *,
                       metrics: Sequence[str] = ALL_METRIC_GROUPS, reference_level: bool = True,
                       log=None) -> tuple[dict, dict]:
    """Scores several sets of captions of the evaluation splits, and the references themselves.

    All COCO scores come from one `score_many` call (one METEOR JVM): each set on each split, and the
    leave-one-out jobs of the references (`diagnostics.leave_one_out_jobs`), keyed
    ("reference", split, j) and averaged over j.

    Args:
      caption_sets: {name: {split: {image_id: caption}}}, e.g. {"model": …, "baseline": …}.
      data: the `CaptionData` (references, and scenes where it has them).
      metrics: scorer groups of the COCO metrics.
      reference_level: also score the references (on the images that the sets of a split caption).
      log: optional printer of the scoring time.

    Returns:
      ({name: {split: {COCO metric: score, …, "content": content_accuracy or None, "diversity":
      caption_diversity}}},
       {split: {COCO metric: mean over j, "content": mean over j (or None), "diversity": mean over j,
       "images": n, "references_per_image": R, "scored_against": R − 1}}), the second empty without
      `reference_level`; a split with no image of two or more references has no reference level.
    """
    import time

    from capnas_tf import diagnostics

    jobs = {(name, split): (predictions, data.references(split))
            for name, by_split in caption_sets.items() for split, predictions in by_split.items()}
    reference_jobs = {}
    if reference_level:
        images = {}
        for by_split in caption_sets.values():
            for split, predictions in by_split.items():
                images.setdefault(split, set()).update(predictions)
        for split, ids in images.items():
            references = data.references(split)
            chosen = {i: references[i] for i in ids}
            if any(len(r) >= 2 for r in chosen.values()):
                reference_jobs[split] = diagnostics.leave_one_out_jobs(chosen)
                jobs.update({("reference", split, j): job for j, job in reference_jobs[split].items()})
    start = time.perf_counter()
    scores = score_many(jobs, metrics=metrics)
    if log is not None:
        log(f"Scored {len(jobs)} caption sets in {time.perf_counter() - start:.1f} s")

    def with_diagnostics(coco: Mapping, predictions, split: str) -> dict:
        return {**coco, "content": content_scores(predictions, data, split),
                "diversity": diagnostics.caption_diversity(predictions, data.references(split))}

    results = {name: {split: with_diagnostics(scores[(name, split)], predictions, split)
                      for split, predictions in by_split.items()} for name, by_split in caption_sets.items()}
    levels = {}
    for split, split_jobs in reference_jobs.items():
        per_job = {j: with_diagnostics(scores[("reference", split, j)], predictions, split)
                   for j, (predictions, _) in split_jobs.items()}
        level = diagnostics.mean_over_jobs({j: {k: v for k, v in r.items() if k not in ("content", "diversity")}
                                            for j, r in per_job.items()})
        contents = {j: r["content"] for j, r in per_job.items()}
        level["content"] = (None if any(c is None for c in contents.values())
                            else diagnostics.mean_over_jobs(contents))
        level["diversity"] = diagnostics.mean_over_jobs({j: r["diversity"] for j, r in per_job.items()})
        first = next(iter(split_jobs.values()))[0]
        levels[split] = {**level, "images": len(first), "references_per_image": len(split_jobs),
                         "scored_against": len(split_jobs) - 1}
    return results, levels


def coco_part(scores: Mapping) -> dict[str, float]:
    """The COCO metrics of a `score_caption_sets` entry (without content and diversity)."""
    return {k: v for k, v in scores.items() if isinstance(v, float)}


def summary_line(scores: Mapping) -> str:
    """"CIDEr 0.812, BLEU-4 0.301, …; content: colour 0.91, …, entirely correct 0.40; 7 distinct captions"
    of a `score_caption_sets` entry."""
    line = ", ".join(f"{k} {v:.3f}" for k, v in coco_part(scores).items())
    content = scores.get("content")
    if content:
        line += "; content: " + content_line(content)
    diversity = scores.get("diversity")
    if diversity:
        line += f"; {diversity['distinct_captions']:g} distinct captions of {diversity['images']:g} images"
    return line


CONTENT_SHOWN = ("count", "colour", "shape", "size", "relation", "entirely_correct")


def content_line(content: Mapping) -> str:
    """"count 0.50, colour 0.75, …, entirely correct 0.12" of a content_accuracy dict."""
    return ", ".join(f"{k.replace('_', ' ')} {content[k]:.2f}" for k in CONTENT_SHOWN if k in content)


# --- sample grid -------------------------------------------------------------------------------------

CORRECT_COLOUR, WRONG_COLOUR = "#1b7a2e", "#c0231b"


def save_caption_grid(path: str, images, predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                      columns: int = 4, max_references: int = 2,
                      verdicts: Sequence[tuple[bool, Sequence[str]]] | None = None) -> None:
    """Writes a PNG grid: each image with its generated caption (bold) and some references.

    Args:
      path: PNG file, written atomically.
      images: float `[N, S, S, 3]` in [0, 1] or uint8.
      predictions: N generated captions.
      references: N lists of reference captions (the first `max_references` are shown).
      verdicts: optional N (entirely_correct, errors) of the generated captions, e.g. from
        `shapes_content.score_caption`: the caption's title turns green (✓) or red (✗), and its
        errors are listed in red under the image ("✗ colour: red, is green"), above the references.
    """
    import io
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if len(images) != len(predictions) or len(images) != len(references):
        raise ValueError(f"save_caption_grid: got {len(images)} images, {len(predictions)} predictions and "
                         f"{len(references)} reference lists; expected the same number.")
    if verdicts is not None and len(verdicts) != len(images):
        raise ValueError(f"save_caption_grid: got {len(images)} images and {len(verdicts)} verdicts; expected the "
                         "same number.")
    n = len(images)
    rows = max(1, -(-n // columns))
    error_texts = ["\n".join("\n".join(textwrap.wrap("✗ " + e, 44)) for e in verdict[1]) if verdict else ""
                   for verdict in (verdicts or [None] * n)]
    extra_lines = max((t.count("\n") + 1 for t in error_texts if t), default=0)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, (4.4 + 0.14 * extra_lines) * rows),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k] if images.dtype == np.uint8 else np.clip(images[k], 0.0, 1.0), interpolation="nearest")
        mark, colour = "", "black"
        if verdicts is not None and verdicts[k] is not None:
            correct = bool(verdicts[k][0])
            mark, colour = ("✓ ", CORRECT_COLOUR) if correct else ("✗ ", WRONG_COLOUR)
        text = "\n".join(textwrap.wrap(mark + "GEN: " + predictions[k], 38))
        refs = "\n".join("\n".join(textwrap.wrap("REF: " + r, 44)) for r in list(references[k])[:max_references])
        ax.set_title(text, fontsize=8, fontweight="bold", loc="left", color=colour)
        if error_texts[k]:
            errors = ax.text(0.0, -0.04, error_texts[k], fontsize=7, transform=ax.transAxes, va="top",
                             color=WRONG_COLOUR)
            ax.annotate(refs, xy=(0.0, 0.0), xycoords=errors, xytext=(0, -3), textcoords="offset points",
                        fontsize=7, va="top")
        else:
            ax.text(0.0, -0.04, refs, fontsize=7, transform=ax.transAxes, va="top")
    fig.tight_layout(h_pad=4.0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    io_utils.atomic_write_bytes(path, buffer.getvalue())


def first_images(data, split: str, count: int) -> tuple[np.ndarray, list[int]]:
    """The first `count` images of an evaluation split (float32 [n, S, S, 3]) and their ids."""
    images, ids = [], []
    for batch in data.eval_dataset(split):
        for image, image_id in zip(batch["image"].numpy(), batch["image_id"].numpy().tolist()):
            if image_id >= 0 and len(ids) < count:
                images.append(image)
                ids.append(image_id)
        if len(ids) >= count:
            break
    return np.stack(images), ids


def save_sample_grid(path: str, data, captions: Mapping[int, str], *, split: str = "test", count: int = 12) -> None:
    """`save_caption_grid` of the first `count` images of `split` with their generated `captions`; where the
    dataset has scenes, each caption is marked right (green) or wrong (red, with its content errors)."""
    images, ids = first_images(data, split, count)
    references = data.references(split)
    predictions = [captions.get(i, "") for i in ids]
    scenes, verdicts = data.scenes(split), None
    if scenes is not None:
        from capnas_tf.data.shapes_content import score_caption

        scores = [score_caption(caption, scenes[i]) for caption, i in zip(predictions, ids)]
        verdicts = [(score.entirely_correct, score.errors) for score in scores]
    save_caption_grid(path, images, predictions, [references[i] for i in ids], verdicts=verdicts)


# --- loading a trained model ----------------------------------------------------------------------------

def load_model_for_evaluation(model_path: str):
    """(captioner or ids callable, description) for a retrain workdir or an export dir.

    Prefers the Keras captioner (`retrain/captioner.keras`), else the SavedModel's `caption_pixels`.
    """
    for candidate in (os.path.join(model_path, "retrain", "captioner.keras"),
                      os.path.join(model_path, "captioner.keras"), model_path):
        if candidate.endswith(".keras") and os.path.isfile(candidate):
            import keras

            # Every class it may hold is registered: `import capnas_tf` (this module's package) did it.
            return keras.saving.load_model(candidate, compile=False), candidate
    from capnas_tf.export.saved_model import find_saved_model

    path = find_saved_model(model_path)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["caption_pixels"]
    return (lambda images: signature(images=tf.convert_to_tensor(images, tf.float32))["token_ids"]), path


def find_blind_baseline(model_path: str) -> str | None:
    """The image-blind baseline's `captioner.keras` that a retrain wrote next to the model
    (`<workdir>/retrain/blind/`, for --model=<workdir> or <workdir>/retrain), or None."""
    for candidate in (os.path.join(model_path, "retrain", "blind", "captioner.keras"),
                      os.path.join(model_path, "blind", "captioner.keras")):
        if os.path.isfile(candidate):
            return candidate
    return None
