"""Relayouts: ``flatten`` / ``reshape`` are views (no kernel); ``transpose``, ``concat``,
``slice`` and ``slice_backward`` copy, one thread per output element.

Buffers are contiguous, so a reshape is the same device memory seen with another shape:
the memory plan (``passes/memory_plan.py``, ``ALIAS_OPS``) keeps the source alive while
the view is. ``concat`` and the slices see every operand as ``[outer, D, inner]`` around
the joined / sliced dim. A transpose decodes its output index over the merged dim groups
(``ir.ops.shape.transpose_groups``) and reads the input at the permuted coordinates; it is
specialised on the groups' permutation.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import decode, map_kernel, rows_view
from convforge.ir.graph import Node
from convforge.ir.ops.shape import slice_length, transpose_groups
from convforge.ir.types import BATCH

#: element ``i`` of the flat output as ``(o, d, r)`` of its ``[outer, D, inner]`` view
_ROW_INDEX = decode("i", ["o", "d", "r"], ["", "D", "inner"])


@lowering("flatten", "reshape")
def _(ctx, node: Node) -> None:
    ctx.alias(node.outputs[0], node.inputs[0])


@lowering("concat")
def _(ctx, node: Node) -> None:
    dim = node.attrs["dim"]
    y = node.outputs[0]
    outer, total, inner = rows_view(ctx, y, dim)
    names = [f"x{k}" for k in range(len(node.inputs))]
    body = [*_ROW_INDEX]
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
    dim, start, step = node.attrs["dim"], node.attrs["start"], node.attrs["step"]
    shape3 = rows_view(ctx, y, dim)
    body = [*_ROW_INDEX, "y[i] = x[o, d * step + start, r]"]
    map_kernel(
        ctx,
        "shape",
        "slice",
        ["x", "y", "D", "inner", "start", "step"],
        body,
        "y",
        [ctx.view(x, rows_view(ctx, x, dim)), ctx.flat(y), shape3[1], shape3[2], start, step],
        ctx.numel(y),
    )


@lowering("slice_backward")
def _(ctx, node: Node) -> None:
    gy, gx = node.inputs[0], node.outputs[0]
    a = node.attrs
    length = slice_length(a["start"], a["stop"], a["step"])
    body = [
        *_ROW_INDEX,
        "k = d - start",
        "if k >= 0 and k % step == 0 and k // step < length:",
        "    y[i] = x[o, k // step, r]",
        "else:",
        "    y[i] = 0",
    ]
    outer, size, inner = rows_view(ctx, gx, a["dim"])
    map_kernel(
        ctx,
        "shape",
        "slice_backward",
        ["x", "y", "D", "inner", "start", "step", "length"],
        body,
        "y",
        [ctx.view(gy, (outer, length, inner)), ctx.flat(gx), size, inner, a["start"], a["step"], length],
        ctx.numel(gx),
    )


@lowering("transpose")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    groups, perm = transpose_groups(x.shape, node.attrs["perm"])
    sizes = [_size(ctx, g) for g in groups]
    rank = len(groups)
    out = [f"c{k}" for k in range(rank)]  # coordinate k of the output
    at = [out[perm.index(j)] for j in range(rank)]  # input group j is output group perm.index(j)
    body = [
        *(f"s{k} = y.shape[{k}]" for k in range(rank)),
        *decode("i", out, [f"s{k}" for k in range(rank)]),
        f"y[{', '.join(out)}] = x[{', '.join(at)}]",
    ]
    map_kernel(
        ctx,
        "shape",
        f"transpose {{perm={list(perm)}}}",
        ["x", "y"],
        body,
        "y",
        [ctx.view(x, sizes), ctx.view(y, [sizes[p] for p in perm])],
        ctx.numel(y),
    )


def _size(ctx, dims) -> int:
    n = 1
    for d in dims:
        n *= ctx.batch if d == BATCH else d
    return n
