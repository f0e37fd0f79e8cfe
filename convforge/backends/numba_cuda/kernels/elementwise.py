"""Elementwise kernels (add, mul, scale, ones_like, zeros_like, cast) and ``reduce_sum``.

:func:`map_kernel` is the one-thread-per-element grid-stride template the other families
reuse (activations, dropout, optimizer updates). Rendered for ``add`` on f32::

    @cuda.jit(cache=True)
    def kernel(a, b, y):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = y.size
        while i < n:
            y[i] = (a[i] + b[i])
            i += stride

``reduce_sum`` runs one block per output element; the block's threads stride over the
reduced elements and meet in a shared-memory tree (float64 accumulation).
"""

from __future__ import annotations

from typing import Any

from convforge.backends import epilogue
from convforge.backends.numba_cuda.codegen import SCALAR, block_reduce, indent
from convforge.backends.numba_cuda.kernels import lowering
from convforge.ir.graph import Node

_MAP = """\
@cuda.jit(cache=True)
def kernel({params}):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = {size}.size
    while i < n:
{body}
        i += stride
"""


def map_kernel(
    ctx,
    family: str,
    pattern: str,
    params: list[str],
    body: list[str],
    size: str,
    args: list[Any],
    total: int,
    prelude: str = "",
) -> None:
    """Generate and launch ``for i in range(size.size): body`` (one thread per element)."""
    src = prelude + _MAP.format(params=", ".join(params), size=size, body=indent(body, 8))
    kernel = ctx.kernel(family, pattern, src)
    blocks, threads = ctx.grid1d(total)
    ctx.launch(kernel, blocks, threads, *args)


@lowering("add", "mul")
def _(ctx, node: Node) -> None:
    a, b = node.inputs
    y = node.outputs[0]
    map_kernel(
        ctx,
        "elementwise",
        node.op,
        ["a", "b", "y"],
        [f"y[i] = {epilogue.binary(node.op, 'a[i]', 'b[i]')}"],
        "y",
        [ctx.flat(a), ctx.flat(b), ctx.flat(y)],
        ctx.numel(y),
    )


@lowering("scale")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    expr = epilogue.unary("scale", "v", node.attrs)
    map_kernel(
        ctx,
        "elementwise",
        f"scale {{factor={node.attrs['factor']!r}}}",
        ["x", "y"],
        ["v = x[i]", f"y[i] = {expr}"],
        "y",
        [ctx.flat(x), ctx.flat(y)],
        ctx.numel(y),
    )


@lowering("ones_like", "zeros_like")
def _(ctx, node: Node) -> None:
    y = node.outputs[0]
    value = "1" if node.op == "ones_like" else "0"
    if y.dtype == "bool":
        value = "True" if value == "1" else "False"
    map_kernel(
        ctx,
        "elementwise",
        f"{node.op} ({y.dtype})",
        ["y"],
        [f"y[i] = {value}"],
        "y",
        [ctx.flat(y)],
        ctx.numel(y),
    )


@lowering("cast")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if y.dtype == "bool":
        expr = "x[i] != 0"
    else:
        expr = f"{SCALAR[y.dtype]}(x[i])"
    map_kernel(
        ctx,
        "elementwise",
        f"cast {x.dtype} -> {y.dtype}",
        ["x", "y"],
        [f"y[i] = {expr}"],
        "y",
        [ctx.flat(x), ctx.flat(y)],
        ctx.numel(y),
    )


# -- reduce_sum ----------------------------------------------------------------------------
_REDUCE = """\
RT = {rt}


@cuda.jit(cache=True)
def kernel(x, y):
    sh = cuda.shared.array(RT, dtype=np.float64)
    t = cuda.threadIdx.x
    {dims} = x.shape
    count = {count}
    o = cuda.blockIdx.x
    while o < y.size:
        rem = o
{kept}
        acc = 0.0
        k = t
        while k < count:
            r = k
{reduced}
            acc += x[{index}]
            k += RT
{reduce}
        if t == 0:
            y[o] = acc
        o += cuda.gridDim.x
"""


def _decode(names: list[str], sizes: list[str], var: str, depth: int) -> str:
    """Lines splitting the flat row-major index ``var`` into ``names`` (last varies fastest)."""
    lines = []
    for k in range(len(names) - 1, -1, -1):
        if k == 0:
            lines.append(f"{names[k]} = {var}")
        else:
            lines += [f"{names[k]} = {var} % {sizes[k]}", f"{var} //= {sizes[k]}"]
    return indent(lines, depth) if lines else " " * depth + "pass"


@lowering("reduce_sum")
def _(ctx, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    rank = max(x.type.rank, 1)
    dims = sorted({d % rank for d in node.attrs["dims"]}) if x.type.rank else []
    sizes = [f"d{k}" for k in range(rank)]
    kept = [k for k in range(rank) if k not in dims]
    src = _REDUCE.format(
        rt=ctx.geometry.reduce_threads,
        dims=", ".join(sizes) + ("," if rank == 1 else ""),
        count=" * ".join(sizes[k] for k in dims) or "1",
        kept=_decode([f"i{k}" for k in kept], [sizes[k] for k in kept], "rem", 8),
        reduced=_decode([f"i{k}" for k in dims], [sizes[k] for k in dims], "r", 12),
        index=", ".join(f"i{k}" for k in range(rank)),
        reduce=block_reduce(["acc"], ["sh"], 8),
    )
    kernel = ctx.kernel("elementwise", f"reduce_sum {{dims={list(dims)}, rank={rank}}}", src)
    blocks, threads = ctx.grid_reduce(ctx.numel(y))
    ctx.launch(kernel, blocks, threads, ctx.view(x, ctx.shape(x)), ctx.flat(y))
