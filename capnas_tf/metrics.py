"""Caption metrics: the COCO leaderboard scores, and cheap proxies for per-epoch validation.

`score_captions` computes BLEU-1…4, METEOR, ROUGE-L and CIDEr exactly as the COCO caption
evaluation server does, through pycocoevalcap: captions are lower-cased and split by the Stanford
PTB tokenizer with punctuation removed, then scored by `Bleu(4)`, `Meteor`, `Rouge` and `Cider`
(pycocoevalcap's `Cider` is CIDEr-D: Gaussian length penalty, clipped counts, ×10). The PTB
tokenizer and METEOR are Java programs, so Java must be on PATH. SPICE is not offered: it needs a
Stanford CoreNLP model download at first use.

The in-graph proxies are `masked_token_accuracy` / `TokenAccuracy` (teacher-forced next-token
accuracy) and `keras_hub_bleu` (`keras_hub.metrics.Bleu`). Beware that the two BLEUs differ in
their brevity penalty BP = min(1, exp(1 − r/c)), c = total candidate length:

  - pycocoevalcap (`Bleu.compute_score(option="closest")`): r sums, per image, the reference
    length *closest* to the candidate's length (ties go to the shorter reference);
  - keras-hub (`keras_hub.metrics.Bleu`): r sums the *shortest* reference length per image,

so keras-hub's BLEU is never below pycocoevalcap's on the same tokens, and is strictly above
whenever a closest reference is longer than the candidate and the corpus is short overall. Use
the proxy for trends only; report `score_captions`.
"""
from __future__ import annotations

import shutil
from typing import Iterable, Mapping, Sequence

import keras
import tensorflow as tf

COCO_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_SCORER_GROUPS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
ALL_METRIC_GROUPS = _SCORER_GROUPS


def _require_java(purpose: str) -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            f"score_captions: {purpose} runs Java through pycocoevalcap, but no `java` executable "
            "was found on PATH. Install a Java runtime (e.g. `apt-get install "
            "default-jre-headless`; Java 8 or newer) or pass `metrics=` without METEOR."
        )


def _check_ids(predictions: Mapping, references: Mapping) -> None:
    missing = sorted(set(predictions) - set(references), key=str)
    unpredicted = sorted(set(references) - set(predictions), key=str)
    if missing or unpredicted:
        raise ValueError(
            "score_captions: predictions and references must cover the same image ids; "
            f"ids without references: {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"ids without a prediction: {unpredicted[:5]}{'…' if len(unpredicted) > 5 else ''}."
        )
    for image_id, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"score_captions: references[{image_id!r}] must be a non-empty list of strings; "
                f"received {refs!r}."
            )
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise ValueError(
                f"score_captions: predictions[{image_id!r}] must be one string; received "
                f"{type(caption).__name__}."
            )


def _ptb_tokenize(captions: Mapping[object, Iterable[str]]) -> dict:
    """{id: [str]} → {id: [lower-cased, PTB-tokenised, punctuation-free str]} (Java)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize(
        {image_id: [{"caption": c} for c in caps] for image_id, caps in captions.items()}
    )


def _score_group(group: str, gts: dict, res: dict) -> dict:
    if group == "BLEU":
        from pycocoevalcap.bleu.bleu import Bleu

        scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
        return {f"BLEU-{n + 1}": float(s) for n, s in enumerate(scores)}
    if group == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        score, _ = Meteor().compute_score(gts, res)
        return {"METEOR": float(score)}
    if group == "ROUGE-L":
        from pycocoevalcap.rouge.rouge import Rouge

        score, _ = Rouge().compute_score(gts, res)
        return {"ROUGE-L": float(score)}
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(gts, res)
    return {"CIDEr": float(score)}


def score_captions(
    predictions: Mapping[object, str],
    references: Mapping[object, Sequence[str]],
    *,
    metrics: Sequence[str] = _SCORER_GROUPS,
) -> dict[str, float]:
    """COCO caption metrics of one predicted caption per image against its references.

    Args:
      predictions: {image_id: caption}.
      references: {image_id: [reference caption, …]}; the same ids as `predictions`.
      metrics: which scorer groups to run, from ("BLEU", "METEOR", "ROUGE-L", "CIDEr");
        by default all of them.

    Returns:
      {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} → corpus score
      (fractions, not percentages; CIDEr is on pycocoevalcap's ×10 scale), restricted to the
      requested groups.

    Raises:
      RuntimeError: Java is not installed.
      ValueError: ids or caption types do not match.
    """
    unknown = [m for m in metrics if m not in _SCORER_GROUPS]
    if unknown:
        raise ValueError(
            f"score_captions: unknown metrics {unknown}; expected a subset of {_SCORER_GROUPS}."
        )
    _check_ids(predictions, references)
    _require_java("the PTB tokenizer" + (" and METEOR" if "METEOR" in metrics else ""))
    # One tokenizer run (one JVM start) for both sides; the tags keep them apart.
    tagged = {("ref", i): list(refs) for i, refs in references.items()}
    tagged.update({("res", i): [caption] for i, caption in predictions.items()})
    tokenized = _ptb_tokenize(tagged)
    gts = {i: tokenized[("ref", i)] for i in references}
    res = {i: tokenized[("res", i)] for i in predictions}
    scores: dict[str, float] = {}
    for group in _SCORER_GROUPS:
        if group in metrics:
            scores.update(_score_group(group, gts, res))
    return scores


def score_split(predictions: Mapping[int, str], references: Mapping[int, Sequence[str]], *,
                metrics: Sequence[str] = ALL_METRIC_GROUPS) -> dict[str, float]:
    """COCO metrics of `predictions` against the references of the same image ids."""
    return score_captions(predictions, {i: list(references[i]) for i in predictions}, metrics=tuple(metrics))


def score_many(jobs: Mapping[str, tuple[Mapping, Mapping]], *, metrics: Sequence[str] = ALL_METRIC_GROUPS
               ) -> dict[str, dict[str, float]]:
    """Scores several (predictions, references) pairs, each as its own corpus.

    Equal to `score_split` per job, but METEOR runs in a single JVM for all jobs: its start-up
    (`java -Xmx2G`, ~15 s) dominates, and several JVMs at once only compete for the cores. The
    other scorers go through `score_captions` as usual.
    """
    others = tuple(m for m in metrics if m != "METEOR")
    results = {name: (score_split(preds, refs, metrics=others) if others else {})
               for name, (preds, refs) in jobs.items()}
    if "METEOR" in metrics:
        for name, value in _meteor_many(jobs).items():
            results[name]["METEOR"] = value
    order = {m: k for k, m in enumerate(("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"))}
    return {name: dict(sorted(values.items(), key=lambda kv: order[kv[0]])) for name, values in results.items()}


def _meteor_many(jobs: Mapping[str, tuple[Mapping, Mapping]]) -> dict[str, float]:
    """METEOR of each job from one Meteor process (each `compute_score` aggregates only its own segments)."""
    from pycocoevalcap.meteor.meteor import Meteor

    _require_java("METEOR")
    tagged = {}
    for name, (preds, refs) in jobs.items():
        refs = {i: list(refs[i]) for i in preds}
        _check_ids(preds, refs)
        tagged.update({(name, "ref", i): r for i, r in refs.items()})
        tagged.update({(name, "res", i): [c] for i, c in preds.items()})
    tokenized = _ptb_tokenize(tagged)  # one JVM for every job's captions
    meteor = Meteor()
    try:
        return {name: float(meteor.compute_score({i: tokenized[(name, "ref", i)] for i in preds},
                                                 {i: tokenized[(name, "res", i)] for i in preds})[0])
                for name, (preds, _) in jobs.items()}
    finally:
        del meteor


def masked_token_accuracy(logits, targets, *, pad_id: int = 0):
    """Teacher-forced next-token accuracy over the non-pad targets.

    Args:
      logits: `[B, T, V]`.
      targets: int `[B, T]` (`tokens[:, 1:]`).
      pad_id: the id not counted.

    Returns:
      float32 scalar: #(argmax z_{b,t} = y_{b,t}, y_{b,t} ≠ pad) / #(y_{b,t} ≠ pad), 0 if none.
    """
    correct, count = _accuracy_counts(logits, targets, pad_id)
    return correct / tf.maximum(count, 1.0)


def _accuracy_counts(logits, targets, pad_id):
    mask = tf.cast(tf.not_equal(targets, pad_id), tf.float32)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    hit = tf.cast(tf.equal(predicted, tf.cast(targets, tf.int32)), tf.float32)
    return tf.reduce_sum(hit * mask), tf.reduce_sum(mask)


@keras.saving.register_keras_serializable(package="capnas_tf")
class TokenAccuracy(keras.metrics.Metric):
    """Accumulated `masked_token_accuracy` over batches (counts tokens, not batch means).

    Args:
      pad_id: the target id that is not counted.
      name: metric name.

    Call arguments (`update_state`):
      y_true: int `[B, T]` targets.
      y_pred: `[B, T, V]` logits.
    """

    def __init__(self, pad_id: int = 0, name: str = "token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = int(pad_id)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("TokenAccuracy: sample_weight is not supported; pad targets instead.")
        correct, count = _accuracy_counts(y_pred, y_true, self.pad_id)
        self.correct.assign_add(correct)
        self.count.assign_add(count)

    def result(self):
        return self.correct / tf.maximum(self.count, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


def keras_hub_bleu(max_order: int = 4, **kwargs):
    """`keras_hub.metrics.Bleu`, a streaming corpus BLEU over detokenised strings.

    It runs as a `tf.py_function` (fine in `fit`/`evaluate`, not under XLA) and uses the
    *shortest* reference length in its brevity penalty where pycocoevalcap uses the *closest*
    (see the module docstring), and SacreBLEU's 13a tokenizer instead of the PTB tokenizer.

    Args:
      max_order: the largest n-gram order.
      **kwargs: passed to `keras_hub.metrics.Bleu` (`tokenizer`, `smooth`, `name`).

    Returns:
      A `keras_hub.metrics.Bleu` whose `update_state(y_true [B, R] str, y_pred [B] str)` takes R
      references per caption.
    """
    import keras_hub

    return keras_hub.metrics.Bleu(max_order=max_order, **kwargs)
