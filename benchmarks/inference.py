"""Captioning speed of one trained captioner in three runtimes, on the same images.

    python benchmarks/inference.py --workdir runs/quickstart      # a retrain workdir with its exports
    python benchmarks/inference.py                                # a randomly initialised default captioner

(from the repository root; prefix `PYTHONPATH=.` if capnas_tf is not pip-installed.)

Runtimes: the Keras captioner in-process (encoder + greedy decoding traced once by `tf.function`),
the SavedModel's `caption_pixels` signature (loaded with `tf.saved_model.load`), and the ONNX graph
in onnxruntime (CPU, or CUDA if offered). Each gets the same float32 images (the first test images of
capnas_shapes with --workdir, else uniform noise): latency = median wall time of one batch-1 call;
throughput = images/s over batch-32 calls. The first tokens agree across runtimes is checked.
Without --workdir the captioner is untrained, so its captions run to the full length (worst case).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def timed(fn, images, repeats: int) -> float:
    fn(images)  # warm-up (tracing, session initialisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_runtimes(workdir: str | None, image_size: int):
    import keras
    import onnxruntime as ort

    import capnas_tf.captioner  # noqa: F401
    import capnas_tf.decoders  # noqa: F401
    import capnas_tf.search_space  # noqa: F401
    from capnas_tf.decoders.decoding import decode_captions
    from capnas_tf.export.saved_model import find_saved_model

    if workdir is None:
        from capnas_tf.config import RetrainConfig
        from capnas_tf.data.text import Vocabulary
        from capnas_tf.export.onnx import export_onnx
        from capnas_tf.export.saved_model import export_saved_model
        from capnas_tf.retrain import build_captioner

        workdir = tempfile.mkdtemp(prefix="capnas-bench-")
        vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(56)], max_len=16)
        captioner = build_captioner(RetrainConfig(), vocab_size=len(vocab), max_caption_len=16, image_size=image_size)
        export_saved_model(captioner, vocab, os.path.join(workdir, "export", "saved_model"), image_size=image_size)
        export_onnx(captioner, vocab, os.path.join(workdir, "export"), image_size=image_size)
    else:
        captioner = keras.saving.load_model(os.path.join(workdir, "retrain", "captioner.keras"), compile=False)

    keras_fn = tf.function(lambda images: decode_captions(captioner, images)[0])
    signature = tf.saved_model.load(find_saved_model(workdir)).signatures["caption_pixels"]
    providers = (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    session = ort.InferenceSession(os.path.join(workdir, "export", "captioner.onnx"),
                                   providers=providers + ["CPUExecutionProvider"])
    return {
        "keras (tf.function)": lambda x: keras_fn(tf.constant(x)).numpy(),
        "SavedModel": lambda x: signature(images=tf.constant(x))["token_ids"].numpy(),
        f"onnxruntime ({session.get_providers()[0]})": lambda x: session.run(["token_ids"], {"images": x})[0],
    }


def benchmark_images(workdir: str | None, image_size: int, count: int) -> np.ndarray:
    if workdir is not None:
        from capnas_tf.config import DataConfig
        from capnas_tf.data.pipeline import load_caption_data
        from capnas_tf.evaluation import first_images

        data = load_caption_data(DataConfig(image_size=image_size))
        return first_images(data, "test", count)[0].astype(np.float32)
    return np.random.default_rng(0).uniform(size=[count, image_size, image_size, 3]).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="retrain workdir (retrain/captioner.keras + export/)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(2)
    runtimes = load_runtimes(args.workdir, args.image_size)
    images = benchmark_images(args.workdir, args.image_size, args.batch)
    outputs = {name: fn(images) for name, fn in runtimes.items()}
    reference = next(iter(outputs.values()))
    agree = {name: bool(np.array_equal(ids, reference)) for name, ids in outputs.items()}
    print(f"{len(images)} images of {args.image_size}×{args.image_size}; {args.repeats} timed repeats, median; "
          f"model: {args.workdir or 'random init (full-length captions)'}")
    print(f"{'runtime':34s} {'latency b=1 (ms)':>17s} {'throughput b=' + str(args.batch) + ' (img/s)':>24s}  same ids")
    results = {}
    for name, fn in runtimes.items():
        latency = timed(fn, images[:1], args.repeats)
        throughput = len(images) / timed(fn, images, max(3, args.repeats // 4))
        results[name] = (latency, throughput)
        print(f"{name:34s} {latency * 1e3:17.2f} {throughput:24.1f}  {agree[name]}")
    base_latency, base_throughput = next(iter(results.values()))
    print("ratios vs keras: " + "; ".join(
        f"{name}: latency ×{lat / base_latency:.2f}, throughput ×{thr / base_throughput:.2f}"
        for name, (lat, thr) in list(results.items())[1:]))


if __name__ == "__main__":
    main()
