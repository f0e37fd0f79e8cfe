"""Activation kernels: elementwise ones generated from the shared epilogue table, softmax static.

An elementwise kernel is generated per op (not per attribute value): attributes such as
``negative_slope`` are runtime arguments, so a new slope compiles nothing.
"""

from __future__ import annotations

import math
import string

import numpy as np
from numba import njit, prange

from convforge.backends import epilogue
from convforge.backends.numba_cpu.kernels import lowering

_HEADER = "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n\n"


def fields(template: str) -> list[str]:
    """The attribute placeholders of an epilogue expression (everything but x, g, s, a, b)."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return sorted({n for n in names if n not in ("x", "g", "s", "a", "b")})


def unary_source(op: str) -> tuple[str, list[str]]:
    params = fields(epilogue.UNARY[op])
    expr = epilogue.UNARY[op].format(x="v", **{p: f"p_{p}" for p in params})
    args = "".join(f", p_{p}" for p in params)
    src = _HEADER + (
        "@njit(cache=True, parallel=True)\n"
        f"def kernel(x, y{args}):\n"
        "    for i in prange(x.shape[0]):\n"
        "        v = x[i]\n"
        f"        y[i] = {expr}\n"
    )
    return src, params


def backward_source(op: str) -> tuple[str, list[str]]:
    params = fields(epilogue.BACKWARD[op])
    expr = epilogue.BACKWARD[op].format(g="g", s="s", **{p: f"p_{p}" for p in params})
    args = "".join(f", p_{p}" for p in params)
    src = _HEADER + (
        "@njit(cache=True, parallel=True)\n"
        f"def kernel(gy, sv, gx{args}):\n"
        "    for i in prange(gy.shape[0]):\n"
        "        g = gy[i]\n"
        "        s = sv[i]\n"
        f"        gx[i] = {expr}\n"
    )
    return src, params


def _attr_args(node, params: list[str]) -> str:
    return "".join(f", {float(node.attrs[p])!r}" for p in params)


def emit_unary(ctx, node, op: str, x: str, y: str) -> None:
    src, params = unary_source(op)
    k = ctx.generated(("unary", op), src, op)
    ctx.line(f"{k}({x}.reshape(-1), {y}.reshape(-1){_attr_args(node, params)})")


@lowering(*(op for op in epilogue.UNARY))
def _(ctx, node, ins, outs):
    emit_unary(ctx, node, node.op, ins[0], outs[0])


@lowering(*(op for op in epilogue.BACKWARD))
def _(ctx, node, ins, outs):
    src, params = backward_source(node.op)
    k = ctx.generated(("backward", node.op), src, node.op)
    ctx.line(
        f"{k}({ins[0]}.reshape(-1), {ins[1]}.reshape(-1), {outs[0]}.reshape(-1){_attr_args(node, params)})"
    )


# -- softmax family: x seen as [outer, D, inner], reduced over D ----------------------------
@njit(cache=True, parallel=True)
def softmax(x, log, y):
    A, D, B = x.shape
    for ab in prange(A * B):
        a = ab // B
        b = ab % B
        m = -np.inf
        for d in range(D):
            m = max(m, x[a, d, b])
        s = 0.0
        for d in range(D):
            s += math.exp(x[a, d, b] - m)
        if log:
            ls = math.log(s)
            for d in range(D):
                y[a, d, b] = x[a, d, b] - m - ls
        else:
            for d in range(D):
                y[a, d, b] = math.exp(x[a, d, b] - m) / s


@njit(cache=True, parallel=True)
def softmax_backward(gy, y, log, gx):
    A, D, B = y.shape
    for ab in prange(A * B):
        a = ab // B
        b = ab % B
        s = 0.0
        if log:
            for d in range(D):
                s += gy[a, d, b]
            for d in range(D):
                gx[a, d, b] = gy[a, d, b] - math.exp(y[a, d, b]) * s
        else:
            for d in range(D):
                s += gy[a, d, b] * y[a, d, b]
            for d in range(D):
                gx[a, d, b] = y[a, d, b] * (gy[a, d, b] - s)


def as3(ctx, value, dim: int, expr: str) -> str:
    """``expr`` reshaped to ``[outer, D, inner]`` around axis ``dim``."""
    shape = value.shape
    rank = len(shape)
    if rank == 0:
        return f"{expr}.reshape(1, 1, 1)"
    dim %= rank
    outer = " * ".join(str(ctx.dim(d)) for d in shape[:dim]) or "1"
    inner = " * ".join(str(ctx.dim(d)) for d in shape[dim + 1 :]) or "1"
    return f"{expr}.reshape({outer}, {ctx.dim(shape[dim])}, {inner})"


@lowering("softmax", "log_softmax")
def _(ctx, node, ins, outs):
    k = ctx.static(softmax, "softmax")
    x, dim = node.inputs[0], node.attrs["dim"]
    ctx.line(f"{k}({as3(ctx, x, dim, ins[0])}, {node.op == 'log_softmax'}, {as3(ctx, x, dim, outs[0])})")


@lowering("softmax_backward", "log_softmax_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(softmax_backward, "softmax_backward")
    y, dim = node.inputs[1], node.attrs["dim"]
    log = node.op == "log_softmax_backward"
    ctx.line(
        f"{k}({as3(ctx, y, dim, ins[0])}, {as3(ctx, y, dim, ins[1])}, {log}, {as3(ctx, y, dim, outs[0])})"
    )
