"""capnas_tf.evaluation captions every real image once (padding rows dropped), scores splits and draws the
sample grid; its CLI, `python -m capnas_tf.evaluate`, evaluates a retrain workdir or an export directory."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from capnas_tf.data.shapes_content import score_caption
from capnas_tf.decoders.decoding import decode_captions
from capnas_tf.evaluation import (CORRECT_COLOUR, WRONG_COLOUR, caption_dataset, evaluate_captioner, first_images,
                                  save_caption_grid, save_sample_grid)
from capnas_tf.metrics import score_split
from tests.retrain_fixtures import TINY_RETRAIN, retrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_caption_dataset_gives_one_caption_per_real_image_and_drops_padding():
    run = retrained()
    # 8 test images in batches of 3: the last batch carries one padding row of image_id −1.
    captions = caption_dataset(run.result.captioner, run.data.eval_dataset("test", 3), run.data.vocab)
    assert sorted(captions) == sorted(run.data.references("test"))
    assert -1 not in captions
    batch = next(iter(run.data.eval_dataset("test", 3)))
    ids, _ = decode_captions(run.result.captioner, batch["image"])
    first = batch["image_id"].numpy()[0]
    assert captions[first] == run.data.vocab.decode(ids.numpy()[0])


def test_caption_dataset_stops_after_max_images_and_accepts_an_ids_callable():
    run = retrained()
    calls = []

    def ids_fn(images):
        calls.append(images.shape[0])
        return np.tile(np.array([[4, 5, 2, 0]], np.int32), [images.shape[0], 1])

    captions = caption_dataset(ids_fn, run.data.eval_dataset("test", 4), run.data.vocab, max_images=5)
    assert len(captions) == 5 and calls == [4, 4]
    assert set(captions.values()) == {" ".join(run.data.vocab.tokens[4:6])}


def test_evaluate_captioner_scores_the_requested_splits_with_the_requested_metrics():
    run = retrained()
    scores = evaluate_captioner(run.result.captioner, run.data, splits=("test",), metrics=("CIDEr",),
                                beam_width=TINY_RETRAIN.beam_width)
    assert list(scores) == ["test"] and list(scores["test"]) == ["CIDEr"]
    with open(os.path.join(run.workdir, "retrain", "metrics.json")) as f:
        assert scores["test"]["CIDEr"] == pytest.approx(json.load(f)["model"]["test"]["CIDEr"])


def test_perfect_predictions_score_higher_than_a_constant_caption():
    references = {1: ["a red circle"], 2: ["a blue square"], 3: ["two green triangles"]}
    perfect = score_split({i: r[0] for i, r in references.items()}, references, metrics=("CIDEr",))
    constant = score_split({i: "a red circle" for i in references}, references, metrics=("CIDEr",))
    assert perfect["CIDEr"] > constant["CIDEr"]


def test_save_caption_grid_writes_a_png_and_checks_lengths(tmp_path):
    images = np.random.default_rng(0).uniform(size=[5, 16, 16, 3]).astype(np.float32)
    path = tmp_path / "grid.png"
    save_caption_grid(str(path), images, [f"caption {k}" for k in range(5)], [["ref a", "ref b"]] * 5, columns=3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height > 0  # 3 columns, 2 rows
    with pytest.raises(ValueError, match="5 images, 4 predictions"):
        save_caption_grid(str(path), images, ["x"] * 4, [["r"]] * 5)


def test_save_sample_grid_marks_each_caption_right_or_wrong_against_its_scene(tmp_path):
    """On capnas_shapes, a right caption gets a green title, a wrong one a red title and its errors in red."""
    run = retrained()
    ids = first_images(run.data, "test", 2)[1]
    references, scenes = run.data.references("test"), run.data.scenes("test")
    captions = {ids[0]: references[ids[0]][0], ids[1]: "one red circle"}  # a reference is right
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    save_caption_grid(str(plain), first_images(run.data, "test", 2)[0], [captions[i] for i in ids],
                      [references[i] for i in ids])
    save_sample_grid(str(marked), run.data, captions, split="test", count=2)
    assert score_caption(captions[ids[0]], scenes[ids[0]]).entirely_correct
    assert not score_caption(captions[ids[1]], scenes[ids[1]]).entirely_correct
    with Image.open(marked) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
        assert image.format == "PNG" and image.width > 200 and marked.stat().st_size > 5_000
    with Image.open(plain) as image:
        plain_pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)

    def count(colour, pixels):  # pixels within a small distance of an exact text colour
        rgb = np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=1) < 40).sum())

    assert count(CORRECT_COLOUR, pixels) > 20 and count(WRONG_COLOUR, pixels) > 20
    assert count(CORRECT_COLOUR, plain_pixels) < count(CORRECT_COLOUR, pixels)
    with pytest.raises(ValueError, match="2 images and 1 verdicts"):
        save_caption_grid(str(plain), np.zeros([2, 4, 4, 3]), ["a", "b"], [["r"]] * 2, verdicts=[(True, ())])


@pytest.mark.parametrize("which", [pytest.param("workdir", marks=pytest.mark.slow), "export"])  # ~23 s each
def test_evaluate_cli_writes_metrics_and_samples(tmp_path, which):
    run = retrained()
    model = run.workdir if which == "workdir" else os.path.join(run.workdir, "export")
    from tests.retrain_fixtures import tfds_dir

    args = [sys.executable, "-m", "capnas_tf.evaluate", f"--model={model}", f"--output_dir={tmp_path}",
            f"--data_dir={tfds_dir()}", "--image_size=16", "--min_word_count=1", "--batch_size=8",
            "--eval_splits=test", "--final_metrics=BLEU,CIDEr", "--capnas_shapes_config=tiny"]
    subprocess.run(args, check=True, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
                   capture_output=True)
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    with open(os.path.join(run.workdir, "retrain", "metrics.json")) as f:
        retrain_metrics = json.load(f)
    reference = retrain_metrics["model"]["test"]
    assert metrics["splits"]["test"]["CIDEr"] == pytest.approx(reference["CIDEr"], abs=1e-6)
    # content, diversity and the references' level, as the retrain wrote them for the same captions
    assert metrics["splits"]["test"]["content"] == pytest.approx(reference["content"], nan_ok=True)
    assert metrics["splits"]["test"]["diversity"] == reference["diversity"]
    assert list(metrics["reference_level"]) == ["test"]
    assert metrics["reference_level"]["test"]["content"]["entirely_correct"] == 1.0
    assert metrics["reference_level"]["test"]["CIDEr"] == pytest.approx(
        retrain_metrics["reference_level"]["test"]["CIDEr"])
    assert metrics["model"].endswith("captioner.keras" if which == "workdir" else os.path.join("saved_model", "1"))
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    if which == "workdir":  # the retrain's blind baseline is evaluated beside the model
        blind = metrics["blind_baseline"]
        assert blind["model"] == os.path.join(run.workdir, "retrain", "blind", "captioner.keras")
        assert blind["splits"]["test"]["CIDEr"] == pytest.approx(retrain_metrics["blind_baseline"]["test"]["CIDEr"])
        assert blind["splits"]["test"]["diversity"]["distinct_captions"] == 1
        assert set(blind["splits"]["test"]["content"]) >= {"colour", "entirely_correct"}
    else:  # an export directory has none
        assert "blind_baseline" not in metrics


@pytest.mark.slow
def test_score_many_equals_separate_score_captions_calls_including_meteor():
    from capnas_tf.metrics import score_many
    from capnas_tf.metrics import score_captions

    refs_a = {i: ["a red circle left of a blue square", "a red circle"] for i in range(10)}
    refs_b = {i: ["two green triangles", "green triangles on a dark background"] for i in range(6)}
    preds_a, preds_b = {i: "a red circle" for i in refs_a}, {i: "two green circles" for i in refs_b}
    many = score_many({"a": (preds_a, refs_a), "b": (preds_b, refs_b)})
    assert many["a"] == score_captions(preds_a, refs_a)
    assert many["b"] == score_captions(preds_b, refs_b)
