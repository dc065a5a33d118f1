"""Caption image files with an exported SavedModel.

    python -m capnas_tf.caption --model=runs/quickstart IMAGE [IMAGE ...]

`--model` is a workdir (its `export/saved_model/<newest version>`), a versioned base directory, or a
SavedModel directory. Prints `<path>\t<caption>` per captioned image, in order, on stdout; a file that
cannot be read, or that the SavedModel refuses (not an image, undecodable, over its pixel limit: its
`status` output), gets `error: <path>: <why>` on stderr. Exit status 0 when every file was captioned, 1
when some were, 2 when none was.
"""
from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_string("model", None, "Workdir, export dir or SavedModel dir.", required=True)
flags.DEFINE_integer("batch_size", 32, "Images per request to the SavedModel.")
FLAGS = flags.FLAGS


def caption_files(model_path: str, paths: list[str], *, batch_size: int = 32) -> list[tuple[str, str]]:
    """(caption, status) per image file, from the SavedModel's `serving_default` signature (image bytes
    in): status "ok", or "error: <why>" with an empty caption."""
    import tensorflow as tf

    from capnas_tf.export.saved_model import find_saved_model

    serve = tf.saved_model.load(find_saved_model(model_path)).signatures["serving_default"]
    results: list[tuple[str, str] | None] = [None] * len(paths)
    readable = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                readable.append((i, f.read()))
        except OSError as error:
            results[i] = ("", f"error: cannot read the file ({error.strerror or error})")
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        out = serve(images=tf.constant([data for _, data in chunk], tf.string))
        for (i, _), caption, status in zip(chunk, out["captions"].numpy(), out["status"].numpy()):
            results[i] = (caption.decode("utf-8"), status.decode("utf-8"))
    return results


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files: python -m capnas_tf.caption --model=DIR IMAGE ...")
    captioned = 0
    for path, (caption, status) in zip(paths, caption_files(FLAGS.model, paths, batch_size=FLAGS.batch_size)):
        if status == "ok":
            print(f"{path}\t{caption}")
            captioned += 1
        else:
            print(f"error: {path}: {status.removeprefix('error: ')}", file=sys.stderr)
    sys.stdout.flush()
    return 0 if captioned == len(paths) else 1 if captioned else 2


if __name__ == "__main__":
    app.run(main)
