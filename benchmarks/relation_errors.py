"""What a captioner says about the relation in two-group scenes of capnas_shapes: true, the inverse of a true
relation (a wrong direction), or a relation on the other axis only (not learned), and which relation words it uses.

    python benchmarks/relation_errors.py --model=runs/quickstart --split=test

Captions every image of the split greedily with `<model>/retrain/captioner.keras` and aligns each caption to
its scene with `capnas_tf.data.shapes_content.score_caption`.
"""
import argparse
import collections
import os

import keras

import capnas_tf  # noqa: F401  (registers the captioner's classes)
from capnas_tf.config import DataConfig
from capnas_tf.data import shapes, shapes_content
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.data.text import Vocabulary
from capnas_tf.evaluation import caption_dataset


def relation_kind(caption: str, scene: dict) -> str:
    """"right", "inverse", "other axis", "no relation", or "groups not aligned" for a two-group scene."""
    score = shapes_content.score_caption(caption, scene)
    if score.parsed is None:
        return "unparsed"
    if score.parsed.relation is None:
        return "no relation"
    if len(score.alignment) != 2 or None in score.alignment:
        return "groups not aligned"
    true = shapes_content.true_relations(scene, *score.alignment)
    if score.parsed.relation in true:
        return "right"
    return "inverse" if shapes.INVERSE_RELATION[score.parsed.relation] in true else "other axis"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/quickstart", help="a retrain workdir (its retrain/captioner.keras)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    captioner = keras.saving.load_model(os.path.join(args.model, "retrain", "captioner.keras"))
    config = DataConfig()
    vocab = Vocabulary.load(os.path.join(args.model, "vocab.txt"), max_len=config.max_caption_len)
    data = load_caption_data(config, None, vocab=vocab, log=lambda *a: None)
    captions = caption_dataset(captioner, data.eval_dataset(args.split), data.vocab)
    scenes = data.scenes(args.split)
    kinds, words = collections.Counter(), collections.Counter()
    for image_id, caption in captions.items():
        if scenes[image_id].get("relation") is None:
            continue
        kinds[relation_kind(caption, scenes[image_id])] += 1
        parsed = shapes_content.parse_caption(caption)
        words[parsed.relation if parsed and parsed.relation else "none"] += 1
    print(f"{sum(kinds.values())} two-group scenes of {args.split}:", dict(kinds.most_common()))
    print("relations said:", dict(words.most_common()))


if __name__ == "__main__":
    main()
