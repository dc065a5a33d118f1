#!/usr/bin/env python
"""Caption images with the ONNX export of a capnas_tf captioner (onnxruntime + numpy + Pillow only).

    python export/onnx_caption.py --model runs/quickstart/export/captioner.onnx IMAGE [IMAGE ...]

The vocabulary defaults to `vocab.txt` next to the model. Each image is converted to RGB, resized to
the model's input side (bilinear, antialiased, like training) and scaled to [0, 1]; the graph runs
the whole greedy decoding loop and returns token ids, turned into words here. Prints the execution
provider the session actually uses (CUDA when onnxruntime offers it, else CPU), then
`<path>\t<caption>` per image.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

PAD_ID, START_ID, END_ID = 0, 1, 2


def load_vocab(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.endswith("\n"):
        raise ValueError(f"vocabulary {path!r} does not end with a newline (truncated?)")
    return text[:-1].split("\n")


def make_session(model_path: str) -> ort.InferenceSession:
    wanted = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else []
    return ort.InferenceSession(model_path, providers=wanted + ["CPUExecutionProvider"])


def input_side(session: ort.InferenceSession) -> int:
    shape = session.get_inputs()[0].shape  # [N, S, S, 3]
    if len(shape) != 4 or not isinstance(shape[1], int) or shape[3] != 3:
        raise ValueError(f"model input must be [N, S, S, 3] with a fixed S; the model declares {shape}")
    return shape[1]


def load_image(path: str, side: int) -> np.ndarray:
    """float32 [S, S, 3] in [0, 1]; a clear error for a file that is not an image."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((side, side), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    return np.asarray(image, np.float32) / 255.0


def check_batch(images: np.ndarray, side: int) -> np.ndarray:
    """Images must be float [N, S, S, 3]; anything else gets an error naming the expected shape."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (side, side, 3):
        raise ValueError(f"images must have shape [N, {side}, {side}, 3]; received {list(images.shape)}")
    return images


def ids_to_text(ids, vocab: list[str]) -> str:
    words = []
    for token_id in ids:
        token_id = int(token_id)
        if token_id == END_ID:
            break
        if token_id not in (PAD_ID, START_ID):
            words.append(vocab[token_id] if 0 <= token_id < len(vocab) else "<unk>")
    return " ".join(words)


def caption(session: ort.InferenceSession, vocab: list[str], images: np.ndarray) -> list[str]:
    images = check_batch(images, input_side(session))
    token_ids = session.run(["token_ids"], {session.get_inputs()[0].name: images})[0]
    return [ids_to_text(row, vocab) for row in token_ids]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, …)")
    parser.add_argument("--model", default="captioner.onnx", help="the exported captioner.onnx")
    parser.add_argument("--vocab", default=None, help="vocab.txt (default: next to --model)")
    args = parser.parse_args(argv)
    vocab = load_vocab(args.vocab or os.path.join(os.path.dirname(os.path.abspath(args.model)), "vocab.txt"))
    session = make_session(args.model)
    print(f"provider: {session.get_providers()[0]}")
    side = input_side(session)
    try:
        batch = np.stack([load_image(p, side) for p in args.images])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, text in zip(args.images, caption(session, vocab, batch)):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
