"""The per-epoch validation caption score of the search: it scores the genotype's path on the shared
weights (COCO scores, and content accuracy where the data has scenes), and it leaves every variable of
the search as it found it."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf import evaluation
from capnas_tf.data.shapes_content import content_accuracy
from capnas_tf.metrics import score_split
from capnas_tf.search.validation import CONTENT_KEYS, make_path_caption_fn, make_validation_scorer
from capnas_tf.search_space.genotypes import genotype_op_weights, sample_genotype
from tests.search.conftest import TINY_CAPTION_LEN


def test_scoring_a_genotype_changes_no_variable_and_matches_its_captions(tiny_data, tiny_models):
    encoder = tiny_models.encoder
    genotype = sample_genotype(np.random.default_rng(0), primitives=encoder.primitives,
                               num_nodes=encoder.num_nodes)
    everything = tiny_models.encoder.variables + tiny_models.decoder.variables
    before = [np.array(v.value) for v in everything]

    score = make_validation_scorer(tiny_models, tiny_data, num_images=6, batch_size=4,
                                   max_caption_len=TINY_CAPTION_LEN)
    scores = score(genotype)

    # BN moving statistics and dropout seed states included: the score must not perturb the search.
    for variable, value in zip(everything, before):
        np.testing.assert_array_equal(np.array(variable.value), value, err_msg=variable.path)
    content_keys = {f"val/content/{k}" for k in CONTENT_KEYS}
    assert set(scores) == {"val/BLEU-4", "val/CIDEr"} | content_keys  # capnas_shapes has scenes
    # The same numbers from the genotype's captions computed directly.
    w_normal, w_reduce = (tf.constant(w, tf.float32) for w in genotype_op_weights(genotype, encoder.primitives))
    caption_ids = make_path_caption_fn(tiny_models, max_caption_len=TINY_CAPTION_LEN)
    predictions = evaluation.caption_dataset(lambda images: caption_ids(images, w_normal, w_reduce),
                                           tiny_data.eval_dataset("validation", 4), tiny_data.vocab, max_images=6)
    assert len(predictions) == 6
    expected = score_split(predictions, tiny_data.references("validation"), metrics=("BLEU", "CIDEr"))
    content = content_accuracy(predictions, tiny_data.scenes("validation"))
    assert scores == pytest.approx({"val/BLEU-4": expected["BLEU-4"], "val/CIDEr": expected["CIDEr"],
                                    **{f"val/content/{k}": content[k] for k in CONTENT_KEYS}}, nan_ok=True)
    assert {"count", "colour", "shape", "relation", "entirely_correct"} <= set(CONTENT_KEYS)
