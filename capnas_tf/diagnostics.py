"""Dataset-independent caption diagnostics: how varied the predicted captions are, and the score
that the references themselves reach (the "human" level of the COCO leaderboard).

Both put a model's COCO scores in context without another model: a captioner that emits the same
few captions for every image can still score a fair BLEU, and a score means little until it is
compared with what one human caption scores against the others.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from capnas_tf import metrics as caption_metrics
from capnas_tf.data.text import caption_words, normalize_caption

ALL_METRIC_GROUPS = caption_metrics.ALL_METRIC_GROUPS


def caption_diversity(predictions: Mapping[int, str],
                      references: Mapping[int, Sequence[str]]) -> dict:
    """How many different captions and words the predictions use.

    Captions and words are compared after `normalize_caption`, so captions differing only in
    case or punctuation count once; words are the space-separated pieces.

    Args:
      predictions: {image_id: caption}, n ≥ 1 images.
      references: {image_id: [reference, …]}, covering every id of `predictions` (other ids are
        ignored).

    Returns:
      {"images": n, "distinct_captions": k, "distinct_caption_ratio": k / n,
       "vocabulary_used": distinct words of the predictions,
       "reference_vocabulary": distinct words of the references of the same images,
       "vocabulary_share": |prediction words ∩ reference words| / |reference words| (0 if the
         references have no words),
       "words_outside_references": distinct prediction words found in no reference of these images}.
    """
    if not predictions:
        raise ValueError("caption_diversity: predictions is empty.")
    missing = [i for i in predictions if i not in references]
    if missing:
        raise ValueError(f"caption_diversity: no references for image ids {missing[:5]}.")
    captions = {normalize_caption(c) for c in predictions.values()}
    used = {w for c in predictions.values() for w in caption_words(c)}
    reference_words = {w for i in predictions for r in references[i] for w in caption_words(r)}
    shared = used & reference_words
    return {
        "images": len(predictions),
        "distinct_captions": len(captions),
        "distinct_caption_ratio": len(captions) / len(predictions),
        "vocabulary_used": len(used),
        "reference_vocabulary": len(reference_words),
        "vocabulary_share": len(shared) / len(reference_words) if reference_words else 0.0,
        "words_outside_references": len(used - reference_words),
    }


def _multi_reference(references: Mapping[int, Sequence[str]]) -> tuple[dict[int, list[str]], int]:
    kept = {i: list(refs) for i, refs in references.items() if len(refs) >= 2}
    if not kept:
        raise ValueError("leave_one_out_jobs: no image has two or more references.")
    return kept, min(len(refs) for refs in kept.values())


def leave_one_out_jobs(references: Mapping[int, Sequence[str]]
                       ) -> dict[str, tuple[dict[int, str], dict[int, list[str]]]]:
    """The `score_many` jobs of the reference level: each reference scored against the others.

    R is the smallest number of references of an image; images with fewer than two references
    are left out (nothing to score them against). Job j (j = 0 … R−1), named "leave_out_{j}",
    predicts each image's reference j and scores it against that image's other references.

    Returns:
      {"leave_out_{j}": (predictions {image_id: refs[j]}, references {image_id: refs without j})},
      in order of j.
    """
    kept, r = _multi_reference(references)
    return {
        f"leave_out_{j}": ({i: refs[j] for i, refs in kept.items()},
                           {i: refs[:j] + refs[j + 1:] for i, refs in kept.items()})
        for j in range(r)
    }


def mean_over_jobs(scores: Mapping[Hashable, Mapping[str, float]]) -> dict[str, float]:
    """Per-metric mean of several jobs' scores (e.g. the leave-one-out jobs out of a caller's
    own `score_many` result); every job must report the same metrics."""
    if not scores:
        raise ValueError("mean_over_jobs: no scores.")
    names = [list(s) for s in scores.values()]
    if any(set(n) != set(names[0]) for n in names):
        raise ValueError(f"mean_over_jobs: jobs report different metrics: {names}.")
    return {m: sum(float(s[m]) for s in scores.values()) / len(scores) for m in names[0]}


def reference_level(references: Mapping[int, Sequence[str]], *,
                    metrics: Sequence[str] = ALL_METRIC_GROUPS,
                    score_many=caption_metrics.score_many) -> dict[str, float]:
    """The COCO scores of human captions: the mean over j of reference j scored against the
    other references of its image (`leave_one_out_jobs`), all jobs in one `score_many` call so
    METEOR starts one JVM.

    This is the standard human-performance estimate, and it is slightly biased low: a reference
    is scored against R−1 references where a model is scored against R, and BLEU and CIDEr rise
    with the number of references.

    Args:
      references: {image_id: [reference, …]}; images with fewer than two are left out.
      metrics: the scorer groups, as for `score_many`.
      score_many: the scorer (`capnas_tf.metrics.score_many`; replaceable for tests).

    Returns:
      {metric: mean score, "images": images used, "references_per_image": R}.
    """
    jobs = leave_one_out_jobs(references)
    level = mean_over_jobs(score_many(jobs, metrics=tuple(metrics)))
    first_predictions = next(iter(jobs.values()))[0]
    return {**level, "images": len(first_predictions), "references_per_image": len(jobs)}
