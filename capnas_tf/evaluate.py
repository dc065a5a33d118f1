"""Captioning evaluation splits and scoring them: the reusable half of retraining, and a CLI.

    captions = caption_dataset(captioner, data.eval_dataset("test"), vocab)   # {image_id: caption}
    scores = evaluate_captioner(captioner, data, splits=("test",))           # {"test": {"CIDEr": …}}

    python -m capnas_tf.evaluate --model=runs/quickstart --dataset=capnas_shapes --eval_splits=test,test_novel

`--model` is a retrain workdir (its `retrain/captioner.keras`, or else its SavedModel export) or an
export directory holding a SavedModel (`saved_model.pb`, or versions `1/`, `2/`, … under it).
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from capnas_tf import io_utils
from capnas_tf.decoders.decoding import beam_search, greedy_decode
from capnas_tf.metrics import ALL_METRIC_GROUPS, score_many, score_split  # noqa: F401  (re-exported)

CHEAP_METRIC_GROUPS = ("BLEU", "CIDEr")  # per-epoch validation: no METEOR JVM start-up


def decode_captions(captioner, images, *, beam_width: int = 1, max_len: int | None = None):
    """Caption token ids of a batch of images.

    Args:
      captioner: a `Captioner` (encoder + decoder with `initial_cache` / `decode_step`).
      images: float32 `[B, S, S, 3]` in [0, 1].
      beam_width: 1 = greedy decoding, K > 1 = beam search of width K.
      max_len: tokens to generate; default the decoder's `max_len` (L − 1).

    Returns:
      ids: int32 `[B, max_len]`, `w1 … <end> <pad> …`; scores: float32 `[B]`, log p of the caption.
    """
    max_len = max_len or captioner.decoder.max_len
    features = captioner.encode(images, training=False)
    if beam_width == 1:
        return greedy_decode(captioner.decoder, features, max_len=max_len)
    return beam_search(captioner.decoder, features, beam_width=beam_width, max_len=max_len)


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


# --- sample grid -------------------------------------------------------------------------------------

def save_caption_grid(path: str, images, predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                      columns: int = 4, max_references: int = 2) -> None:
    """Writes a PNG grid: each image with its generated caption (bold) and some references.

    Args:
      path: PNG file, written atomically.
      images: float `[N, S, S, 3]` in [0, 1] or uint8.
      predictions: N generated captions.
      references: N lists of reference captions (the first `max_references` are shown).
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
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k] if images.dtype == np.uint8 else np.clip(images[k], 0.0, 1.0), interpolation="nearest")
        text = "\n".join(textwrap.wrap("GEN: " + predictions[k], 38))
        refs = "\n".join("\n".join(textwrap.wrap("REF: " + r, 44)) for r in list(references[k])[:max_references])
        ax.set_title(text, fontsize=8, fontweight="bold", loc="left")
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
    """`save_caption_grid` of the first `count` images of `split` with their generated `captions`."""
    images, ids = first_images(data, split, count)
    references = data.references(split)
    save_caption_grid(path, images, [captions.get(i, "") for i in ids], [references[i] for i in ids])


# --- loading a trained model ----------------------------------------------------------------------------

def load_model_for_evaluation(model_path: str):
    """(captioner or ids callable, description) for a retrain workdir or an export dir.

    Prefers the Keras captioner (`retrain/captioner.keras`), else the SavedModel's `caption_pixels`.
    """
    for candidate in (os.path.join(model_path, "retrain", "captioner.keras"),
                      os.path.join(model_path, "captioner.keras"), model_path):
        if candidate.endswith(".keras") and os.path.isfile(candidate):
            import keras

            import capnas_tf.captioner  # noqa: F401  (registers Captioner and, through it, the layers)
            import capnas_tf.decoders  # noqa: F401
            import capnas_tf.encoders  # noqa: F401  (fixed encoders: RetrainConfig.encoder="conv", "gap", …)
            import capnas_tf.search_space  # noqa: F401

            return keras.saving.load_model(candidate, compile=False), candidate
    from capnas_tf.export.saved_model import find_saved_model

    path = find_saved_model(model_path)
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["caption_pixels"]
    return (lambda images: signature(images=tf.convert_to_tensor(images, tf.float32))["token_ids"]), path


def main(argv):
    del argv
    from absl import flags as absl_flags

    from capnas_tf import flags as capnas_flags
    from capnas_tf.data.pipeline import load_caption_data
    from capnas_tf.data.text import Vocabulary

    FLAGS = absl_flags.FLAGS
    data_config = capnas_flags.data_config_from_flags()
    if FLAGS.capnas_shapes_config == "tiny":
        import dataclasses

        from capnas_tf.data.shapes_tfds import TINY_SHAPES_CONFIG

        data_config = dataclasses.replace(data_config, shapes=TINY_SHAPES_CONFIG)
    vocab_path = FLAGS.vocab or _find_vocab(FLAGS.model)
    vocab = Vocabulary.load(vocab_path, max_len=data_config.max_caption_len)
    data = load_caption_data(data_config, None, vocab=vocab)
    captioner, source = load_model_for_evaluation(FLAGS.model)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model, "evaluation")
    splits = FLAGS.eval_splits or evaluation_splits(data)
    scores, captions = evaluate_captioner(captioner, data, splits=splits, beam_width=FLAGS.beam_width,
                                          max_images=FLAGS.max_eval_images, metrics=FLAGS.final_metrics,
                                          return_captions=True)
    io_utils.atomic_write_json(os.path.join(output_dir, "metrics.json"),
                               {"model": source, "beam_width": FLAGS.beam_width, "splits": scores})
    save_sample_grid(os.path.join(output_dir, "samples.png"), data, captions[splits[0]], split=splits[0])
    for split, values in scores.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"Wrote {output_dir}/metrics.json and samples.png (model: {source})")


def _find_vocab(model_path: str) -> str:
    for candidate in ("vocab.txt", os.path.join("export", "vocab.txt"), os.path.join("..", "vocab.txt")):
        path = os.path.join(model_path, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"--model={model_path!r}: no vocab.txt next to it; pass --vocab.")


def _define_cli_flags():
    from absl import flags as absl_flags

    from capnas_tf import flags as _training_flags  # noqa: F401  (data flags, --beam_width, …)

    absl_flags.DEFINE_string("model", None, "Retrain workdir or export directory (SavedModel).", required=True)
    absl_flags.DEFINE_string("vocab", None, "vocab.txt (default: found next to --model).")
    absl_flags.DEFINE_list("eval_splits", None, "Splits to evaluate (default: test and test_novel if present).")
    absl_flags.DEFINE_enum("capnas_shapes_config", "default", ["default", "tiny"],
                           "capnas_shapes generation: the default ShapesConfig or the tests' TINY_SHAPES_CONFIG.")
    absl_flags.DEFINE_string("output_dir", None, "Where metrics.json and samples.png go (default <model>/evaluation).")


if __name__ == "__main__":
    from absl import app

    _define_cli_flags()
    app.run(main)
