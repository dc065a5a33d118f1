"""Command line: caption and score the evaluation splits of a trained captioner.

    python -m capnas_tf.evaluate --model=runs/quickstart --dataset=capnas_shapes --eval_splits=test,test_novel

`--model` is a retrain workdir (its `retrain/captioner.keras`, or else its SavedModel export) or an
export directory holding a SavedModel (`saved_model.pb`, or versions `1/`, `2/`, … under it).

Writes `<output_dir>/metrics.json` (each split's scores, the `reference_level` of the human references,
and those of the image-blind baseline, `blind_baseline`, where a retrain workdir trained one) and
`samples.png`. The scoring is the library `capnas_tf.evaluation`'s; this module only reads flags.
"""
from __future__ import annotations

import os

from capnas_tf import io_utils
from capnas_tf.evaluation import (caption_dataset, evaluation_splits, find_blind_baseline, load_model_for_evaluation,
                                  save_sample_grid, score_caption_sets, summary_line)


def main(argv):
    del argv
    from absl import flags as absl_flags

    from capnas_tf import flags as capnas_flags
    from capnas_tf.data.pipeline import load_caption_data
    from capnas_tf.data.text import Vocabulary

    FLAGS = absl_flags.FLAGS
    if not FLAGS["verbosity"].present:  # TFDS logs every file it reads at INFO (as capnas_tf.train)
        from absl import logging

        logging.set_verbosity(logging.WARNING)
    capnas_flags.import_plugins()  # a dataset registered by a plugin
    data_config = capnas_flags.data_config_from_flags()
    if FLAGS.capnas_shapes_config == "tiny":
        import dataclasses

        from capnas_tf.data.shapes_tfds import TINY_SHAPES_CONFIG

        data_config = dataclasses.replace(data_config, shapes=TINY_SHAPES_CONFIG)
    vocab_path = FLAGS.vocab or _find_vocab(FLAGS.model)
    vocab = Vocabulary.load(vocab_path, max_len=data_config.max_caption_len)
    data = load_caption_data(data_config, None, vocab=vocab)
    captioner, source = load_model_for_evaluation(FLAGS.model)
    blind_path = find_blind_baseline(FLAGS.model)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model, "evaluation")
    splits = FLAGS.eval_splits or evaluation_splits(data)

    def captions_of(model) -> dict:
        return {s: caption_dataset(model, data.eval_dataset(s), data.vocab, beam_width=FLAGS.beam_width,
                                   max_images=FLAGS.max_eval_images) for s in splits}

    caption_sets = {"model": captions_of(captioner)}
    if blind_path is not None:
        blind, _ = load_model_for_evaluation(blind_path)
        caption_sets["blind"] = captions_of(blind)
    scores, reference_level = score_caption_sets(caption_sets, data, metrics=FLAGS.final_metrics)
    metrics = {"model": source, "beam_width": FLAGS.beam_width, "splits": scores["model"],
               "reference_level": reference_level}
    if blind_path is not None:
        metrics["blind_baseline"] = {"model": blind_path, "splits": scores["blind"]}
    io_utils.atomic_write_json(os.path.join(output_dir, "metrics.json"), metrics)
    save_sample_grid(os.path.join(output_dir, "samples.png"), data, caption_sets["model"][splits[0]],
                     split=splits[0])
    for split in splits:
        print(f"{split}: {summary_line(scores['model'][split])}")
        if blind_path is not None:
            print(f"{split}: blind baseline {summary_line(scores['blind'][split])}")
        if split in reference_level:
            print(f"{split}: references (each against the other {reference_level[split]['scored_against']}) "
                  f"{summary_line(reference_level[split])}")
    print(f"Wrote {output_dir}/metrics.json and samples.png (model: {source}"
          + (f"; blind baseline: {blind_path})" if blind_path else ")"))


def _find_vocab(model_path: str) -> str:
    for candidate in ("vocab.txt", os.path.join("export", "vocab.txt"), os.path.join("..", "vocab.txt")):
        path = os.path.join(model_path, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"--model={model_path!r}: no vocab.txt next to it; pass --vocab.")


def _define_cli_flags():
    from absl import flags as absl_flags

    from capnas_tf import flags as _training_flags  # noqa: F401  (data flags, --beam_width, …)

    absl_flags.DEFINE_string("model", None, "Retrain workdir or export directory (SavedModel). A retrain workdir's "
                             "image-blind baseline (retrain/blind/captioner.keras) is evaluated beside it.",
                             required=True)
    absl_flags.DEFINE_string("vocab", None, "vocab.txt (default: found next to --model).")
    absl_flags.DEFINE_list("eval_splits", None, "Splits to evaluate (default: test and test_novel if present).")
    absl_flags.DEFINE_enum("capnas_shapes_config", "default", ["default", "tiny"],
                           "capnas_shapes generation: the default ShapesConfig or the tests' TINY_SHAPES_CONFIG.")
    absl_flags.DEFINE_string("output_dir", None, "Where metrics.json and samples.png go (default <model>/evaluation).")
    # --help: these, the decoding and scoring flags of capnas_tf.flags, and its data section.
    own = ("model", "vocab", "eval_splits", "capnas_shapes_config", "output_dir", "plugins")
    data = _training_flags.HELP_SECTIONS["data"]
    _training_flags.use_sectioned_help({"evaluate": own + ("beam_width", "max_eval_images", "final_metrics"),
                                        "data": data.flags})


if __name__ == "__main__":
    from absl import app

    _define_cli_flags()
    app.run(main)
