"""Command line for genotypes: draw one, or derive one from a search's A (the library is
`capnas_tf.search_space.genotypes`).

    python -m capnas_tf.genotype show DARTS_V2 --out cell.png
    python -m capnas_tf.genotype show runs/search/genotype.json --out cell.png --print
    python -m capnas_tf.genotype derive runs/search/alpha_history.jsonl --out genotype.json \
        --max_skip_connect 2 --png cell.png --heatmap alpha.png

`derive` reads A from a search's `alpha_history.jsonl` (the last record, or `--epoch N`) or from a
JSON file with "alpha_normal" and "alpha_reduce" (and optionally "primitives").
"""
from __future__ import annotations

import argparse
import json
import sys

from capnas_tf.search_space.genotypes import KNOWN_GENOTYPES, Genotype, derive_genotype, resolve_genotype
from capnas_tf.search_space.ops import PRIMITIVES


def read_alphas(path: str, epoch: int | None = None) -> dict:
    """The record holding A: a JSON object, or one line of a JSON-lines history (last, or `epoch`)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        if epoch is not None:
            records = [r for r in records if r.get("epoch") == epoch]
        if not records:
            raise ValueError(f"{path}: no record{'' if epoch is None else f' for epoch {epoch}'}.")
        record = records[-1]
    else:
        record = json.loads(text)
    missing = [k for k in ("alpha_normal", "alpha_reduce") if k not in record]
    if missing:
        raise ValueError(f"{path}: the record has no {missing}; expected keys alpha_normal, alpha_reduce.")
    return record


def show(args) -> Genotype:
    from capnas_tf.search_space import plots

    genotype = resolve_genotype(args.genotype)
    plots.render_genotype(genotype, args.out)
    if args.print:
        print(genotype.to_json(), end="")
    print(f"Wrote {args.out}", file=sys.stderr)
    return genotype


def derive(args) -> Genotype:
    from capnas_tf.search_space import plots

    record = read_alphas(args.alphas, args.epoch)
    primitives = tuple(args.primitives.split(",")) if args.primitives else tuple(record.get("primitives", PRIMITIVES))
    genotype = derive_genotype(record["alpha_normal"], record["alpha_reduce"], primitives,
                               max_skip_connect=args.max_skip_connect)
    if args.out:
        genotype.save(args.out)
    else:
        print(genotype.to_json(), end="")
    if args.png:
        plots.render_genotype(genotype, args.png)
    if args.heatmap:
        plots.render_alpha_heatmap(record["alpha_normal"], record["alpha_reduce"], primitives, args.heatmap)
    return genotype


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m capnas_tf.genotype", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("show", help="draw the normal and reduction cells of a genotype as a PNG")
    p.add_argument("genotype", help=f"a genotype JSON file or a known name {sorted(KNOWN_GENOTYPES)}")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--print", action="store_true", help="also print the genotype's JSON")
    p.set_defaults(run=show)

    p = commands.add_parser("derive", help="derive a genotype from A by DARTS' rule")
    p.add_argument("alphas", help="alpha_history.jsonl of a search, or a JSON with alpha_normal/alpha_reduce")
    p.add_argument("--epoch", type=int, default=None, help="history record of this epoch (default: the last)")
    p.add_argument("--primitives", default=None,
                   help="comma-separated op names in A's column order (default: the record's, else DARTS')")
    p.add_argument("--max_skip_connect", type=int, default=None, help="cap on skip_connect in the normal cell")
    p.add_argument("--out", default=None, help="genotype JSON to write (default: print it)")
    p.add_argument("--png", default=None, help="also draw the cells to this PNG")
    p.add_argument("--heatmap", default=None, help="also draw softmax(A) to this PNG")
    p.set_defaults(run=derive)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
