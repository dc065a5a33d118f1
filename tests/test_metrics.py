"""COCO caption metrics through pycocoevalcap, checked by hand on a small example, and the proxies."""
import math

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.metrics import (
    COCO_METRICS,
    TokenAccuracy,
    keras_hub_bleu,
    masked_token_accuracy,
    score_captions,
)

# Two images, three references each. Punctuation and capitals are removed by the PTB tokenizer.
PREDICTIONS = {1: "A dog runs on a lawn.", 2: "Two cats sleeping"}
REFERENCES = {
    1: ["a dog is running on the grass", "The dog runs", "a brown dog runs on green grass"],
    2: ["two cats are sleeping on a sofa", "two cats asleep now", "two small cats sleeping together"],
}
# By hand, after tokenisation:
# image 1, "a dog runs on a lawn" (6 words)
#   unigrams: a ×2 (clipped to 1: no reference has two), dog, runs, on ✓; lawn ✗ → 4 / 6
#   bigrams: a-dog, dog-runs, runs-on ✓; on-a, a-lawn ✗ → 3 / 5
#   reference lengths 7, 3, 7 → closest to 6 is 7 (shortest would be 3)
# image 2, "two cats sleeping" (3 words)
#   unigrams 3 / 3; bigrams: two-cats (ref 1), cats-sleeping (ref 3) → 2 / 2
#   reference lengths 7, 4, 5 → closest to 3 is 4 (also the shortest)
# corpus: c = 9 candidate words, r = 7 + 4 = 11 → BP = exp(1 − 11/9)
P1 = (4 + 3) / (6 + 3)
P2 = (3 + 2) / (5 + 2)
BP_CLOSEST = math.exp(1 - 11 / 9)
BP_SHORTEST = 1.0  # r = 3 + 4 = 7 < c = 9


def test_bleu_matches_the_hand_computed_counts_with_closest_reference_length():
    scores = score_captions(PREDICTIONS, REFERENCES, metrics=("BLEU",))
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    assert scores["BLEU-1"] == pytest.approx(BP_CLOSEST * P1, rel=1e-6)
    assert scores["BLEU-2"] == pytest.approx(BP_CLOSEST * math.sqrt(P1 * P2), rel=1e-6)


def test_keras_hub_bleu_uses_the_shortest_reference_and_so_scores_higher():
    bleu = keras_hub_bleu(max_order=2)
    refs = [[r.lower() for r in REFERENCES[i]] for i in (1, 2)]
    preds = ["a dog runs on a lawn", "two cats sleeping"]
    bleu.update_state(tf.constant(refs), tf.constant(preds))
    assert float(bleu.result()) == pytest.approx(BP_SHORTEST * math.sqrt(P1 * P2), rel=1e-5)
    coco = score_captions(PREDICTIONS, REFERENCES, metrics=("BLEU",))["BLEU-2"]
    # Same n-gram precisions, different brevity penalty: exactly the ratio of the two BPs.
    assert float(bleu.result()) * BP_CLOSEST / BP_SHORTEST == pytest.approx(coco, rel=1e-5)
    assert float(bleu.result()) > coco + 0.1


def test_all_coco_metrics_are_reported_and_a_perfect_caption_scores_higher():
    references = {**REFERENCES, 3: ["a red bus on a street", "a bus driving down the road"]}
    good = {**PREDICTIONS, 3: "a red bus on a street"}
    bad = {**PREDICTIONS, 3: "an elephant eating hay"}
    good_scores = score_captions(good, references)
    bad_scores = score_captions(bad, references, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert set(good_scores) == set(COCO_METRICS)
    assert all(0.0 <= good_scores[m] <= 1.0 for m in COCO_METRICS if m != "CIDEr")
    for metric in bad_scores:
        assert good_scores[metric] > bad_scores[metric], metric
    assert 0.0 < good_scores["METEOR"] < 1.0


def test_rouge_l_matches_pycocoevalcaps_definition_by_hand():
    # R_L = (1 + β²) P R / (R + β² P), β = 1.2, P and R the best LCS precision and recall over
    # the references. "the dog runs" vs "the dog is running" (LCS 2) and "a dog runs" (LCS 2).
    scores = score_captions(
        {1: "the dog runs"}, {1: ["the dog is running", "a dog runs"]}, metrics=("ROUGE-L",)
    )
    p, r, beta = 2 / 3, max(2 / 4, 2 / 3), 1.2
    assert scores["ROUGE-L"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p), rel=1e-9)


def test_mismatched_ids_are_reported():
    with pytest.raises(ValueError, match=r"ids without references: \[7\]"):
        score_captions({**PREDICTIONS, 7: "x"}, REFERENCES)
    with pytest.raises(ValueError, match=r"ids without a prediction: \[2\]"):
        score_captions({1: PREDICTIONS[1]}, REFERENCES)
    with pytest.raises(ValueError, match="must be a non-empty list"):
        score_captions(PREDICTIONS, {**REFERENCES, 2: "one string"})


def test_missing_java_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="no `java` executable"):
        score_captions(PREDICTIONS, REFERENCES)


def test_unknown_metric_names_are_rejected():
    with pytest.raises(ValueError, match="unknown metrics \\['SPICE'\\]"):
        score_captions(PREDICTIONS, REFERENCES, metrics=("SPICE",))


LOGITS = tf.one_hot([[3, 4, 5, 6], [3, 9, 0, 0]], 10)  # argmax per position
TARGETS = tf.constant([[3, 4, 7, 0], [3, 8, 0, 0]])  # non-pad: 3 ✓ 4 ✓ 7 ✗ | 3 ✓ 8 ✗


def test_token_accuracy_counts_only_non_pad_targets():
    assert float(masked_token_accuracy(LOGITS, TARGETS)) == pytest.approx(3 / 5)


def test_token_accuracy_metric_accumulates_tokens_over_batches():
    metric = TokenAccuracy()
    metric.update_state(TARGETS[:1], LOGITS[:1])  # 2 / 3
    metric.update_state(TARGETS[1:], LOGITS[1:])  # 1 / 2
    assert float(metric.result()) == pytest.approx(3 / 5)  # not the mean of batch means
    metric.reset_state()
    assert float(metric.result()) == 0.0
    clone = TokenAccuracy.from_config(metric.get_config())
    assert clone.pad_id == 0 and clone.name == "token_accuracy"


def test_token_accuracy_compiles_with_xla():
    compiled = tf.function(masked_token_accuracy, jit_compile=True)
    np.testing.assert_allclose(compiled(LOGITS, TARGETS), 3 / 5, rtol=1e-6)
