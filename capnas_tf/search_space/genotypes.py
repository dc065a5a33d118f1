"""Genotypes: a derived cell architecture as data, its JSON form, and the DARTS derivation rule.
(Named as DARTS names it; `python -m capnas_tf.genotype` is the command line that draws and derives them.)

A genotype lists, for each cell type, two `(op_name, input_index)` pairs per intermediate node,
node by node; inputs 0 and 1 are the previous two cells, 2 + i is intermediate node i. `*_concat`
lists the states concatenated into the cell's output (DARTS: all intermediate nodes).

JSON form (what `genotype.json` holds; it is parsed and validated, never `eval`-ed):

    {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], …], "normal_concat": [2, 3, 4, 5],
     "reduce": [["max_pool_3x3", 0], …], "reduce_concat": [2, 3, 4, 5]}

Reference: Liu et al., DARTS, arXiv:1806.09055 (genotypes.py, model_search.Network.genotype).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from capnas_tf.io_utils import atomic_write_text
from capnas_tf.search_space.cells import num_edges
from capnas_tf.search_space.ops import OPS, PRIMITIVES

CELL_TYPES = ("normal", "reduce")
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


class GenotypeError(ValueError):
    """A genotype (or its JSON) is malformed; the message names the field at fault."""


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A derived architecture in DARTS' format.

    Attributes:
      normal: `((op_name, input_index), …)`, two per intermediate node, for the normal cell.
      normal_concat: the states concatenated into the normal cell's output.
      reduce: as `normal`, for the reduction cell.
      reduce_concat: as `normal_concat`, for the reduction cell.

    Construction validates (unknown op, input index out of range, odd number of edges, …) and
    normalises lists to tuples, so a `Genotype` is hashable and comparable.
    """

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple

    def __post_init__(self):
        for cell in CELL_TYPES:
            object.__setattr__(self, cell, _parse_edges(getattr(self, cell), cell))
            concat = f"{cell}_concat"
            object.__setattr__(self, concat, _parse_concat(getattr(self, concat), concat,
                                                           len(getattr(self, cell)) // 2))

    def num_nodes(self, cell: str = "normal") -> int:
        """N, the intermediate nodes of the `cell` ("normal" or "reduce") cell."""
        return len(getattr(self, cell)) // 2

    def to_dict(self) -> dict:
        """Plain lists, as in the JSON form."""
        return {
            "normal": [list(pair) for pair in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(pair) for pair in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data, source: str = "genotype") -> "Genotype":
        """Validates a JSON-like dict; errors name `source` and the field."""
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object with keys {list(FIELDS)}; "
                                f"received {type(data).__name__}.")
        missing = [k for k in FIELDS if k not in data]
        if missing:
            raise GenotypeError(f"{source}: missing key(s) {missing}; a genotype needs {list(FIELDS)}.")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise GenotypeError(f"{source}: unknown key(s) {unknown}; a genotype has exactly {list(FIELDS)}.")
        try:
            return cls(**{k: data[k] for k in FIELDS})
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "genotype JSON") -> "Genotype":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{source}: not valid JSON ({e}).") from None
        return cls.from_dict(data, source)

    def save(self, path: str) -> None:
        """Writes the JSON form atomically (temp file in the same directory, then os.replace)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Genotype":
        if not os.path.exists(path):
            raise FileNotFoundError(f"Genotype.load: no genotype file at {path!r}.")
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), source=path)


def _parse_edges(edges, field: str) -> tuple:
    if isinstance(edges, (str, bytes, dict)) or not hasattr(edges, "__iter__"):
        raise GenotypeError(f"field {field!r} must be a list of [op_name, input_index] pairs; "
                            f"received {type(edges).__name__}.")
    edges = list(edges)
    if not edges or len(edges) % 2:
        raise GenotypeError(f"field {field!r} has {len(edges)} edges; expected 2 per intermediate node "
                            "(a non-zero even number).")
    parsed = []
    for position, pair in enumerate(edges):
        node = position // 2
        where = f"{field}[{position}] (node {node})"
        if isinstance(pair, (str, bytes, dict)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise GenotypeError(f"{where} must be a pair [op_name, input_index]; received {pair!r}.")
        name, index = pair
        if not isinstance(name, str):
            raise GenotypeError(f"{where}: op name must be a string; received {type(name).__name__} {name!r}.")
        if name not in OPS:
            raise GenotypeError(f"{where}: unknown op {name!r}; known ops: {sorted(OPS)}.")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise GenotypeError(f"{where}: input index must be an integer; received "
                                f"{type(index).__name__} {index!r}.")
        if not 0 <= index < node + 2:
            raise GenotypeError(f"{where}: input index {index} out of range; node {node} can read "
                                f"inputs 0..{node + 1} (0, 1 = previous cells, 2.. = earlier nodes).")
        parsed.append((name, int(index)))
    return tuple(parsed)


def _parse_concat(concat, field: str, num_nodes: int) -> tuple:
    if isinstance(concat, (str, bytes, dict)) or not hasattr(concat, "__iter__"):
        raise GenotypeError(f"field {field!r} must be a list of state indices; received {type(concat).__name__}.")
    concat = list(concat)
    if not concat:
        raise GenotypeError(f"field {field!r} is empty; it lists the states concatenated into the output.")
    for index in concat:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise GenotypeError(f"field {field!r}: state indices must be integers; received {index!r}.")
        if not 0 <= index < num_nodes + 2:
            raise GenotypeError(f"field {field!r}: state index {index} out of range; the cell has states "
                                f"0..{num_nodes + 1} ({num_nodes} intermediate nodes).")
    if len(set(concat)) != len(concat):
        raise GenotypeError(f"field {field!r}: repeated state index in {concat}.")
    return tuple(int(i) for i in concat)


# --- Known genotypes (DARTS' genotypes.py) --------------------------------------------------------

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)

# Drawn uniformly from the quickstart's 3-node space (configs/quickstart.cfg; panel genotype 2ac71f5f1c of
# benchmarks/search_efficacy.py): of the panel's retrains at 3,600 steps, the best validation score.
CAPNAS_SHAPES_V1 = Genotype(
    normal=[("dil_conv_3x3", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 2),
            ("dil_conv_3x3", 1), ("skip_connect", 3)],
    normal_concat=[2, 3, 4],
    reduce=[("skip_connect", 0), ("max_pool_3x3", 1), ("skip_connect", 0), ("skip_connect", 2),
            ("skip_connect", 0), ("skip_connect", 1)],
    reduce_concat=[2, 3, 4],
)

KNOWN_GENOTYPES: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2,
                                        "CAPNAS_SHAPES_V1": CAPNAS_SHAPES_V1}


def resolve_genotype(name_or_path) -> Genotype:
    """A `Genotype` from itself, a name in `KNOWN_GENOTYPES`, or a path to a genotype JSON file."""
    if isinstance(name_or_path, Genotype):
        return name_or_path
    if isinstance(name_or_path, dict):
        return Genotype.from_dict(name_or_path)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"resolve_genotype: expected a Genotype, a known name or a path; "
                        f"received {type(name_or_path).__name__}.")
    if str(name_or_path) in KNOWN_GENOTYPES:
        return KNOWN_GENOTYPES[str(name_or_path)]
    if os.path.exists(name_or_path):
        return Genotype.load(os.fspath(name_or_path))
    raise ValueError(f"resolve_genotype: {str(name_or_path)!r} is neither a known genotype "
                     f"({sorted(KNOWN_GENOTYPES)}) nor an existing file.")


# --- Deriving a genotype from A ------------------------------------------------------------------

def softmax_np(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis, in numpy."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def num_nodes_for_edges(edges: int) -> int:
    """N such that N(N+3)/2 = `edges`; an error if there is none."""
    n = 0
    while num_edges(n) < edges:
        n += 1
    if num_edges(n) != edges:
        raise ValueError(f"{edges} edges do not make a DARTS cell (E = N(N+3)/2: 2, 5, 9, 14, 20, …).")
    return n


def _parse_cell(weights: np.ndarray, primitives: tuple, num_nodes: int) -> list:
    """DARTS' rule: per node, the 2 incoming edges whose strongest non-`none` op weight is largest,
    each with that op. Ties go to the lower input index (stable sort)."""
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    if not candidates:
        raise ValueError("derive_genotype: primitives contain only 'none'; nothing to choose.")
    gene = []
    for i in range(num_nodes):
        rows = weights[num_edges(i): num_edges(i + 1)][:, candidates]  # (i + 2, K')
        strongest = rows.max(axis=1)
        for j in np.argsort(-strongest, kind="stable")[:2]:
            gene.append((primitives[candidates[int(np.argmax(rows[j]))]], int(j)))
    return gene


def _cap_skip_connect(gene: list, weights: np.ndarray, primitives: tuple, max_skip: int) -> list:
    """Keeps at most `max_skip` skip_connects: the weakest (by their own weight) are replaced by the
    strongest op of their edge that is neither `none` nor `skip_connect` (a remedy for DARTS' collapse
    into parameter-free cells)."""
    skips = [slot for slot, (name, _) in enumerate(gene) if name == "skip_connect"]
    if len(skips) <= max_skip:
        return gene
    skip_k = primitives.index("skip_connect")
    others = [k for k, name in enumerate(primitives) if name not in ("none", "skip_connect")]
    if not others:
        raise ValueError("derive_genotype: max_skip_connect needs an op other than 'none' and "
                         f"'skip_connect' in primitives; received {list(primitives)}.")
    row_of = lambda slot: num_edges(slot // 2) + gene[slot][1]  # noqa: E731
    weakest_first = sorted(skips, key=lambda slot: (weights[row_of(slot), skip_k], -slot))
    gene = list(gene)
    for slot in weakest_first[: len(skips) - max_skip]:
        row = weights[row_of(slot)]
        best = others[int(np.argmax(row[others]))]
        gene[slot] = (primitives[best], gene[slot][1])
    return gene


def derive_genotype(alpha_normal, alpha_reduce, primitives=PRIMITIVES, num_nodes: int | None = None,
                    *, max_skip_connect: int | None = None) -> Genotype:
    """Discretises A into a genotype by DARTS' rule (a pure numpy function).

    With p = softmax(α) per edge: for each intermediate node keep the 2 incoming edges with the
    largest max_{k ≠ none} p_k, and on each the op argmax_{k ≠ none} p_k.

    Args:
      alpha_normal, alpha_reduce: A as arrays `[E, K]`.
      primitives: the K op names, in A's column order.
      num_nodes: N; inferred from E = N(N+3)/2 when None.
      max_skip_connect: if set, at most this many skip_connects in the normal cell; the weakest
        extra ones become their edge's best other op. None (default): DARTS' plain rule.

    Returns:
      A `Genotype` whose concat lists are all intermediate nodes, 2 … N+1.
    """
    primitives = tuple(primitives)
    alphas = [np.asarray(a, dtype=np.float64) for a in (alpha_normal, alpha_reduce)]
    for name, a in zip(("alpha_normal", "alpha_reduce"), alphas):
        if a.ndim != 2 or a.shape[1] != len(primitives):
            raise ValueError(f"derive_genotype: {name} must have shape [E, K={len(primitives)}] "
                             f"(one column per primitive); received {a.shape}.")
    if num_nodes is None:
        num_nodes = num_nodes_for_edges(alphas[0].shape[0])
    for name, a in zip(("alpha_normal", "alpha_reduce"), alphas):
        if a.shape[0] != num_edges(num_nodes):
            raise ValueError(f"derive_genotype: {name} has {a.shape[0]} rows; {num_nodes} nodes need "
                             f"{num_edges(num_nodes)} edges.")
    if max_skip_connect is not None and max_skip_connect < 0:
        raise ValueError(f"derive_genotype: max_skip_connect must be >= 0 or None; received {max_skip_connect}.")
    w_normal, w_reduce = (softmax_np(a) for a in alphas)
    normal = _parse_cell(w_normal, primitives, num_nodes)
    if max_skip_connect is not None and "skip_connect" in primitives:
        normal = _cap_skip_connect(normal, w_normal, primitives, max_skip_connect)
    reduce = _parse_cell(w_reduce, primitives, num_nodes)
    concat = list(range(2, 2 + num_nodes))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def genotype_from_importance(op_importance, edge_importance, primitives=PRIMITIVES, num_nodes: int | None = None,
                             *, max_skip_connect: int | None = None) -> Genotype:
    """Discretises by measured importance instead of A's magnitude (DARTS-PT's selection, arXiv 2108.04392,
    without its fine-tuning between decisions): per node, the 2 incoming edges whose removal costs the most
    (`edge_importance[cell]` `[E]`), each with the op (not `none`) whose removal costs the most
    (`op_importance[cell]` `[E, K]`); with `max_skip_connect`, the least important extra skip_connects of the
    normal cell become their edge's most important other op. A pure numpy function.

    Args:
      op_importance: (normal, reduce), each `[E, K]`: the loss increase when op k is taken off edge e.
      edge_importance: (normal, reduce), each `[E]`: the loss increase when edge e is taken off.
    """
    primitives = tuple(primitives)
    ops = [np.asarray(a, dtype=np.float64) for a in op_importance]
    edges = [np.asarray(a, dtype=np.float64) for a in edge_importance]
    if num_nodes is None:
        num_nodes = num_nodes_for_edges(ops[0].shape[0])
    for name, a, e in zip(CELL_TYPES, ops, edges):
        if a.shape != (num_edges(num_nodes), len(primitives)) or e.shape != (num_edges(num_nodes),):
            raise ValueError(f"genotype_from_importance: the {name} cell's importances must have shapes "
                             f"[E={num_edges(num_nodes)}, K={len(primitives)}] and [E]; received {a.shape} and "
                             f"{e.shape}.")
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    cells = []
    for a, e in zip(ops, edges):
        gene = []
        for i in range(num_nodes):
            rows = slice(num_edges(i), num_edges(i + 1))
            for j in np.argsort(-e[rows], kind="stable")[:2]:
                gene.append((primitives[candidates[int(np.argmax(a[rows][j, candidates]))]], int(j)))
        cells.append(gene)
    normal, reduce = cells
    if max_skip_connect is not None and "skip_connect" in primitives:
        normal = _cap_skip_connect(normal, ops[0], primitives, max_skip_connect)
    concat = list(range(2, 2 + num_nodes))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def _sample_cell(rng: np.random.Generator, ops: tuple, num_nodes: int) -> list:
    gene = []
    for i in range(num_nodes):
        # An unordered pair of distinct inputs, listed ascending so equal architectures compare equal.
        inputs = np.sort(rng.choice(i + 2, size=2, replace=False))
        gene.extend((ops[int(rng.integers(len(ops)))], int(j)) for j in inputs)
    return gene


def sample_genotype(rng: np.random.Generator, *, primitives=PRIMITIVES, num_nodes: int = 4,
                    max_skip_connect: int | None = None) -> Genotype:
    """An architecture drawn uniformly from the space `derive_genotype` can produce (a pure function
    of `rng`'s state): for each cell and each intermediate node i, two distinct inputs among the
    i + 2 states (every unordered pair equally likely) and, on each, an op drawn uniformly from the
    primitives other than `none`. Inputs are listed in ascending order.

    Args:
      rng: the numpy Generator to draw from (advanced by the call).
      primitives: the candidate op names; `none` is never chosen.
      num_nodes: N, intermediate nodes per cell.
      max_skip_connect: if set, at most this many skip_connects in the normal cell, as in
        `derive_genotype`; the normal cell is redrawn until it complies, so the draw stays uniform
        over the restricted space.

    Returns:
      A `Genotype` whose concat lists are all intermediate nodes, 2 … N+1.

    Reference: Li & Talwalkar, "Random Search and Reproducibility for NAS", arXiv:1902.07638.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_genotype: rng must be a numpy.random.Generator (np.random.default_rng(seed)); "
                        f"received {type(rng).__name__}.")
    ops = tuple(name for name in primitives if name != "none")
    if not ops:
        raise ValueError(f"sample_genotype: primitives must contain an op other than 'none'; "
                         f"received {list(primitives)}.")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise ValueError(f"sample_genotype: num_nodes must be an integer >= 1; received {num_nodes!r}.")
    if max_skip_connect is not None:
        if max_skip_connect < 0:
            raise ValueError(f"sample_genotype: max_skip_connect must be >= 0 or None; received {max_skip_connect}.")
        if max_skip_connect == 0 and ops == ("skip_connect",):
            raise ValueError("sample_genotype: max_skip_connect=0 leaves no op to choose; primitives "
                             f"{list(primitives)} have only skip_connect besides none.")
    normal = _sample_cell(rng, ops, num_nodes)
    while (max_skip_connect is not None
           and [name for name, _ in normal].count("skip_connect") > max_skip_connect):
        normal = _sample_cell(rng, ops, num_nodes)
    reduce = _sample_cell(rng, ops, num_nodes)
    concat = list(range(2, 2 + num_nodes))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)


def genotype_op_weights(genotype: Genotype, primitives=PRIMITIVES):
    """The one-hot op weights `(w_normal [E, K], w_reduce [E, K])` that make a supernet compute the
    genotype: 1 at each chosen (edge, op), 0 elsewhere (including unchosen edges).

    Needs all intermediate nodes concatenated (concat = 2 … N+1), as the supernet does.
    """
    primitives = tuple(primitives)
    result = []
    for cell in CELL_TYPES:
        n = genotype.num_nodes(cell)
        if tuple(getattr(genotype, f"{cell}_concat")) != tuple(range(2, 2 + n)):
            raise ValueError(f"genotype_op_weights: {cell}_concat must be all intermediate nodes "
                             f"{list(range(2, 2 + n))} to match a supernet; received "
                             f"{list(getattr(genotype, cell + '_concat'))}.")
        w = np.zeros((num_edges(n), len(primitives)), np.float32)
        for slot, (name, index) in enumerate(getattr(genotype, cell)):
            if name not in primitives:
                raise ValueError(f"genotype_op_weights: op {name!r} of {cell}[{slot}] is not among the "
                                 f"supernet's primitives {list(primitives)}.")
            w[num_edges(slot // 2) + index, primitives.index(name)] += 1.0
        result.append(w)
    return tuple(result)
