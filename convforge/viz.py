"""A picture of a graph: ops as boxes in topological layers, fused regions drawn as one
box listing what they fuse, parameters folded into their consumer's label."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from convforge.fileio import atomic_write
from convforge.ir.graph import Graph, Node
from convforge.ir.ops import registry

_COLOURS = {
    "fusion": "#f6c85f",
    "conv": "#9dd9d2",
    "linear": "#b9d7f7",
    "pool": "#d5c6e0",
    "norm": "#f4b6c2",
    "loss": "#f7a072",
    "update": "#c4e3b5",
    "backward": "#e8e8e8",
}


def draw_graph(graph: Graph, path: str | os.PathLike) -> Path:
    """Write a PNG or SVG picture of ``graph`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    path = Path(path)
    g = nx.DiGraph()
    g.add_node("x", label="input x\n" + str(graph.inputs[0].type) if graph.inputs else "input", kind="input")
    for i, node in enumerate(graph.nodes):
        g.add_node(i, label=_label(node), kind=_kind(node))
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v.producer is not None:
                g.add_edge(index[id(v.producer)], i)
            elif graph.inputs and v is graph.inputs[0]:
                g.add_edge("x", i)
    layers = list(nx.topological_generations(g))
    lines = {n: g.nodes[n]["label"].count("\n") + 1 for n in g.nodes}
    box_w, gap_x, line_h, gap_y = 2.8, 0.4, 0.3, 0.45
    pos, y = {}, 0.0
    for layer in layers:
        height = max(lines[n] for n in layer) * line_h
        y -= height / 2
        for k, n in enumerate(sorted(layer, key=str)):
            pos[n] = ((k - (len(layer) - 1) / 2) * (box_w + gap_x), y)
        y -= height / 2 + gap_y
    width = max(len(layer) for layer in layers) * (box_w + gap_x)
    fig, ax = plt.subplots(figsize=(max(6, width * 1.1), max(4, -y * 1.1)))
    for a, b in g.edges:
        ax.annotate(
            "",
            xy=pos[b],
            xytext=pos[a],
            arrowprops=dict(arrowstyle="->", color="#555", shrinkA=12, shrinkB=12, alpha=0.7),
        )
    for n, (x, yy) in pos.items():
        kind = g.nodes[n]["kind"]
        h = lines[n] * line_h
        box = FancyBboxPatch(
            (x - box_w / 2, yy - h / 2),
            box_w,
            h,
            boxstyle="round,pad=0.04",
            fc=_COLOURS.get(kind, "#ffffff"),
            ec="#333",
            lw=1.2 if kind == "fusion" else 0.8,
        )
        ax.add_patch(box)
        ax.text(x, yy, g.nodes[n]["label"], ha="center", va="center", fontsize=7, family="monospace")
    ax.set_xlim(-width / 2 - 0.5, width / 2 + 0.5)
    ax.set_ylim(y, 0.5)
    ax.axis("off")
    ax.set_title(f"@{graph.name}", fontsize=10)
    fig.tight_layout()
    fmt = path.suffix.lower().lstrip(".") or "png"
    try:  # whole or not at all: a temporary file beside `path`, renamed over it
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110 if fmt != "svg" else None))
    finally:
        plt.close(fig)
    return path


def _label(node: Node) -> str:
    out = str(node.outputs[0].type) if node.outputs else ""
    if node.region is not None and registry.get(node.op).region:
        chain = "\n -> ".join(n.op for n in node.region.nodes)
        return f"{node.op}\n{chain}\n{out}"
    return f"{node.op}\n{out}"


def _kind(node: Node) -> str:
    if registry.get(node.op).region:
        return "fusion"  # every region op is drawn as a fused box
    phase = node.meta.get("phase")
    if phase in ("backward", "update"):
        return phase
    for key in ("conv", "linear", "pool", "norm"):
        if key in node.op:
            return key
    if node.op in ("cross_entropy", "mse_loss"):
        return "loss"
    return "other"
