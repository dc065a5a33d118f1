"""Caption diversity and the leave-one-out reference level, checked exactly on tiny hand-made data
(the reference level against real pycocoevalcap scores)."""
import pytest

from capnas_tf.diagnostics import (
    caption_diversity,
    leave_one_out_jobs,
    mean_over_jobs,
    reference_level,
)
from capnas_tf.metrics import score_split


def test_caption_diversity_counts_normalised_captions_and_words():
    predictions = {1: "A dog runs.", 2: "a dog, runs", 3: "A cat sits on a mat!"}
    references = {
        1: ["a dog is running", "The dog runs"],
        2: ["a dog runs fast"],
        3: ["a cat on the floor"],
        4: ["zebra grazing"],  # not predicted: its words are not part of the reference vocabulary
    }
    # captions: "a dog runs" (twice), "a cat sits on a mat" → 2 distinct of 3
    # prediction words: a dog runs cat sits on mat (7)
    # reference words of 1–3: a dog is running the runs fast cat on floor (10)
    # shared: a dog runs cat on (5); outside the references: sits mat (2)
    assert caption_diversity(predictions, references) == {
        "images": 3,
        "distinct_captions": 2,
        "distinct_caption_ratio": 2 / 3,
        "vocabulary_used": 7,
        "reference_vocabulary": 10,
        "vocabulary_share": 0.5,
        "words_outside_references": 2,
    }


def test_leave_one_out_jobs_uses_the_smallest_reference_count_and_drops_single_references():
    references = {1: ["a", "b", "c"], 2: ["d", "e", "f", "g"], 3: ["h"]}
    assert leave_one_out_jobs(references) == {
        "leave_out_0": ({1: "a", 2: "d"}, {1: ["b", "c"], 2: ["e", "f", "g"]}),
        "leave_out_1": ({1: "b", 2: "e"}, {1: ["a", "c"], 2: ["d", "f", "g"]}),
        "leave_out_2": ({1: "c", 2: "f"}, {1: ["a", "b"], 2: ["d", "e", "g"]}),
    }
    with pytest.raises(ValueError, match="two or more references"):
        leave_one_out_jobs({1: ["only one"]})


def test_mean_over_jobs_averages_each_metric_whatever_the_keys():
    scores = {("reference", "val", 0): {"BLEU-1": 0.5, "CIDEr": 1.0},
              ("reference", "val", 1): {"BLEU-1": 0.25, "CIDEr": 2.0}}
    assert mean_over_jobs(scores) == {"BLEU-1": 0.375, "CIDEr": 1.5}


REFERENCES = {
    1: ["a dog is running on the grass", "the dog runs", "a brown dog runs on green grass"],
    2: ["two cats are sleeping on a sofa", "two cats asleep now", "two small cats sleeping together"],
    3: ["a red bus on a street", "a bus driving down the road", "a red double decker bus", "bus"],
    4: ["a lone reference"],
}


def test_reference_level_makes_one_score_many_call_with_every_job():
    calls = []

    def fake_score_many(jobs, *, metrics):
        calls.append((dict(jobs), metrics))
        return {name: {"BLEU-1": float(k)} for k, name in enumerate(jobs)}

    level = reference_level(REFERENCES, metrics=("BLEU",), score_many=fake_score_many)
    assert calls == [(leave_one_out_jobs(REFERENCES), ("BLEU",))]
    assert level == {"BLEU-1": 1.0, "images": 3, "references_per_image": 3}


def test_reference_level_is_the_mean_of_the_separate_leave_one_out_scores():
    metrics = ("BLEU", "CIDEr")
    level = reference_level(REFERENCES, metrics=metrics)
    separate = [score_split(preds, refs, metrics=metrics)
                for preds, refs in leave_one_out_jobs(REFERENCES).values()]
    assert set(level) == set(separate[0]) | {"images", "references_per_image"}
    for name in separate[0]:
        assert level[name] == pytest.approx(sum(s[name] for s in separate) / 3, rel=1e-12)
    assert level["images"] == 3 and level["references_per_image"] == 3


def test_identical_references_reach_bleu_1_of_one():
    references = {1: ["a dog runs on grass"] * 3, 2: ["Two cats sleep on a sofa."] * 3}
    level = reference_level(references, metrics=("BLEU",))
    assert level["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
