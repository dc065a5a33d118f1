#!/usr/bin/env python
"""Caption images with the ONNX export of a capnas_tf captioner (onnxruntime + numpy + Pillow only).

It lives outside the `capnas_tf` package on purpose: importing anything of the package imports
TensorFlow, and this runner is for machines that have only onnxruntime (copy it with the model).

    python deploy/onnx_caption.py --model runs/quickstart/export/captioner.onnx IMAGE [IMAGE ...]

The vocabulary defaults to `vocab.txt` next to the model. Each image is converted to RGB, resized to
the model's input side (bilinear, antialiased, like training) and scaled to [0, 1]; the graph runs
the whole decoding loop (beam search of the retrain's --beam_width, 3 by default) and returns token ids,
turned into words here.

stdout holds only the captions, `<path>\t<caption>` per captioned image, in order. stderr gets
`provider: <the execution provider the session runs on>` (CUDA where onnxruntime-gpu can really start
it, else CPU, with the reason) and `error: <path>: <why>` for each file that is not captioned: not an
image Pillow can read, truncated or corrupt, or larger than --max_pixels (width × height read from the
header, before anything is decoded). The other files are captioned all the same.
Exit status: 0 all captioned, 1 some captioned and some not, 2 none captioned (or a usage error).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

PAD_ID, START_ID, END_ID = 0, 1, 2
MAX_PIXELS = 4096 * 4096  # the SavedModel export's default limit (RetrainConfig.export_max_pixels)


def load_vocab(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.endswith("\n"):
        raise ValueError(f"vocabulary {path!r} does not end with a newline (truncated?)")
    return text[:-1].split("\n")


def make_session(model_path: str) -> tuple[ort.InferenceSession, str]:
    """(session, note): a CUDA session where onnxruntime-gpu can start one, else a CPU session and why not.

    onnxruntime lists CUDAExecutionProvider whenever the onnxruntime-gpu wheel is installed, with or
    without a GPU and the CUDA 12 / cuDNN 9 libraries. So the CUDA session is tried, with the CUDA
    libraries of the nvidia-*-cu12 wheels preloaded where `ort.preload_dlls` exists (1.21+), and the
    provider the session really got decides. onnxruntime's own lines about a failed attempt are kept
    out of the output: its logger is set to fatal-only meanwhile, and what its Python side prints (to
    stdout: "EP Error … Falling back …") is swallowed.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    ort.set_default_logger_severity(3)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"]), ""
    ort.set_default_logger_severity(4)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            session = ort.InferenceSession(model_path, sess_options=options,
                                           providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] == "CUDAExecutionProvider":
            return session, ""
        return session, "CUDAExecutionProvider did not start (no GPU, or CUDA 12 / cuDNN 9 libraries missing)"
    except Exception as err:  # onnxruntime raises plain RuntimeErrors / its own Fail classes
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        return session, f"CUDAExecutionProvider did not start: {reason}"
    finally:
        ort.set_default_logger_severity(3)


def input_side(session: ort.InferenceSession) -> int:
    shape = session.get_inputs()[0].shape  # [N, S, S, 3]
    if len(shape) != 4 or not isinstance(shape[1], int) or shape[3] != 3:
        raise ValueError(f"model input must be [N, S, S, 3] with a fixed S; the model declares {shape}")
    return shape[1]


class ImageRejected(ValueError):
    """A file that is not captioned; its message is `<path>: <why>`."""


def load_image(path: str, side: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """float32 [S, S, 3] in [0, 1]; `ImageRejected` (`<path>: <why>`) for a file that cannot be captioned.

    The size is read from the header (`Image.open` decodes nothing) and checked against `max_pixels`
    before the pixels are loaded.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"{path}: too large: {width}x{height} pixels, over the limit of {max_pixels}")
            image = image.convert("RGB").resize((side, side), Image.BILINEAR)
    except Image.DecompressionBombError as err:
        raise ImageRejected(f"{path}: too large: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageRejected(f"{path}: not an image Pillow can read") from err
    except ImageRejected:
        raise
    except (OSError, SyntaxError, EOFError, ValueError) as err:  # missing file, truncated or corrupt data
        raise ImageRejected(f"{path}: unreadable image ({type(err).__name__}: {err})") from err
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
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                        help="refuse images whose header declares more pixels (width × height)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per onnxruntime run")
    args = parser.parse_args(argv)
    if args.max_pixels <= 0 or args.batch_size <= 0:
        parser.error("--max_pixels and --batch_size must be > 0")
    Image.MAX_IMAGE_PIXELS = None  # the limit is --max_pixels, checked in load_image with the file's size
    vocab = load_vocab(args.vocab or os.path.join(os.path.dirname(os.path.abspath(args.model)), "vocab.txt"))
    session, note = make_session(args.model)
    print(f"provider: {session.get_providers()[0]}" + (f" ({note})" if note else ""), file=sys.stderr)
    side = input_side(session)
    captioned = failed = 0
    for start in range(0, len(args.images), args.batch_size):
        paths, images = [], []
        for path in args.images[start:start + args.batch_size]:
            try:
                images.append(load_image(path, side, args.max_pixels))
                paths.append(path)
            except ImageRejected as err:
                print(f"error: {err}", file=sys.stderr)
                failed += 1
        if images:
            for path, text in zip(paths, caption(session, vocab, np.stack(images))):
                print(f"{path}\t{text}")
            captioned += len(images)
        sys.stdout.flush()
    return 0 if not failed else 1 if captioned else 2


if __name__ == "__main__":
    sys.exit(main())
