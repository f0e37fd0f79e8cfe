"""Activation kernels: elementwise ones generated from each op's scalar expression
(``Op.scalar``), softmax static, and ``act_grad``, the derivative of every monotone
activation, generated from their backward ops for the fused max-pool backward kernels.

An elementwise kernel is generated per op (not per attribute value): attributes such as
``negative_slope`` are runtime arguments, so a new slope compiles nothing.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.codegen import load_generated
from convforge.backends.numba_cpu.kernels import lowering
from convforge.errors import BackendError
from convforge.ir import scalar
from convforge.ir.graph import Node

_HEADER = "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n\n"


def unary_source(op: str) -> tuple[str, list[str]]:
    params = scalar.fields(op)
    expr = scalar.expression(op, x="v", **{p: f"p_{p}" for p in params})
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
    params = scalar.fields(op)
    expr = scalar.expression(op, g="g", s="s", **{p: f"p_{p}" for p in params})
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
    dtype = node.outputs[0].type.np_dtype  # rounded as the reference rounds them
    return "".join(f", {scalar.literal(scalar.in_dtype(node.attrs[p], dtype))}" for p in params)


def emit_unary(ctx, node, op: str, x: str, y: str) -> None:
    src, params = unary_source(op)
    k = ctx.generated(("unary", op), src, op)
    ctx.line(f"{k}({x}.reshape(-1), {y}.reshape(-1){_attr_args(node, params)})")


@lowering(*scalar.ops("unary", family="activation"))
def _(ctx, node, ins, outs):
    emit_unary(ctx, node, node.op, ins[0], outs[0])


def emit_backward(ctx, node, ins, outs) -> None:
    """The backward op of a pointwise op, ``(x or y, gy) -> gx``, from its declared derivative."""
    src, params = backward_source(node.op)
    k = ctx.generated(("backward", node.op), src, node.op)
    ctx.line(
        f"{k}({ins[0]}.reshape(-1), {ins[1]}.reshape(-1), {outs[0]}.reshape(-1){_attr_args(node, params)})"
    )


@lowering(*scalar.ops("backward", family="activation"))
def _(ctx, node, ins, outs):
    emit_backward(ctx, node, ins, outs)


# -- the derivative of a monotone activation, for the fused max-pool backward --------------
#: ``act_grad``'s code for "no activation": the gradient passes through
ACT_NONE = len(scalar.monotone_backward_ops())
#: the names ``act_grad`` passes an activation's attributes under
_PARAMS = ("p", "q")


def act_grad_source() -> str:
    """``act_grad(kind, p, q, g, s)``: ``g`` times the derivative of monotone activation number
    ``kind`` (:func:`act_args`), read off its output ``s``; ``p``, ``q`` are its attributes
    (``hardtanh``'s min_val and max_val), in the order of ``scalar.fields``. And
    ``act_grad_row(kind, p, q, g, s, out)``: the same over 1-D arrays into ``out``."""
    lines = ["@njit(cache=True)", "def act_grad(kind, p, q, g, s):"]
    for kind, op in enumerate(scalar.monotone_backward_ops()):
        fields = scalar.fields(op)
        if len(fields) > len(_PARAMS):
            raise BackendError(
                f"numba-cpu: act_grad passes {len(_PARAMS)} attributes, {op} has {', '.join(fields)}"
            )
        expr = scalar.expression(op, g="g", s="s", **dict(zip(fields, _PARAMS)))
        lines += [f"    if kind == {kind}:  # {op}", f"        return {expr}"]
    lines.append("    return g")
    # the same per row: the kind is tested once, and each branch's loop vectorises
    lines += ["", "", "@njit(cache=True)", "def act_grad_row(kind, p, q, g, s, out):", "    n = out.shape[0]"]
    for kind, op in enumerate(scalar.monotone_backward_ops()):
        fields = scalar.fields(op)
        expr = scalar.expression(op, g="g[i]", s="s[i]", **dict(zip(fields, _PARAMS)))
        lines += [f"    if kind == {kind}:  # {op}", "        for i in range(n):"]
        lines += [f"            out[i] = {expr}", "        return"]
    lines += ["    for i in range(n):", "        out[i] = g[i]"]
    return _HEADER + "\n".join(lines) + "\n"


def act_args(node: Node | None) -> tuple[int, float, float]:
    """``(kind, p, q)`` of an activation backward node for :func:`act_grad` (None: no activation)."""
    if node is None:
        return ACT_NONE, 0.0, 0.0
    dtype = node.outputs[0].type.np_dtype
    values = [scalar.in_dtype(float(node.attrs[f]), dtype) for f in scalar.fields(node.op)]
    p, q = (values + [0.0, 0.0])[:2]
    return scalar.monotone_backward_ops().index(node.op), p, q


def act_text(node: Node | None) -> str:
    """:func:`act_args` as driver source (non-finite attributes included: ``math.inf``)."""
    kind, p, q = act_args(node)
    return f"({kind}, {scalar.literal(p)}, {scalar.literal(q)})"


_act_grad_module = load_generated(act_grad_source(), "act_grad")
act_grad = _act_grad_module.act_grad
act_grad_row = _act_grad_module.act_grad_row


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
