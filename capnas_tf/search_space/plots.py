"""Pictures of a search: the derived cells of a genotype, and a heatmap of softmax(A).

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state, no display, no
graphviz). Each picture is available as PNG bytes, as a uint8 `[H, W, 3]` array (for
`tf.summary.image`), or written to a file atomically.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from capnas_tf.io_utils import atomic_write_bytes
from capnas_tf.search_space.genotypes import CELL_TYPES, Genotype, softmax_np, num_nodes_for_edges

_COLOURS = {"input": "#a6cee3", "node": "#fdbf6f", "output": "#b2df8a"}


def _figure_png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _png_to_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)


# --- Cells -------------------------------------------------------------------------------------------

def _node_positions(num_nodes: int) -> dict:
    """Inputs at the top and bottom left, intermediate nodes on a row (node-to-node edges are drawn
    as arcs below it, so that no edge runs through a node), the output on the right."""
    positions = {"c_{k-2}": (0.0, 2.6), "c_{k-1}": (0.0, -2.6)}
    for i in range(num_nodes):
        positions[str(i)] = (1.5 + 1.5 * i, 0.0)
    positions["c_{k}"] = (1.5 + 1.5 * num_nodes, 0.0)
    return positions


def _state_name(index: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, str(index - 2))


def _draw_cell(ax, edges, concat, title: str) -> None:
    num_nodes = len(edges) // 2
    pos = _node_positions(num_nodes)

    def arrow(src, dst, label=None, colour="black", rad=0.12):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2, shrinkA=13, shrinkB=13,
                                    connectionstyle=f"arc3,rad={rad}"))
        if label:
            # A point of matplotlib's arc3 Bézier curve B(t) (control point: chord midpoint +
            # rad·(dy, −dx)); straight edges are labelled nearer their target so labels spread out.
            t = 0.5 if rad else 0.7
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            xm = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t ** 2 * x1
            ym = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t ** 2 * y1
            ax.text(xm, ym, label, fontsize=7, ha="center", va="center", color="#333333",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))

    for slot, (op, index) in enumerate(edges):
        arrow(_state_name(index), str(slot // 2), op, rad=0.0 if index < 2 else 0.45)
    for index in concat:
        arrow(_state_name(index), "c_{k}", colour="#999999", rad=-0.25)
    for name, (x, y) in pos.items():
        kind = "input" if name.startswith("c_{k-") else "output" if name == "c_{k}" else "node"
        label = f"${name}$" if name.startswith("c_") else name
        ax.text(x, y, label, ha="center", va="center", fontsize=9, zorder=3,
                bbox=dict(boxstyle="round,pad=0.4", fc=_COLOURS[kind], ec="black"))
    ax.set_title(title)
    ax.set_xlim(-0.5, 2.0 + 1.5 * num_nodes)
    ax.set_ylim(-3.0, 3.0)
    ax.axis("off")


def genotype_png(genotype: Genotype, dpi: int = 100) -> bytes:
    """PNG bytes of the normal and reduction cells, edges labelled with their op names."""
    width = 2.2 * max(genotype.num_nodes(c) for c in CELL_TYPES) + 3
    fig = Figure(figsize=(width, 9.0))
    for row, cell in enumerate(CELL_TYPES):
        ax = fig.add_subplot(2, 1, row + 1)
        _draw_cell(ax, getattr(genotype, cell), getattr(genotype, f"{cell}_concat"), f"{cell} cell")
    fig.tight_layout()
    return _figure_png(fig, dpi)


def genotype_image(genotype: Genotype) -> np.ndarray:
    """The cell diagram as uint8 `[H, W, 3]` (for `tf.summary.image` after adding a batch axis)."""
    return _png_to_array(genotype_png(genotype))


def render_genotype(genotype: Genotype, path: str) -> None:
    """Writes the cell diagram to `path` (PNG, atomically)."""
    atomic_write_bytes(path, genotype_png(genotype))


# --- A --------------------------------------------------------------------------------------------

def _edge_labels(num_edges_: int) -> list:
    n = num_nodes_for_edges(num_edges_)
    return [f"{_state_name(j)}→{i}".replace("_{", "").replace("}", "") for i in range(n) for j in range(i + 2)]


def alpha_heatmap_png(alpha_normal, alpha_reduce, primitives, dpi: int = 100) -> bytes:
    """PNG bytes of softmax(A) per edge (rows) and op (columns), one panel per cell type."""
    primitives = list(primitives)
    fig = Figure(figsize=(2.0 + 0.9 * len(primitives) * 2, 1.5 + 0.35 * np.shape(alpha_normal)[0]))
    for col, (cell, alpha) in enumerate(zip(CELL_TYPES, (alpha_normal, alpha_reduce))):
        weights = softmax_np(np.asarray(alpha, np.float64))
        if weights.ndim != 2 or weights.shape[1] != len(primitives):
            raise ValueError(f"alpha_heatmap_png: alpha_{cell} must have shape [E, K={len(primitives)}]; "
                             f"received {weights.shape}.")
        ax = fig.add_subplot(1, 2, col + 1)
        image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
        ax.set_xticks(range(len(primitives)), primitives, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(weights.shape[0]), _edge_labels(weights.shape[0]), fontsize=7)
        for (e, k), w in np.ndenumerate(weights):
            ax.text(k, e, f"{w:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if w < 0.6 * weights.max() else "black")
        ax.set_title(f"softmax(α_{cell})")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _figure_png(fig, dpi)


def alpha_heatmap_image(alpha_normal, alpha_reduce, primitives) -> np.ndarray:
    """The heatmap as uint8 `[H, W, 3]`."""
    return _png_to_array(alpha_heatmap_png(alpha_normal, alpha_reduce, primitives))


def render_alpha_heatmap(alpha_normal, alpha_reduce, primitives, path: str) -> None:
    """Writes the softmax(A) heatmap to `path` (PNG, atomically)."""
    atomic_write_bytes(path, alpha_heatmap_png(alpha_normal, alpha_reduce, primitives))
