"""A picture of a graph a person can read: a layered (Sugiyama-style) drawing.

Ops are boxes in rows, top to bottom in data-flow order, coloured by op family (a legend
says which colour is which), each labelled with its op (a fused region with the chain it
fuses), its layer name and its output type; parameters are named in their consumer's box.
A training graph's rows are grouped into its phases (forward / backward / update, from
node meta ``"phase"``) on shaded bands, and ``forward_only=True`` draws the forward phase
alone. Edges never cross a box: an edge spanning several rows runs through a reserved
slot in every row it passes (a *dummy* node, as in Sugiyama's method), straight through
the row and curved only in the gaps between rows, where there are no boxes.

    draw_graph(step.graph_for("train"), "lenet-train.png")
    draw_graph(net.graph, "resnet.svg", forward_only=True)
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections import defaultdict
from pathlib import Path

from convforge.fileio import atomic_write
from convforge.ir.graph import Graph, Node
from convforge.ir.ops import registry
from convforge.ir.types import BATCH

PHASES = ("forward", "backward", "update")

#: box colour per op family (``Op.family``); graph inputs are "input"
COLOURS = {
    "input": "#ffffff",
    "fusion": "#f6c85f",
    "conv": "#9dd9d2",
    "linear": "#b9d7f7",
    "pool": "#d5c6e0",
    "norm": "#f4b6c2",
    "activation": "#ffe8a8",
    "elementwise": "#e3e3e3",
    "shape": "#cfcfcf",
    "loss": "#f7a072",
    "optim": "#c4e3b5",
    "resize": "#a8d5ba",
    "collective": "#e0c097",
}
_OTHER = "#f0e6d8"
_BANDS = {"forward": "#eef5fc", "backward": "#fcf1ee", "update": "#eef8ea"}

# layout units (1 unit = _INCH inches on the page)
_INCH = 0.5
_CHAR_W, _LINE_H, _PAD = 0.125, 0.34, 0.3
_DUMMY_W, _GAP_X, _GAP_Y = 0.3, 0.45, 1.1
_WRAP = 30  # characters per label line


@dataclasses.dataclass
class Item:
    """One slot of the layout: a box (an op or a graph input) or an edge's dummy."""

    key: object
    label: str = ""
    kind: str = ""
    phase: str = "forward"
    dummy: bool = False
    row: int = 0
    x: float = 0.0
    y: float = 0.0
    width: float = _DUMMY_W
    height: float = 0.0


@dataclasses.dataclass
class Layout:
    """Boxes, and per edge the polyline it is drawn along (curved between rows only)."""

    items: list[Item]
    rows: list[list[Item]]
    row_y: list[tuple[float, float]]  # per row: (top, bottom)
    edges: list[list[tuple[float, float]]]  # waypoints: source bottom ... target top
    width: float
    height: float

    def boxes(self) -> list[Item]:
        return [i for i in self.items if not i.dummy]


def draw_graph(graph: Graph, path: str | os.PathLike, *, forward_only: bool = False) -> Path:
    """Write a PNG or SVG picture of ``graph`` to ``path`` (atomically); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    lay = layout(graph, forward_only=forward_only)
    fig_w, fig_h = max(8.0, (lay.width + 2.5) * _INCH), max(4.0, (lay.height + 2.2) * _INCH)
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1))
    try:
        _draw(ax, graph, lay, forward_only)
        ax.set_xlim(-1.8, lay.width + 0.7)
        ax.set_ylim(-lay.height - 0.6, 1.6)
        ax.axis("off")
        fmt = path.suffix.lower().lstrip(".") or "png"
        # Agg refuses images over 2**16 pixels a side: a huge graph gets a lower resolution
        dpi = min(100.0, 60000.0 / max(fig_w, fig_h))
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi if fmt != "svg" else None))
    finally:
        plt.close(fig)
    return path


def layout(graph: Graph, *, forward_only: bool = False) -> Layout:
    """Place ``graph``'s boxes in rows and route its edges (see the module docstring)."""
    items, edges = _items_and_edges(graph, forward_only)
    _assign_rows(items, edges, graph)
    rows, chains = _insert_dummies(items, edges)
    _order_rows(rows, chains)
    row_y = _place(rows, chains)
    routes = [_route(chain, row_y, ports) for chain, ports in zip(chains, _ports(chains))]
    width = max((i.x + i.width / 2 for i in rows_flat(rows)), default=1.0)
    height = -row_y[-1][1] if row_y else 1.0
    return Layout(rows_flat(rows), rows, row_y, routes, width, height)


def rows_flat(rows: list[list[Item]]) -> list[Item]:
    return [i for row in rows for i in row]


# -- what is drawn --------------------------------------------------------------------------
def _phase(node: Node) -> str:
    phase = node.meta.get("phase")
    return phase if phase in PHASES else "forward"


def _items_and_edges(graph: Graph, forward_only: bool) -> tuple[list[Item], list[tuple[Item, Item]]]:
    nodes = [n for n in graph.nodes if not forward_only or _phase(n) == "forward"]
    kept = {id(n) for n in nodes}
    # data inputs (those with a batch dimension: x, target) are boxes; parameters and
    # optimizer state are named inside the box that reads them
    data = {id(v): v for v in graph.inputs if BATCH in v.type.shape or v.name in ("x", "target")}
    boxes: dict[int, Item] = {}
    for v in graph.inputs:
        if id(v) in data and any(id(u) in kept for u in v.users):
            boxes[id(v)] = Item(("input", v.name), f"input {v.name}\n{v.type}", "input", width=0)
    for n in nodes:
        boxes[id(n)] = Item(("node", id(n)), _label(n, data), _kind(n), _phase(n), width=0)
    for item in boxes.values():
        lines = item.label.split("\n")
        item.width = max(len(line) for line in lines) * _CHAR_W + 2 * _PAD
        item.height = len(lines) * _LINE_H + _PAD
    edges, seen = [], set()
    for n in nodes:
        for v in n.inputs:
            src = id(v.producer) if v.producer is not None else id(v)
            if src in boxes and (src, id(n)) not in seen:
                seen.add((src, id(n)))
                edges.append((boxes[src], boxes[id(n)]))
    order = [boxes[id(v)] for v in graph.inputs if id(v) in boxes] + [boxes[id(n)] for n in nodes]
    return order, edges


def _label(node: Node, data: dict[int, object]) -> str:
    if node.region is not None and registry.get(node.op).region:
        chain = " -> ".join(n.op for n in node.region.nodes)
        head = textwrap.wrap(f"fusion: {chain}", _WRAP, subsequent_indent="  ", break_on_hyphens=False)
    else:
        head = [node.op]
    lines = list(head)
    layer = node.meta.get("layer")
    if layer:
        lines.append(str(layer))
    params = [v.name for v in node.inputs if v.producer is None and id(v) not in data]
    if params and _phase(node) != "update":  # an update's layer already names its parameter
        lines += textwrap.wrap(
            "<- " + ", ".join(params), _WRAP, subsequent_indent="   ", max_lines=2, placeholder=" ..."
        )
    if node.outputs:
        more = f" (+{len(node.outputs) - 1})" if len(node.outputs) > 1 else ""
        lines.append(f"{node.outputs[0].type}{more}")
    return "\n".join(lines)


def _kind(node: Node) -> str:
    return registry.get(node.op).family or "other"


# -- rows -----------------------------------------------------------------------------------
def _assign_rows(items: list[Item], edges: list[tuple[Item, Item]], graph: Graph) -> None:
    """Longest-path rows, each phase below the one before it; sources (graph inputs, ops
    reading parameters only, such as a batch-norm fold) just above their first reader."""
    preds: dict[int, list[Item]] = defaultdict(list)
    succs: dict[int, list[Item]] = defaultdict(list)
    for a, b in edges:
        preds[id(b)].append(a)
        succs[id(a)].append(b)
    ops = [i for i in items if i.kind != "input"]
    start, assigned = 1, set()
    for phase in PHASES:
        members = [i for i in ops if i.phase == phase]  # graph order is topological
        for item in members:
            rows = [p.row + 1 for p in preds[id(item)] if id(p) in assigned]
            item.row = max([start, *rows])
            assigned.add(id(item))
        if members:
            start = max(i.row for i in members) + 1
    for item in reversed(items):  # sources (inputs, ops on parameters only) sit above their first reader
        if not preds[id(item)] and succs[id(item)]:
            item.row = min(s.row for s in succs[id(item)]) - 1
    low = min((i.row for i in items), default=0)
    for item in items:
        item.row -= low


def _insert_dummies(
    items: list[Item], edges: list[tuple[Item, Item]]
) -> tuple[list[list[Item]], list[list[Item]]]:
    """Rows of items, and per edge its chain of slots (source, dummies..., target)."""
    rows: list[list[Item]] = [[] for _ in range(max((i.row for i in items), default=0) + 1)]
    for item in items:
        rows[item.row].append(item)
    chains = []
    for a, b in edges:
        chain = [a]
        for r in range(a.row + 1, b.row):
            dummy = Item(("dummy", len(chains), r), dummy=True, row=r, phase=b.phase)
            rows[r].append(dummy)
            chain.append(dummy)
        chain.append(b)
        chains.append(chain)
    return rows, chains


def _neighbours(chains: list[list[Item]]) -> tuple[dict[int, list[Item]], dict[int, list[Item]]]:
    up: dict[int, list[Item]] = defaultdict(list)
    down: dict[int, list[Item]] = defaultdict(list)
    for chain in chains:
        for a, b in zip(chain, chain[1:]):
            up[id(b)].append(a)
            down[id(a)].append(b)
    return up, down


def _order_rows(rows: list[list[Item]], chains: list[list[Item]], sweeps: int = 6) -> None:
    """Reduce crossings: sort each row by the mean position of its neighbours (barycentres),
    sweeping down and up."""
    up, down = _neighbours(chains)

    def sweep(order: range, side: dict[int, list[Item]]) -> None:
        for r in order:
            pos = {id(i): k for row in rows for k, i in enumerate(row)}  # place within its row
            keyed = []
            for k, item in enumerate(rows[r]):
                near = [pos[id(n)] for n in side[id(item)]]
                keyed.append((sum(near) / len(near) if near else k, k, item))
            rows[r] = [item for _, _, item in sorted(keyed, key=lambda t: t[:2])]

    for _ in range(sweeps):
        sweep(range(1, len(rows)), up)
        sweep(range(len(rows) - 2, -1, -1), down)


def _place(
    rows: list[list[Item]], chains: list[list[Item]], iterations: int = 12
) -> list[tuple[float, float]]:
    """x: each slot pulled towards its neighbours' mean, rows kept in order and apart; y: rows
    stacked with a gap for the curves."""
    up, down = _neighbours(chains)
    for row in rows:
        x = 0.0
        for item in row:
            item.x = x + item.width / 2
            x += item.width + _GAP_X
    for it in range(iterations):
        order = range(len(rows)) if it % 2 == 0 else range(len(rows) - 1, -1, -1)
        for r in order:
            row = rows[r]
            want = []
            for item in row:
                # a dummy follows the side the sweep comes from, so long edges run straight
                near = (
                    (up if it % 2 == 0 else down)[id(item)] if item.dummy else up[id(item)] + down[id(item)]
                )
                near = near or up[id(item)] + down[id(item)]
                want.append(sum(n.x for n in near) / len(near) if near else item.x)
            _fit(row, want)
    low = min((i.x - i.width / 2 for row in rows for i in row), default=0.0)
    for row in rows:
        for item in row:
            item.x -= low
    row_y, y = [], 0.0
    for row in rows:
        height = max((i.height for i in row), default=0.0)
        top, bottom = y, y - height
        for item in row:
            item.y = (top + bottom) / 2
        row_y.append((top, bottom))
        y = bottom - _GAP_Y
    return row_y


def _fit(row: list[Item], want: list[float]) -> None:
    """Positions as close to ``want`` as the row's order and spacing allow (the mean of a
    left-to-right and a right-to-left packing)."""
    n = len(row)
    if not n:
        return
    left = [0.0] * n
    for k in range(n):
        left[k] = want[k] if k == 0 else max(want[k], left[k - 1] + _sep(row[k - 1], row[k]))
    right = [0.0] * n
    for k in range(n - 1, -1, -1):
        right[k] = want[k] if k == n - 1 else min(want[k], right[k + 1] - _sep(row[k], row[k + 1]))
    for k in range(n):
        row[k].x = (left[k] + right[k]) / 2
    for k in range(1, n):  # the mean of two valid packings is valid; rounding is not trusted
        row[k].x = max(row[k].x, row[k - 1].x + _sep(row[k - 1], row[k]))


def _sep(a: Item, b: Item) -> float:
    return (a.width + b.width) / 2 + _GAP_X


# -- edges ----------------------------------------------------------------------------------
def _ports(chains: list[list[Item]]) -> list[tuple[float, float]]:
    """Per chain, where it leaves its source and enters its target: spread along the box's
    bottom / top edge in the order of the other ends, so edges into one box do not overlap."""
    outs: dict[int, list[int]] = defaultdict(list)
    ins: dict[int, list[int]] = defaultdict(list)
    for k, chain in enumerate(chains):
        outs[id(chain[0])].append(k)
        ins[id(chain[-1])].append(k)
    port = [[c[0].x, c[-1].x] for c in chains]
    for groups, end, other in ((outs, 0, 1), (ins, -1, -2)):
        for ks in groups.values():
            ks.sort(key=lambda k: chains[k][other].x)
            box = chains[ks[0]][end]
            for rank, k in enumerate(ks):
                offset = ((rank + 1) / (len(ks) + 1) - 0.5) * box.width * 0.7
                port[k][0 if end == 0 else 1] = box.x + offset
    return [(a, b) for a, b in port]


def _route(
    chain: list[Item], row_y: list[tuple[float, float]], ports: tuple[float, float]
) -> list[tuple[float, float]]:
    """Waypoints: down from the source box to its row's bottom, through each dummy's slot
    (a straight line through the row), into the target row and down to the box's top.
    Between rows the drawing curves from one waypoint to the next."""
    src, dst = chain[0], chain[-1]
    points = [(ports[0], src.y - src.height / 2), (ports[0], row_y[src.row][1])]
    for dummy in chain[1:-1]:
        top, bottom = row_y[dummy.row]
        points += [(dummy.x, top), (dummy.x, bottom)]
    points += [(ports[1], row_y[dst.row][0]), (ports[1], dst.y + dst.height / 2)]
    return points


def curve(points: list[tuple[float, float]]) -> tuple[list[tuple[float, float]], list[int]]:
    """Matplotlib path vertices and codes for a route: straight inside rows (pairs of points
    at one x), a cubic curve with vertical tangents across each gap between rows."""
    from matplotlib.path import Path as MplPath

    verts, codes = [points[0]], [MplPath.MOVETO]
    for k in range(1, len(points)):
        (x0, y0), (x1, y1) = points[k - 1], points[k]
        if k % 2 == 1:  # inside a row: straight down
            verts.append((x1, y1))
            codes.append(MplPath.LINETO)
        else:  # a gap between rows
            mid = (y0 + y1) / 2
            verts += [(x0, mid), (x1, mid), (x1, y1)]
            codes += [MplPath.CURVE4] * 3
    return verts, codes


# -- drawing --------------------------------------------------------------------------------
def _draw(ax, graph: Graph, lay: Layout, forward_only: bool) -> None:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, PathPatch, Rectangle
    from matplotlib.path import Path as MplPath

    boxes = lay.boxes()
    phases = [p for p in PHASES if any(b.phase == p and b.kind != "input" for b in boxes)]
    if len(phases) > 1 or phases != ["forward"]:
        for phase in phases:
            rows = [b.row for b in boxes if b.phase == phase and b.kind != "input"]
            top, bottom = lay.row_y[min(rows)][0] + 0.4, lay.row_y[max(rows)][1] - 0.4
            ax.add_patch(
                Rectangle(
                    (-1.6, bottom), lay.width + 2.1, top - bottom, fc=_BANDS[phase], ec="none", zorder=0
                )
            )
            ax.text(-1.3, (top + bottom) / 2, phase, rotation=90, ha="center", va="center", fontsize=13,
                    color="#555", weight="bold", zorder=1)  # fmt: skip
    for route in lay.edges:
        verts, codes = curve(route)
        ax.add_patch(PathPatch(MplPath(verts, codes), fc="none", ec="#667", lw=0.9, alpha=0.85, zorder=2))
        x1, y1 = route[-1]
        ax.add_patch(
            FancyArrowPatch(
                (x1, y1 + 0.05), (x1, y1), arrowstyle="-|>", mutation_scale=9, color="#445", zorder=3
            )
        )
    for b in boxes:
        ax.add_patch(
            FancyBboxPatch(
                (b.x - b.width / 2, b.y - b.height / 2), b.width, b.height,
                boxstyle="round,pad=0.02,rounding_size=0.12",
                fc=COLOURS.get(b.kind, _OTHER), ec="#333", lw=1.4 if b.kind == "fusion" else 0.8, zorder=4,
            )
        )  # fmt: skip
        ax.text(b.x, b.y, b.label, ha="center", va="center", fontsize=8, family="monospace", zorder=5)
    kinds = sorted({b.kind for b in boxes}, key=lambda k: (k == "input", k))
    handles = [Patch(fc=COLOURS.get(k, _OTHER), ec="#333", label=k) for k in kinds]
    ax.legend(handles=handles, loc="upper right", title="op family", fontsize=9, title_fontsize=9,
              ncol=min(len(handles), 7), frameon=True)  # fmt: skip
    counts = ", ".join(f"{sum(b.phase == p and b.kind != 'input' for b in boxes)} {p}" for p in phases)
    view = " (forward only)" if forward_only else ""
    ax.text(-1.6, 1.2, f"@{graph.name}{view}: {counts} ops", fontsize=12, weight="bold", va="center")


__all__ = ["COLOURS", "PHASES", "Layout", "curve", "draw_graph", "layout"]
