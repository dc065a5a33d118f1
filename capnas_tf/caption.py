"""Caption image files with an exported SavedModel.

    python -m capnas_tf.caption --model=runs/quickstart IMAGE [IMAGE ...]

`--model` is a workdir (its `export/saved_model/<newest version>`), a versioned base directory, or a
SavedModel directory. Prints `<path>\t<caption>` per image, in order.
"""
from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_string("model", None, "Workdir, export dir or SavedModel dir.", required=True)
flags.DEFINE_integer("batch_size", 32, "Images per request to the SavedModel.")
FLAGS = flags.FLAGS


def caption_files(model_path: str, paths: list[str], *, batch_size: int = 32) -> list[str]:
    """One caption per image file, from the SavedModel's `serving_default` signature (image bytes in)."""
    import tensorflow as tf

    from capnas_tf.export.saved_model import find_saved_model

    serve = tf.saved_model.load(find_saved_model(model_path)).signatures["serving_default"]
    captions = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        encoded = [tf.io.read_file(p) for p in chunk]
        out = serve(images=tf.stack(encoded))
        captions.extend(c.decode("utf-8") for c in out["captions"].numpy())
    return captions


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files: python -m capnas_tf.caption --model=DIR IMAGE ...")
    for path, caption in zip(paths, caption_files(FLAGS.model, paths, batch_size=FLAGS.batch_size)):
        print(f"{path}\t{caption}")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
