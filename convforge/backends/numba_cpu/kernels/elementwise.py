"""Elementwise kernels and reductions.

* Unary ops (``scale``, ``add_scalar``, ``neg``, ``reciprocal``) and ``reciprocal_backward``
  come from their scalar expressions, as the activations' do.
* Binary ops (``add``, ``sub``, ``mul``, ``div``) on operands of the output's shape run one
  flat loop; with broadcasting, and ``add_n``, they run :func:`map_source`'s loop nest over
  the merged iteration space (``ir.ops.elementwise.broadcast_groups``) with each operand a
  zero-stride ``np.broadcast_to`` view, so nothing is copied. The same loop nest (one
  operand, any strides) copies transposes and strided slices (``kernels/shape.py``).
* Reductions (``reduce_sum``, ``reduce_mean``, ``reduce_max`` and their backward ops) run
  :func:`reduce_source`'s kernel, generated per pattern of merged kept / reduced dims: one
  parallel iteration per output element, serial loops over what it reduces.

Kernels specialise on the expression, the rank and the pattern, never on sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.activation import emit_backward, emit_unary
from convforge.ir import scalar
from convforge.ir.ops.elementwise import broadcast_groups, reduce_groups, reduced_dims, reduced_shape

_HEADER = "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n\n"


def binary_source(op: str) -> str:
    return _HEADER + (
        "@njit(cache=True, parallel=True)\n"
        "def kernel(x, z, y):\n"
        "    for i in prange(x.shape[0]):\n"
        f"        y[i] = {scalar.expression(op, a='x[i]', b='z[i]')}\n"
    )


def map_source(expr: str, operands: int, rank: int, params: Sequence[str] = ()) -> str:
    """``kernel(a0, .., y, *params)``: ``y[i] = expr`` over every index ``i`` of the
    ``rank``-d ``y``, ``expr`` reading ``v0, v1, ..`` (``a0[i], a1[i], ..``) and ``params``.
    The arrays may have any strides (broadcast, transposed or sliced views). The threads
    share the first two dims (a batch of one still runs in parallel). Rendered for
    ``"(v0 + v1)"``, 2 operands, rank 3::

        @njit(cache=True, parallel=True)
        def kernel(a0, a1, y):
            s1 = y.shape[1]
            for ij in prange(y.shape[0] * s1):
                i0 = ij // s1
                i1 = ij % s1
                for i2 in range(y.shape[2]):
                    v0 = a0[i0, i1, i2]
                    v1 = a1[i0, i1, i2]
                    y[i0, i1, i2] = (v0 + v1)
    """
    names = [f"a{k}" for k in range(operands)]
    index = ", ".join(f"i{k}" for k in range(rank))
    lines = ["@njit(cache=True, parallel=True)", f"def kernel({', '.join([*names, 'y', *params])}):"]
    if rank == 1:
        lines.append("    for i0 in prange(y.shape[0]):")
    else:
        lines += [
            "    s1 = y.shape[1]",
            "    for ij in prange(y.shape[0] * s1):",
            "        i0 = ij // s1",
            "        i1 = ij % s1",
        ]
    for k in range(2, rank):
        lines.append("    " * k + f"for i{k} in range(y.shape[{k}]):")
    pad = "    " * max(rank, 2)
    lines += [f"{pad}v{k} = a{k}[{index}]" for k in range(operands)]
    lines.append(f"{pad}y[{index}] = {expr}")
    return _HEADER + "\n".join(lines) + "\n"


def emit_map(ctx, expr: str, views: Sequence[str], out: str, rank: int, params: Sequence[str] = ()) -> None:
    """Call the :func:`map_source` kernel of ``expr`` on driver expressions ``views`` -> ``out``
    (all of one ``rank``-d shape); ``params`` are driver expressions for its parameters."""
    names = [f"p{k}" for k in range(len(params))]
    source = map_source(expr, len(views), rank, names)
    k = ctx.generated(("map", expr, len(views), rank, len(params)), source, f"map {expr} (rank {rank})")
    ctx.line(f"{k}({', '.join([*views, out, *params])})")


def _prod(ctx, dims) -> str:
    return " * ".join(str(ctx.dim(d)) for d in dims) or "1"


def _shape_text(ctx, dims: Sequence[str]) -> str:
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def emit_broadcast(ctx, expr: str, shapes, ins: Sequence[str], out_shape, out: str, params=()) -> None:
    """``out = expr(ins...)`` with NumPy broadcasting of operands of IR ``shapes`` to
    ``out_shape``, over the merged iteration space."""
    groups = broadcast_groups(out_shape, shapes)
    full = _shape_text(ctx, [_prod(ctx, dims) for dims, _ in groups])
    views = []
    for j, name in enumerate(ins):
        own = _shape_text(ctx, ["1" if status[j] else _prod(ctx, dims) for dims, status in groups])
        views.append(f"np.broadcast_to({name}.reshape({own}), {full})")
    emit_map(ctx, expr, views, f"{out}.reshape({full})", len(groups), params)


@lowering(*scalar.ops("unary", family="elementwise"))
def _(ctx, node, ins, outs):
    emit_unary(ctx, node, node.op, ins[0], outs[0])


@lowering(*scalar.ops("backward", family="elementwise"))
def _(ctx, node, ins, outs):
    emit_backward(ctx, node, ins, outs)


@lowering(*scalar.ops("binary", family="elementwise"))
def _(ctx, node, ins, outs):
    y = node.outputs[0]
    if all(v.shape == y.shape for v in node.inputs):
        k = ctx.generated(("binary", node.op), binary_source(node.op), node.op)
        ctx.line(f"{k}({ins[0]}.reshape(-1), {ins[1]}.reshape(-1), {outs[0]}.reshape(-1))")
        return
    expr = scalar.expression(node.op, a="v0", b="v1")
    emit_broadcast(ctx, expr, [v.shape for v in node.inputs], ins, y.shape, outs[0])


@lowering("add_n")
def _(ctx, node, ins, outs):
    expr = "(" + " + ".join(f"v{k}" for k in range(len(ins))) + ")"
    emit_broadcast(ctx, expr, [v.shape for v in node.inputs], ins, node.outputs[0].shape, outs[0])


# -- reductions ----------------------------------------------------------------------------
def reduce_source(kind: str, pattern: str) -> str:
    """The kernel of a reduction whose input, dims merged (:func:`reduce_groups`), is one dim
    per letter of ``pattern`` (``k`` kept, ``r`` reduced). ``kind``:

    * ``sum``: ``kernel(x, y, divisor)``, ``y[o] = sum / divisor`` (1 for a sum, the count
      for a mean), float64 accumulation;
    * ``max``: ``kernel(x, y)``, the maximum (a NaN wins, as in torch.amax);
    * ``max_backward``: ``kernel(gy, x, y, gx)``, ``gx = gy / count * (x == y)`` per output.

    ``y`` / ``gy`` are flat over the kept dims. Rendered for ``sum``, ``"rkr"`` (a bias
    gradient)::

        @njit(cache=True, parallel=True, fastmath={"reassoc"})
        def kernel(x, y, divisor):
            d0, d1, d2 = x.shape
            for o in prange(y.size):
                i1 = o
                acc = 0.0
                for i0 in range(d0):
                    for i2 in range(d2):
                        acc += x[i0, i1, i2]
                y[o] = acc / divisor
    """
    rank = len(pattern)
    sizes = [f"d{k}" for k in range(rank)]
    kept = [k for k, c in enumerate(pattern) if c == "k"]
    reduced = [k for k, c in enumerate(pattern) if c == "r"]
    index = ", ".join(f"i{k}" for k in range(rank))
    first = ", ".join("0" if c == "r" else f"i{k}" for k, c in enumerate(pattern))
    # the kept coordinates of output o (no reassigned temporary: parfors forbid aliasing o)
    decode = []
    for n, k in enumerate(kept):
        inner = " * ".join(f"d{j}" for j in kept[n + 1 :])
        q = f"(o // ({inner}))" if inner else "o"
        decode.append(f"i{k} = {q} % d{k}" if n else f"i{k} = {q}")

    def over_reduced(body: list[str]) -> list[str]:
        lines = []
        for depth, k in enumerate(reduced):
            lines.append("    " * depth + f"for i{k} in range(d{k}):")
        return lines + ["    " * len(reduced) + line for line in body]

    if kind == "sum":
        head = ['@njit(cache=True, parallel=True, fastmath={"reassoc"})', "def kernel(x, y, divisor):"]
        body = ["acc = 0.0", *over_reduced([f"acc += x[{index}]"]), "y[o] = acc / divisor"]
    elif kind == "max":
        head = ["@njit(cache=True, parallel=True)", "def kernel(x, y):"]
        body = [
            f"acc = x[{first}]",
            *over_reduced([f"v = x[{index}]", "if v > acc or v != v:", "    acc = v"]),
            "y[o] = acc",
        ]
    elif kind == "max_backward":
        head = ["@njit(cache=True, parallel=True)", "def kernel(gy, x, y, gx):"]
        body = [
            "m = y[o]",
            "count = 0",
            *over_reduced([f"if x[{index}] == m:", "    count += 1"]),
            "g = gy[o] / count if count > 0 else math.nan",
            *over_reduced([f"gx[{index}] = g * (1.0 if x[{index}] == m else 0.0)"]),
        ]
    else:
        raise ValueError(f"unknown reduction kind {kind!r}")
    lines = [
        *head,
        f"    {', '.join(sizes)}{',' if rank == 1 else ''} = x.shape",
        "    for o in prange(y.size):",
        *("        " + line for line in [*decode, *body]),
    ]
    return _HEADER + "\n".join(lines) + "\n"


def _reduce_layout(ctx, node) -> tuple[str, str, str]:
    """A reduction node's ``(pattern, the input's merged shape, the reduced count)``, as driver text."""
    x = node.inputs[0] if node.op in ("reduce_sum", "reduce_mean", "reduce_max") else node.inputs[1]
    dims = reduced_dims(x.type, node.attrs["dims"])
    groups = reduce_groups(x.shape, dims) or [(False, [1])]
    pattern = "".join("r" if red else "k" for red, _ in groups)
    shape = _shape_text(ctx, [_prod(ctx, ds) for _, ds in groups])
    count = _prod(ctx, [x.shape[d] for d in dims])
    return pattern, shape, count


@lowering("reduce_sum", "reduce_mean", "reduce_max")
def _(ctx, node, ins, outs):
    pattern, shape, count = _reduce_layout(ctx, node)
    kind = "max" if node.op == "reduce_max" else "sum"
    k = ctx.generated(("reduce", kind, pattern), reduce_source(kind, pattern), f"{kind} over {pattern}")
    args = f"{ins[0]}.reshape({shape}), {outs[0]}.reshape(-1)"
    if kind == "sum":
        args += ", 1.0" if node.op == "reduce_sum" else f", float({count})"
    ctx.line(f"{k}({args})")


@lowering("reduce_max_backward")
def _(ctx, node, ins, outs):
    pattern, shape, _ = _reduce_layout(ctx, node)
    src = reduce_source("max_backward", pattern)
    k = ctx.generated(("reduce", "max_backward", pattern), src, f"max_backward over {pattern}")
    gy, x, y = ins
    ctx.line(f"{k}({gy}.reshape(-1), {x}.reshape({shape}), {y}.reshape(-1), {outs[0]}.reshape({shape}))")


@lowering("reduce_sum_backward", "reduce_mean_backward")
def _(ctx, node, ins, outs):
    x = node.inputs[1]
    dims = reduced_dims(x.type, node.attrs["dims"])
    keep = reduced_shape(x.shape, dims, True)
    count = "1.0" if node.op == "reduce_sum_backward" else f"float({_prod(ctx, [x.shape[d] for d in dims])})"
    gy = f"{ins[0]}.reshape({_shape_text(ctx, [str(ctx.dim(d)) for d in keep]) if keep else '()'})"
    emit_broadcast(ctx, "(v0 / p0)", [keep], [gy], x.shape, outs[0], [count])


# -- constants and cast --------------------------------------------------------------------
@lowering("ones_like")
def _(ctx, node, ins, outs):
    ctx.line(f"{outs[0]}.fill(1)")


@lowering("zeros_like")
def _(ctx, node, ins, outs):
    ctx.line(f"{outs[0]}.fill(0)")


@lowering("cast")
def _(ctx, node, ins, outs):
    ctx.line(f"np.copyto({outs[0]}, {ins[0]}, casting='unsafe')")
