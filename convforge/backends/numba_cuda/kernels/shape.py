"""Relayouts: ``flatten`` / ``reshape`` are views (no kernel), ``concat`` / ``slice`` copy.

Buffers are contiguous, so a reshape is the same device memory seen with another shape:
the memory plan (``passes/memory_plan.py``, ``ALIAS_OPS``) keeps the source alive while
the view is. ``concat`` and ``slice`` see every operand as ``[outer, D, inner]`` around
the joined / sliced dim and copy one element per thread.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.activation import rows_view
from convforge.backends.numba_cuda.kernels.elementwise import map_kernel
from convforge.ir.graph import Node


@lowering("flatten", "reshape")
def _(ctx, node: Node) -> None:
    ctx.alias(node.outputs[0], node.inputs[0])


@lowering("concat")
def _(ctx, node: Node) -> None:
    dim = node.attrs["dim"]
    y = node.outputs[0]
    outer, total, inner = rows_view(ctx, y, dim)
    names = [f"x{k}" for k in range(len(node.inputs))]
    body = ["o = i // (D * inner)", "d = (i // inner) % D", "r = i % inner"]
    start = 0
    for k, x in enumerate(node.inputs):
        size = rows_view(ctx, x, dim)[1]
        keyword = "if" if k == 0 else "elif"
        body += [f"{keyword} d < {start + size}:", f"    y[i] = {names[k]}[o, d - {start}, r]"]
        start += size
    sizes = [rows_view(ctx, x, dim)[1] for x in node.inputs]
    map_kernel(
        ctx,
        "shape",
        f"concat {{dim={dim}, sizes={sizes}}}",
        [*names, "y", "D", "inner"],
        body,
        "y",
        [*(ctx.view(x, rows_view(ctx, x, dim)) for x in node.inputs), ctx.flat(y), total, inner],
        ctx.numel(y),
    )


@lowering("slice")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dim, start = node.attrs["dim"], node.attrs["start"]
    shape3 = rows_view(ctx, y, dim)
    body = ["o = i // (D * inner)", "d = (i // inner) % D", "r = i % inner", "y[i] = x[o, d + start, r]"]
    map_kernel(
        ctx,
        "shape",
        "slice",
        ["x", "y", "D", "inner", "start"],
        body,
        "y",
        [ctx.view(x, rows_view(ctx, x, dim)), ctx.flat(y), shape3[1], shape3[2], start],
        ctx.numel(y),
    )
