"""Elementwise kernels (the ops with a scalar expression: add, sub, mul, div, scale,
add_scalar, neg, reciprocal, reciprocal_backward; add_n; ones_like, zeros_like, cast) and
the reductions (reduce_sum, reduce_mean, reduce_max and their backward ops).

Every elementwise op is one thread per output element in a grid-stride loop. Operands of
the output's shape are read flat (:func:`~convforge.backends.numba_cuda.kernels.templates.map_kernel`);
rendered for ``add``::

    @cuda.jit(cache=True)
    def kernel(a, b, y):
        i = cuda.grid(1)
        while i < y.size:
            va = a[i]
            vb = b[i]
            y[i] = (va + vb)
            i += cuda.gridsize(1)

With broadcasting (:func:`broadcast_map`) the output is seen over its merged iteration
space (``ir.ops.elementwise.broadcast_groups``), the flat index is decoded into one
coordinate per group, and each operand is read at those coordinates with 0 where it is
broadcast; the kernel is specialised on which operand is broadcast along which group.

Reductions run one block per output element; the block's threads stride over the reduced
elements and meet in a shared-memory tree (float64): a sum, a mean, a maximum (NaN wins),
and for ``reduce_max_backward`` a count of the maxima before the threads write ``gx``.
A reduction of few elements per output (at most ``SERIAL_MAX``, none along the batch, so
the choice never depends on the batch size) runs one thread per output instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convforge.backends.numba_cuda.codegen import SCALAR
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.templates import (
    block_loop,
    block_reduce,
    consts,
    decode,
    grid_loop,
    kernel,
    map_kernel,
    nest,
    pointwise,
    thread_loop,
)
from convforge.ir import scalar
from convforge.ir.graph import Node
from convforge.ir.ops.elementwise import broadcast_groups, reduced_dims, reduced_shape
from convforge.ir.types import BATCH


@lowering(*scalar.ops("unary", family="elementwise"), *scalar.ops("backward", family="elementwise"))
def _(ctx, node: Node) -> None:
    pointwise(ctx, "elementwise", node)


@lowering(*scalar.ops("binary", family="elementwise"))
def _(ctx, node: Node) -> None:
    y = node.outputs[0]
    if all(v.shape == y.shape for v in node.inputs):
        pointwise(ctx, "elementwise", node)
        return
    expr = scalar.expression(node.op, a="v0", b="v1")
    broadcast_map(ctx, node.op, expr, [v.shape for v in node.inputs], y.shape, [*node.inputs, y])


@lowering("add_n")
def _(ctx, node: Node) -> None:
    y = node.outputs[0]
    expr = "(" + " + ".join(f"v{k}" for k in range(len(node.inputs))) + ")"
    broadcast_map(ctx, "add_n", expr, [v.shape for v in node.inputs], y.shape, [*node.inputs, y])


def broadcast_map(
    ctx,
    what: str,
    expr: str,
    shapes: Sequence[Sequence],
    out_shape: Sequence,
    values: Sequence,
    params: Sequence[str] = (),
    args: Sequence = (),
) -> None:
    """Launch ``y = expr(v0, v1, ..)`` with the operands of IR ``shapes`` broadcast to
    ``out_shape``; ``values`` are the operand values then the output value (each seen with
    its group shape), ``params`` / ``args`` extra scalar kernel parameters and their values."""
    groups = broadcast_groups(out_shape, shapes)
    sizes = [_size(ctx, dims) for dims, _ in groups]
    rank = len(groups)
    coords = [f"c{k}" for k in range(rank)]
    body = [*decode("i", coords, [f"s{k}" for k in range(rank)])]
    for j in range(len(shapes)):
        at = ", ".join("0" if status[j] else coords[k] for k, (_, status) in enumerate(groups))
        body.append(f"v{j} = a{j}[{at}]")
    body.append(f"y[{', '.join(coords)}] = {expr}")
    names = [f"a{j}" for j in range(len(shapes))]
    setup = [f"s{k} = y.shape[{k}]" for k in range(rank)]
    src = kernel(", ".join([*names, "y", *params]), [*setup, *grid_loop("y.size", body)])
    statuses = ["".join("b" if status[j] else "-" for _, status in groups) for j in range(len(shapes))]
    fn = ctx.kernel("elementwise", f"{what} {expr} broadcast {{{', '.join(statuses)}}}", src)
    views = [
        ctx.view(v, [1 if status[j] else sizes[k] for k, (_, status) in enumerate(groups)])
        for j, v in enumerate(values[:-1])
    ]
    total = 1
    for s in sizes:
        total *= s
    blocks, threads = ctx.grid1d(total)
    ctx.launch(fn, blocks, threads, *views, ctx.view(values[-1], sizes), *args)


def _size(ctx, dims) -> int:
    n = 1
    for d in dims:
        n *= ctx.batch if d == BATCH else d
    return n


@lowering("ones_like", "zeros_like")
def _(ctx, node: Node) -> None:
    y = node.outputs[0]
    value = "1" if node.op == "ones_like" else "0"
    if y.dtype == "bool":
        value = "True" if value == "1" else "False"
    pattern = f"{node.op} ({y.dtype})"
    map_kernel(ctx, "elementwise", pattern, ["y"], [f"y[i] = {value}"], "y", [ctx.flat(y)], ctx.numel(y))


@lowering("cast")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    expr = "x[i] != 0" if y.dtype == "bool" else f"{SCALAR[y.dtype]}(x[i])"
    pattern = f"cast {x.dtype} -> {y.dtype}"
    args = [ctx.flat(x), ctx.flat(y)]
    map_kernel(ctx, "elementwise", pattern, ["x", "y"], [f"y[i] = {expr}"], "y", args, ctx.numel(y))


# -- reductions ----------------------------------------------------------------------------
def _max_tree(acc: str, shared: str) -> list[str]:
    """Lines taking the maximum of ``acc`` over the block (a NaN wins) into ``acc``."""
    return [
        f"{shared}[t] = {acc}",
        "cuda.syncthreads()",
        "half = RT // 2",
        "while half > 0:",
        "    if t < half:",
        f"        other = {shared}[t + half]",
        f"        if other > {shared}[t] or other != other:",
        f"            {shared}[t] = other",
        "    cuda.syncthreads()",
        "    half //= 2",
        f"{acc} = {shared}[0]",
        "cuda.syncthreads()",
    ]


#: a reduction of at most this many elements per output, none along the batch, runs one
#: thread per output (serial loop, no shared memory, no barriers); larger ones one block
SERIAL_MAX = 64


def _reduce(ctx, node: Node, kind: str) -> None:
    """A reduction of ``x`` (``kind``: sum, mean, max, max_backward), ``x`` seen with its full
    shape and the output flat: one block per output element, or one thread per output where
    each reduces few elements (:data:`SERIAL_MAX`)."""
    x = node.inputs[1] if kind == "max_backward" else node.inputs[0]
    rank = max(x.type.rank, 1)
    dims = list(reduced_dims(x.type, node.attrs["dims"]))
    sizes = [f"d{k}" for k in range(rank)]
    kept = [k for k in range(rank) if k not in dims]
    at = ", ".join(f"i{k}" for k in range(rank))
    static = [x.shape[d] for d in dims]
    serial = BATCH not in static and int(np.prod(static, dtype=np.int64)) <= SERIAL_MAX

    def over(body: list[str]) -> list[str]:
        """``body`` for every reduced element ``k`` (this thread's share, or all of them)."""
        walk = decode("k", [f"i{k}" for k in dims], [sizes[k] for k in dims], rest="r")
        return (
            ["for k in range(count):", *nest([*walk, *body])]
            if serial
            else thread_loop("count", [*walk, *body])
        )

    def total(names: list[str], tree=block_reduce) -> list[str]:
        return [] if serial else tree(names, ["sh"])

    def store(line: str) -> list[str]:
        return [line] if serial else ["if t == 0:", "    " + line]

    per_output = [*decode("o", [f"i{k}" for k in kept], [sizes[k] for k in kept], rest="rem")]
    if kind in ("sum", "mean"):
        per_output += ["acc = 0.0", *over([f"acc += x[{at}]"]), *total(["acc"])]
        per_output += store("y[o] = acc" + (" / count" if kind == "mean" else ""))
        params = "x, y"
    elif kind == "max":
        step = [f"v = x[{at}]", "if v > acc or v != v:", "    acc = v"]
        per_output += ["acc = -math.inf", *over(step), *total(["acc"], lambda a, _: _max_tree(a[0], "sh"))]
        per_output += store("y[o] = acc")
        params = "x, y"
    else:
        per_output += [
            "m = y[o]",
            "ties = 0.0",
            *over([f"if x[{at}] == m:", "    ties += 1.0"]),
            *total(["ties"]),
            "g = gy[o] / ties if ties > 0.0 else math.nan",
            *over([f"gx[{at}] = g * (1.0 if x[{at}] == m else 0.0)"]),
        ]
        params = "gy, x, y, gx"
    setup = [
        f"{', '.join(sizes)}{',' if rank == 1 else ''} = x.shape",
        f"count = {' * '.join(sizes[k] for k in dims) or '1'}",
    ]
    y = node.outputs[0] if kind != "max_backward" else node.inputs[2]
    if serial:
        src = kernel(params, [*setup, *grid_loop("y.size", per_output, "o")])
        blocks, threads = ctx.grid1d(ctx.numel(y))
    else:
        setup = ["sh = cuda.shared.array(RT, dtype=np.float64)", "t = cuda.threadIdx.x", *setup]
        body = [*setup, *block_loop("y.size", per_output, "o")]
        src = consts(RT=ctx.geometry.reduce_threads) + kernel(params, body)
        blocks, threads = ctx.grid_reduce(ctx.numel(y))
    way = "per thread" if serial else "per block"
    fn = ctx.kernel("elementwise", f"reduce {kind} {{dims={dims}, rank={rank}}} {way}", src)
    xs = ctx.view(x, ctx.shape(x))
    if kind == "max_backward":
        args = [ctx.flat(node.inputs[0]), xs, ctx.flat(y), ctx.view(node.outputs[0], ctx.shape(x))]
    else:
        args = [xs, ctx.flat(y)]
    ctx.launch(fn, blocks, threads, *args)


@lowering("reduce_sum", "reduce_mean", "reduce_max", "reduce_max_backward")
def _(ctx, node: Node) -> None:
    _reduce(ctx, node, node.op.removeprefix("reduce_"))


@lowering("reduce_sum_backward", "reduce_mean_backward")
def _(ctx, node: Node) -> None:
    gy, x = node.inputs
    dims = reduced_dims(x.type, node.attrs["dims"])
    keep = reduced_shape(x.shape, dims, True)
    count = 1.0
    if node.op == "reduce_mean_backward":
        for d in dims:
            count *= ctx.batch if x.shape[d] == BATCH else x.shape[d]
    values = [gy, node.outputs[0]]
    broadcast_map(ctx, node.op, "(v0 / p0)", [keep], x.shape, values, ["p0"], [float(count)])
