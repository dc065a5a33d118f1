"""The search's validation caption score, once per epoch.

A loss says how well W (or E, F) predicts the next reference token; a caption score says how good the
captions are. After each epoch the architecture found so far — the strategy's genotype, as one-hot op
weights on the shared supernet weights E, F (the same path for every strategy) — greedily captions
the first N validation images, and BLEU-4 and CIDEr against their references go to TensorBoard
(`val/BLEU-4`, `val/CIDEr`) and the log; on datasets with scenes (capnas_shapes) so does the content
accuracy of the captions (`val/content/colour`, …, `val/content/entirely_correct`; see
`data.shapes_content`), which tells a genotype that reads the image from one that learned the caption
templates. It is a score of the child on shared weights, not of the retrained captioner:
weight-shared children are known to rank worse than retrained ones.

The captioning runs under `keras.StatelessScope`, so it changes no variable (BatchNorm moving
statistics, dropout seeds): a run with the score on ends with the same A as one with it off.
"""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from capnas_tf.search.captioning import SearchModels, path_greedy_ids

SCORE_METRICS = ("BLEU", "CIDEr")  # no METEOR: its JVM start-up would cost more than the decoding
# content_accuracy keys reported as "val/content/<key>" where the data has scenes
CONTENT_KEYS = ("count", "colour", "shape", "size", "relation", "entirely_correct", "parsed")


def make_path_caption_fn(models: SearchModels, *, max_caption_len: int) -> Callable:
    """A `tf.function` (images [B, S, S, 3], op_weights) → token ids [B, L − 1] of the supernet
    captioner on the path `op_weights`; op weights are arguments, so a new genotype does not retrace."""

    @tf.function(autograph=False)  # explicit tf.while_loop; see loop.make_step_function
    def caption_ids(images, w_normal, w_reduce):
        with keras.StatelessScope():  # updates of BN statistics and dropout seeds are dropped
            ids = path_greedy_ids(models, images, (w_normal, w_reduce), max_caption_len)
        return ids

    return caption_ids


def make_validation_scorer(models: SearchModels, data, *, num_images: int, batch_size: int,
                           max_caption_len: int) -> Callable:
    """genotype → {"val/BLEU-4", "val/CIDEr"} on the first `num_images` validation images of `data`
    (a `CaptionData`), and "val/content/<key>" for the keys of `CONTENT_KEYS` where `data` has scenes."""
    from capnas_tf import evaluation
    from capnas_tf.metrics import score_split
    from capnas_tf.data.shapes_content import content_accuracy
    from capnas_tf.search_space.genotypes import genotype_op_weights

    caption_ids = make_path_caption_fn(models, max_caption_len=max_caption_len)
    batches = data.eval_dataset("validation", batch_size)
    references = data.references("validation")
    scenes = data.scenes("validation")
    primitives = models.encoder.primitives

    def score(genotype) -> dict:
        w_normal, w_reduce = (tf.constant(w, tf.float32) for w in genotype_op_weights(genotype, primitives))
        predictions = evaluation.caption_dataset(lambda images: caption_ids(images, w_normal, w_reduce),
                                                 batches, data.vocab, max_images=num_images)
        scores = score_split(predictions, references, metrics=SCORE_METRICS)
        result = {"val/BLEU-4": scores["BLEU-4"], "val/CIDEr": scores["CIDEr"]}
        if scenes is not None:
            content = content_accuracy(predictions, scenes)
            result.update({f"val/content/{k}": content[k] for k in CONTENT_KEYS})
        return result

    return score
