"""Is capnas_shapes hard enough that the encoder matters? Same captioner, same recipe, different encoders.

    python benchmarks/dataset_difficulty.py                  # gap, conv, darts × seeds 0 1 2 (the table in docs/)
    python benchmarks/dataset_difficulty.py --quick          # gap, conv × seed 0, short training: a smoke run
    python benchmarks/dataset_difficulty.py --encoders gap,conv --seeds 0 1 --epochs 2 --steps_per_epoch 100

(from the repository root, in the project's venv; results → docs/dataset_difficulty.md by hand.)

First the default `capnas_shapes` (the `DataConfig()` the main job uses: 32×32, 2000 training images × 5
captions, L = 16, min word count 5) is generated into a fresh temporary TFDS data_dir, and the generation
is timed (the aim: under a minute on 2 cores). Then, per seed, one captioner per encoder is
trained by `capnas_tf.retrain.retrain_job` with everything but `RetrainConfig.encoder` identical: the
LSTM decoder F, AdamW with cosine decay, steps, batch size, seed (initialisation and data order) and
model selection by validation CIDEr after each epoch. The encoders:

    gap    1×1 conv + global average pool: per-pixel colour statistics only, no spatial layout
    conv   three stride-2 3×3 conv-BN-ReLU blocks (16, 32, 64 channels): the Stage II student's encoder
    darts  DiscreteEncoder(DARTS_V2), C = 8, 3 cells: the retrain default

Greedy captions of `test` and `test_novel` are scored by pycocoevalcap (BLEU-4, CIDEr-D; METEOR with
`--meteor`, which starts a JVM), next to the always-the-most-frequent-training-caption baseline. The
summary prints mean ± sample std over seeds and the ratio gap / conv of each metric, computed per seed
from the same run and then averaged.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from capnas_tf import evaluation  # noqa: E402
from capnas_tf.config import RetrainConfig  # noqa: E402
from capnas_tf.data import shapes_tfds  # noqa: E402
from capnas_tf.config import DataConfig  # noqa: E402
from capnas_tf.data.pipeline import load_caption_data  # noqa: E402
from capnas_tf.config import RunConfig  # noqa: E402
from capnas_tf.retrain import retrain_job  # noqa: E402

SPLITS = ("test", "test_novel")
ENCODER_NOTES = {"gap": "global average pool only", "conv": "3 conv blocks, 16-32-64", "darts": "DARTS_V2, C=8, 3 cells"}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the metric JVMs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_generation(data_config: DataConfig) -> dict:
    """Seconds (wall and CPU) to generate `data_config`'s capnas_shapes into its (fresh) data_dir."""
    shapes_config = dataclasses.replace(data_config.shapes, image_size=data_config.image_size)
    wall, cpu = time.perf_counter(), cpu_seconds()
    shapes_tfds.prepare_capnas_shapes(shapes_config, data_dir=data_config.data_dir)
    generation = {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}
    wall = time.perf_counter()
    data = load_caption_data(data_config)
    generation["load_wall_s"] = time.perf_counter() - wall
    generation["num_images"] = {s: data.num_images(s) for s in data.splits}
    generation["vocab_size"] = len(data.vocab)
    return generation


def run_one(encoder: str, seed: int, retrain: RetrainConfig, data_config: DataConfig, workdir: str,
            verbose: bool, samples: int) -> dict:
    """One retrain of `encoder` with `seed`: its test metrics, the baseline's, its cost (training and
    evaluation; re-captioning `test` for the statistics below is not counted), how many distinct
    greedy captions it gives the test images, and those of the first `samples` test images."""
    config = dataclasses.replace(retrain, encoder=encoder)
    run_dir = os.path.join(workdir, f"{encoder}-seed{seed}")
    data = load_caption_data(dataclasses.replace(data_config, seed=seed), run_dir)
    log = (lambda line: print(f"    [{encoder} seed {seed}] {line}", flush=True)) if verbose else (lambda _: None)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = retrain_job(RunConfig(workdir=run_dir, seed=seed), config, data, log=log)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    captions = evaluation.caption_dataset(result.captioner, data.eval_dataset("test"), data.vocab)
    references = data.references("test")
    return {"encoder": encoder, "seed": seed, "model": result.metrics["model"],
            "baseline": {s: result.metrics["baseline"][s] for s in SPLITS},
            "baseline_caption": result.metrics["baseline"]["caption"], "best_epoch": result.best_epoch,
            "encoder_params": int(result.captioner.encoder.count_params()),
            "decoder_params": int(result.captioner.decoder.count_params()),
            "wall_s": wall, "cpu_s": cpu,
            "distinct_test_captions": len(set(captions.values())), "test_images": len(captions),
            "samples": [{"image_id": i, "caption": captions[i], "reference": references[i][0]}
                        for i in sorted(captions)[:samples]]}


def mean_std(values, digits: int = 3) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summary_table(runs: list[dict], encoders: list[str], metrics: list[str]) -> str:
    """Markdown: mean ± std over seeds per encoder, the baseline, and gap / conv per seed then averaged."""
    columns = [(s, m) for s in SPLITS for m in metrics]
    header = ("| encoder | params | " + " | ".join(f"{s} {m}" for s, m in columns)
              + f" | distinct test captions (of {runs[0]['test_images']}) | train+eval wall s |")
    lines = [header, "|" + " --- |" * (len(columns) + 4)]
    for encoder in encoders:
        rows = [r for r in runs if r["encoder"] == encoder]
        cells = [mean_std(r["model"][s][m] for r in rows) for s, m in columns]
        lines.append(f"| {encoder} ({ENCODER_NOTES.get(encoder, '')}) | {rows[0]['encoder_params']:,} | "
                     + " | ".join(cells) + f" | {mean_std((r['distinct_test_captions'] for r in rows), 0)} | "
                     f"{mean_std((r['wall_s'] for r in rows), 0)} |")
    baseline = runs[0]["baseline"]  # the same caption for every run: it depends on the training captions only
    lines.append("| most frequent caption | 0 | " + " | ".join(f"{baseline[s][m]:.3f}" for s, m in columns) + " | 1 | |")
    if "gap" in encoders and "conv" in encoders:
        ratios = []
        for s, m in columns:
            per_seed = [g["model"][s][m] / c["model"][s][m] for g in runs if g["encoder"] == "gap"
                        for c in runs if c["encoder"] == "conv" and c["seed"] == g["seed"] and c["model"][s][m] > 0]
            ratios.append(mean_std(per_seed) if per_seed else "n/a")
        lines.append("| **gap / conv** (per seed, then mean ± std) | | " + " | ".join(ratios) + " | | |")
    return "\n".join(lines)


def per_seed_table(runs: list[dict], metrics: list[str]) -> str:
    columns = [(s, m) for s in SPLITS for m in metrics]
    lines = ["| encoder | seed | best epoch | " + " | ".join(f"{s} {m}" for s, m in columns) + " |",
             "|" + " --- |" * (len(columns) + 3)]
    for r in runs:
        lines.append(f"| {r['encoder']} | {r['seed']} | {r['best_epoch']} | "
                     + " | ".join(f"{r['model'][s][m]:.3f}" for s, m in columns) + " |")
    return "\n".join(lines)


def samples_table(runs: list[dict]) -> str:
    """Markdown: one row per sample test image, one column per encoder, plus its first reference."""
    lines = ["| image_id | first reference | " + " | ".join(r["encoder"] for r in runs) + " |",
             "|" + " --- |" * (len(runs) + 2)]
    for k, sample in enumerate(runs[0]["samples"]):
        lines.append(f"| {sample['image_id']} | {sample['reference']} | "
                     + " | ".join(r["samples"][k]["caption"] for r in runs) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: encoders gap,conv, seed 0, 2 epochs × 40 steps (a few minutes)")
    parser.add_argument("--encoders", default=None,
                        help="comma-separated names of capnas_tf.encoders (default gap,conv,darts; quick: gap,conv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick: 0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs, validation CIDEr after each (default RetrainConfig's 3; quick: 2)")
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help="training steps per epoch (default RetrainConfig's 160; quick: 40)")
    parser.add_argument("--meteor", action="store_true", help="also score METEOR (starts a JVM, ~15 s per run)")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data_dir; default: a fresh temporary one, so the generation time is real")
    parser.add_argument("--workdir", default=None, help="where the retrain runs go (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also write every run's numbers to this JSON file")
    parser.add_argument("--samples", type=int, default=6,
                        help="print the greedy captions of this many test images per encoder (first seed)")
    parser.add_argument("--verbose", action="store_true", help="print the retrain progress lines")
    args = parser.parse_args(argv)
    args.encoders = [e for e in (args.encoders or ("gap,conv" if args.quick else "gap,conv,darts")).split(",") if e]
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    defaults = RetrainConfig()
    args.epochs = args.epochs or (2 if args.quick else defaults.epochs)
    args.steps_per_epoch = args.steps_per_epoch or (40 if args.quick else defaults.steps_per_epoch)
    for flag in ("epochs", "steps_per_epoch", "samples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, received {getattr(args, flag)}")
    from capnas_tf.encoders import ENCODERS

    unknown = [e for e in args.encoders if e not in ENCODERS]
    if unknown:
        parser.error(f"--encoders: unknown name(s) {unknown}; expected names of capnas_tf.encoders: {sorted(ENCODERS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    temp_dirs = []

    def temp_dir(prefix):
        temp_dirs.append(tempfile.mkdtemp(prefix=prefix))
        return temp_dirs[-1]

    try:
        data_config = DataConfig(data_dir=args.data_dir or temp_dir("capnas-difficulty-tfds-"))
        metrics = ["BLEU-4", "METEOR", "CIDEr"] if args.meteor else ["BLEU-4", "CIDEr"]
        retrain = dataclasses.replace(
            RetrainConfig(), epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, export_saved_model=False,
            export_onnx=False, final_metrics=("BLEU", "METEOR", "CIDEr") if args.meteor else ("BLEU", "CIDEr"),
            # as recorded so far: the epoch of the best validation CIDEr, and no blind baseline (its retrain
            # would count in every run's wall_s)
            selection_metric="CIDEr", blind_baseline=False)
        workdir = args.workdir or temp_dir("capnas-difficulty-runs-")
        print(f"Command: python benchmarks/dataset_difficulty.py {' '.join(sys.argv[1:] if argv is None else argv)}")
        print(f"CPUs: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.1f} (shared machine)")
        generation = time_generation(data_config)
        print(f"Generating the default capnas_shapes into {data_config.data_dir}: {generation['wall_s']:.1f} s wall, "
              f"{generation['cpu_s']:.1f} s CPU; loading it (+ vocabulary): {generation['load_wall_s']:.1f} s; "
              f"images {generation['num_images']}, vocabulary {generation['vocab_size']}")
        print(f"Recipe: {args.epochs} epochs × {args.steps_per_epoch} steps, batch {data_config.batch_size}, "
              f"{retrain.decoder} decoder, AdamW lr {retrain.lr} (cosine), weight decay {retrain.weight_decay}, clip "
              f"{retrain.grad_clip}; greedy decoding; best validation CIDEr epoch kept", flush=True)
        runs, cpu_start, wall_start = [], cpu_seconds(), time.perf_counter()
        for seed in args.seeds:
            for encoder in args.encoders:
                run = run_one(encoder, seed, retrain, data_config, workdir, args.verbose, args.samples)
                runs.append(run)
                scores = ", ".join(f"{s} {m} {run['model'][s][m]:.3f}" for s in SPLITS for m in metrics)
                print(f"  {encoder:6s} seed {seed}: {scores}  ({run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU)",
                      flush=True)
        print(f"\nTraining + evaluation: {time.perf_counter() - wall_start:.0f} s wall, "
              f"{cpu_seconds() - cpu_start:.0f} s CPU; load average now {os.getloadavg()[0]:.1f}")
        print(f"Most frequent training caption (baseline): {runs[0]['baseline_caption']!r}\n")
        print(summary_table(runs, args.encoders, metrics))
        print()
        print(per_seed_table(runs, metrics))
        print(f"\nGreedy captions of the first {args.samples} test images (seed {args.seeds[0]}):\n")
        print(samples_table([r for r in runs if r["seed"] == args.seeds[0]]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "generation": generation, "runs": runs}, f, indent=1)
            print(f"\n→ {args.json}")
    finally:
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
