"""Does the retrain recipe make a captioner that sees? The default recipe and its image-blind twin, per seed.

    python benchmarks/captioner_recipe.py                       # seeds 0 1 2 → docs/captioner_recipe.md
    python benchmarks/captioner_recipe.py --quick               # seed 0, 1/10 of the steps: a smoke run
    python benchmarks/captioner_recipe.py --genotype=path/to/genotype.json --seeds 0 1 2 3

(from the repository root, in the project's venv.)

Per seed, `capnas_tf.retrain.retrain_job` retrains the captioner of `--genotype` with the default
`RetrainConfig` (the recipe a user gets) on the default `capnas_shapes`, which also trains the image-blind
baseline (the same decoder and recipe on a constant image) and scores both, the most-frequent-caption
baseline and the leave-one-out references on `test` and `test_novel`. Each seed's scores go to
`docs/captioner_recipe/seed<N>.json` as soon as it finishes, so a stopped run resumes at the next seed
(a seed's retrain also resumes from its own checkpoints in `--workdir`). The table is rewritten from
every record whose fingerprint (recipe, data, genotype, quick) matches this run.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from capnas_tf import io_utils  # noqa: E402
from capnas_tf.config import RetrainConfig  # noqa: E402
from capnas_tf.config import DataConfig  # noqa: E402
from capnas_tf.data.pipeline import load_caption_data  # noqa: E402
from capnas_tf.config import RunConfig  # noqa: E402
from capnas_tf.retrain import decoder_options, retrain_job  # noqa: E402

SPLITS = ("test", "test_novel")
CONTENT = ("colour", "count", "shape", "size", "relation", "entirely_correct")
COCO = ("BLEU-4", "CIDEr")
ROWS = (("model", "captioner (recipe)"), ("blind_baseline", "image-blind baseline"),
        ("baseline", "most-frequent caption"), ("reference_level", "references, leave-one-out"))
# Targets on `test` at the default budget: each content attribute's recall, entirely-correct captions,
# CIDEr at or above the leave-one-out reference level, distinct captions ≥ 50 % of the images.
TARGETS = {"colour": 0.95, "count": 0.95, "shape": 0.90, "relation": 0.85, "entirely_correct": 0.60}


def decoder_defaults(name: str) -> dict:
    """The decoder's architecture at its default sizes (RetrainConfig names the decoder, not its sizes)."""
    from capnas_tf.decoders import get_decoder

    config = get_decoder(name, vocab_size=8, max_len=4).get_config()
    return {k: v for k, v in config.items() if k not in ("name", "vocab_size", "max_len")}


def fingerprint(retrain: RetrainConfig, data: DataConfig, quick: bool) -> str:
    """What determines a record's numbers; records of another fingerprint are not mixed into the table."""
    key = (dataclasses.asdict(retrain), decoder_defaults(retrain.decoder), dataclasses.asdict(data), quick)
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]


def scores_of(metrics: dict) -> dict:
    """{row: {split: {metric: value}}} from a retrain's metrics.json."""
    rows = {}
    for row, _ in ROWS:
        if row not in metrics:
            continue
        rows[row] = {}
        for split in SPLITS:
            entry = metrics[row].get(split)
            if entry is None:
                continue
            values = {m: entry.get(m) for m in COCO}
            values.update({m: entry.get("content", {}).get(m) for m in CONTENT})
            values["distinct_ratio"] = entry.get("diversity", {}).get("distinct_caption_ratio")
            rows[row][split] = values
    return rows


def run_seed(seed: int, retrain: RetrainConfig, data, workdir: str) -> dict:
    start = time.perf_counter()
    result = retrain_job(RunConfig(workdir=os.path.join(workdir, f"seed{seed}"), seed=seed), retrain, data)
    return {"seed": seed, "wall_s": round(time.perf_counter() - start, 1), "best_epoch": result.best_epoch,
            "epochs": retrain.epochs, "selection_metric": result.selection_metric,
            "scores": scores_of(result.metrics)}


def mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(records: list[dict], split: str) -> str:
    metrics = CONTENT + COCO + ("distinct_ratio",)
    lines = ["| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row, label in ROWS:
        cells = [mean_std([r["scores"].get(row, {}).get(split, {}).get(m) for r in records]) for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(records: list[dict]) -> list[str]:
    """Each target on `test`, checked in every seed (the worst seed decides)."""
    out = []
    for name, bound in TARGETS.items():
        worst = min(r["scores"]["model"]["test"][name] for r in records)
        out.append(f"- {name} ≥ {bound:.0%}: worst seed {worst:.1%} — {'met' if worst >= bound else 'missed'}")
    cider_gap = min(r["scores"]["model"]["test"]["CIDEr"] - r["scores"]["reference_level"]["test"]["CIDEr"]
                    for r in records)
    out.append(f"- CIDEr ≥ leave-one-out reference level: worst seed {cider_gap:+.3f} — "
               f"{'met' if cider_gap >= 0 else 'missed'}")
    distinct = min(r["scores"]["model"]["test"]["distinct_ratio"] for r in records)
    out.append(f"- distinct captions ≥ 50 % of images: worst seed {distinct:.1%} — {'met' if distinct >= 0.5 else 'missed'}")
    return out


def write_report(path: str, records: list[dict], retrain: RetrainConfig, command: str, note: str = "") -> None:
    seeds = ", ".join(str(r["seed"]) for r in records)
    walls = ", ".join(f"{r['wall_s'] / 60:.1f}" for r in records)
    epochs = ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in records)
    sizes = ", ".join(f"{k}={v}" for k, v in {**decoder_defaults(retrain.decoder), **decoder_options(retrain)}.items()
                      if k not in ("trainable", "dtype"))
    batch = f"{retrain.batch_size or DataConfig().batch_size} images × {retrain.captions_per_image} captions"
    parts = [
        "# The captioner recipe: does it see?",
        "",
        f"Produced by `{command}` (2-core CPU, no GPU). Seeds {seeds}; mean ± sample std over seeds. Each seed",
        "retrains the default recipe (`RetrainConfig()`) and its image-blind twin (same decoder and recipe, constant",
        "image) on the default `capnas_shapes`; content columns are recalls from `capnas_tf.data.shapes_content`",
        "(of the objects in the scene, the share the caption names correctly), `entirely_correct` the share of",
        "captions with every group, attribute and relation right, `distinct_ratio` distinct captions / images.",
        "",
        f"Recipe: encoder {retrain.encoder} ({retrain.genotype}, C={retrain.channels}, {retrain.num_cells} cells), "
        f"decoder {retrain.decoder} ({sizes}), {retrain.epochs} epochs × {retrain.steps_per_epoch} steps of {batch}, lr {retrain.lr}, "
        f"checkpoint kept by {records[0]['selection_metric']} on all validation images, captions decoded "
        f"{'greedily' if retrain.beam_width == 1 else f'by beam search of width {retrain.beam_width}'}.",
        f"Wall time per seed (model + blind baseline + scoring): {walls} min; kept epoch per seed: {epochs}.",
        *([note] if note else []),
        "",
    ]
    for split in SPLITS:
        parts += [f"## {split}", "", table(records, split), ""]
    parts += ["## Targets (test)", "", *target_lines(records), "",
              "How the recipe was chosen, with every variant tried: [recipe_variants.md](recipe_variants.md).", ""]
    io_utils.atomic_write_bytes(path, "\n".join(parts).encode())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--genotype", default=RetrainConfig().genotype)
    parser.add_argument("--quick", action="store_true", help="seed 0, a tenth of the steps: a smoke run")
    parser.add_argument("--workdir", default="runs/bench_captioner_recipe")
    parser.add_argument("--records", default="docs/captioner_recipe")
    parser.add_argument("--report", default="docs/captioner_recipe.md")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. what else ran on the machine")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    retrain = RetrainConfig(genotype=args.genotype, export_saved_model=False, export_onnx=False)
    seeds = args.seeds
    if args.quick:
        retrain = dataclasses.replace(retrain, steps_per_epoch=max(1, retrain.steps_per_epoch // 10))
        seeds = seeds[:1]
    data_config = DataConfig()
    key = fingerprint(retrain, data_config, args.quick)
    workdir = os.path.join(args.workdir, key)
    records_dir = os.path.join(args.records, key)
    os.makedirs(records_dir, exist_ok=True)
    data = None  # loaded only if a seed is to run: with every record there, the command only rewrites the report
    for seed in seeds:
        path = os.path.join(records_dir, f"seed{seed}.json")
        if os.path.exists(path):
            print(f"seed {seed}: record exists ({path})")
            continue
        if data is None:
            # <workdir>/vocab.txt, where `python -m capnas_tf.evaluate --model=<workdir>/seed<N>` finds it
            data = load_caption_data(data_config, workdir)
        record = run_seed(seed, retrain, data, workdir)
        io_utils.atomic_write_json(path, {"fingerprint": key, "config": dataclasses.asdict(retrain), **record})
        print(f"seed {seed}: {json.dumps(record['scores']['model']['test'])}", flush=True)
    records = []
    for seed in seeds:
        with open(os.path.join(records_dir, f"seed{seed}.json")) as f:
            records.append(json.load(f))
    command = "python benchmarks/captioner_recipe.py"
    command += " --quick" * args.quick + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
    command += f" --genotype={args.genotype}" if args.genotype != RetrainConfig().genotype else ""
    write_report(args.report, records, retrain, command, args.note)
    print(f"Wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
