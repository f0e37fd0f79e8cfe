"""Activation kernels: the pointwise ones from their scalar expressions, softmax along a dim.

Pointwise activations and their backward ops are one thread per element
(:func:`convforge.backends.numba_cuda.kernels.templates.map_kernel`); their code is each
op's declared scalar expression (:mod:`convforge.ir.scalar`), so a new activation needs no
edit here. Softmax-family kernels see ``x`` as ``[outer, D, inner]`` (D the softmax dim)
and give one thread to each (outer, inner) row, which makes three passes over its D
elements.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import (
    grid_loop,
    kernel,
    max_sum_exp,
    pointwise,
    rows_view,
)
from convforge.ir import scalar
from convforge.ir.graph import Node


@lowering(*scalar.ops("unary", family="activation"), *scalar.ops("backward", family="activation"))
def _(ctx, node: Node) -> None:
    pointwise(ctx, "activation", node)


# -- softmax family ------------------------------------------------------------------------
_ROW_STATS = max_sum_exp("x[o, {d}, r]", "D", "d")

_BODIES = {
    "softmax": [*_ROW_STATS, "for d in range(D):", "    y[o, d, r] = math.exp(x[o, d, r] - m) / total"],
    "log_softmax": [
        *_ROW_STATS,
        "lse = math.log(total)",
        "for d in range(D):",
        "    y[o, d, r] = (x[o, d, r] - m) - lse",
    ],
    "softmax_backward": [
        "dot = 0.0",
        "for d in range(D):",
        "    dot += gy[o, d, r] * y[o, d, r]",
        "for d in range(D):",
        "    gx[o, d, r] = y[o, d, r] * (gy[o, d, r] - dot)",
    ],
    "log_softmax_backward": [
        "total = 0.0",
        "for d in range(D):",
        "    total += gy[o, d, r]",
        "for d in range(D):",
        "    gx[o, d, r] = gy[o, d, r] - math.exp(y[o, d, r]) * total",
    ],
}


@lowering("softmax", "log_softmax", "softmax_backward", "log_softmax_backward")
def _(ctx, node: Node) -> None:
    shape3 = rows_view(ctx, node.inputs[0], node.attrs["dim"])
    params = ["gy", "y", "gx"] if node.op.endswith("_backward") else ["x", "y"]
    rows = grid_loop("outer * inner", ["o = i // inner", "r = i % inner", *_BODIES[node.op]])
    src = kernel(", ".join(params), [f"outer, D, inner = {params[0]}.shape", *rows])
    fn = ctx.kernel("activation", f"{node.op} (rows of [outer, D, inner])", src)
    values = [*node.inputs, node.outputs[0]]
    blocks, threads = ctx.grid1d(shape3[0] * shape3[2])
    ctx.launch(fn, blocks, threads, *(ctx.view(v, shape3) for v in values))
