"""Dense ops: ``linear`` (``x @ w.T + b``, PyTorch's layout) and 2-D ``matmul``.

``matmul`` exists for the gradients: ``linear``'s VJP is two matmuls and a ``reduce_sum``.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, expect_rank, expect_same_dtype
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType

# -- linear -------------------------------------------------------------------------------
linear = Op("linear", fusion=FusionKind.OUT_FUSABLE, doc="x[N,in] @ w[out,in].T (+ b[out])")


@linear.shape
def _(x: TensorType, w: TensorType, b: TensorType | None = None) -> TensorType:
    expect_rank(x, 2, "input")
    expect_rank(w, 2, "weight")
    expect_float(x, "input")
    dtype = expect_same_dtype(*(t for t in (x, w, b) if t is not None))
    out_features, in_features = w.shape
    if x.shape[1] != in_features:
        raise ShapeError(f"expected input with {in_features} features (weight {w}), got {x}")
    if b is not None and b.shape != (out_features,):
        raise ShapeError(f"expected bias of shape [{out_features}] (weight {w}), got {b}")
    return TensorType(dtype, (x.shape[0], out_features))


@linear.reference
def _(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


@linear.vjp
def _(g, node, gy):
    x, w = node.inputs[0], node.inputs[1]
    gx = g.call("matmul", gy, w)
    gw = g.call("matmul", gy, x, transpose_a=True)
    if len(node.inputs) == 2:
        return gx, gw
    return gx, gw, g.call("reduce_sum", gy, dims=(0,))


# -- matmul -------------------------------------------------------------------------------
matmul = Op(
    "matmul",
    attrs={"transpose_a": False, "transpose_b": False},
    doc="op(a) @ op(b) for 2-D operands, op = transpose when the flag is set",
)


@matmul.check
def _(transpose_a, transpose_b):
    for name, flag in (("transpose_a", transpose_a), ("transpose_b", transpose_b)):
        if not isinstance(flag, (bool, np.bool_)):
            raise AttributeValueError(f"{name} must be a bool, got {flag!r}")
    return {"transpose_a": bool(transpose_a), "transpose_b": bool(transpose_b)}


@matmul.shape
def _(a: TensorType, b: TensorType, *, transpose_a: bool, transpose_b: bool) -> TensorType:
    expect_rank(a, 2, "a")
    expect_rank(b, 2, "b")
    expect_float(a, "a")
    dtype = expect_same_dtype(a, b)
    m, k = a.shape[::-1] if transpose_a else a.shape
    k2, n = b.shape[::-1] if transpose_b else b.shape
    if k != k2:
        ta = ".T" if transpose_a else ""
        tb = ".T" if transpose_b else ""
        raise ShapeError(
            f"expected inner dimensions to agree in a{ta} @ b{tb}, got a{ta} with {k} columns "
            f"({a}) and b{tb} with {k2} rows ({b})"
        )
    return TensorType(dtype, (m, n))


@matmul.reference
def _(a, b, *, transpose_a, transpose_b):
    return (a.T if transpose_a else a) @ (b.T if transpose_b else b)


@matmul.vjp
def _(g, node, gy):
    # C = op(A) @ op(B): d op(A) = gy @ op(B).T and d op(B) = op(A).T @ gy, transposed back
    # where the operand was stored transposed.
    a, b = node.inputs
    ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
    if ta:
        ga = g.call("matmul", b, gy, transpose_a=tb, transpose_b=True)
    else:
        ga = g.call("matmul", gy, b, transpose_b=not tb)
    if tb:
        gb = g.call("matmul", gy, a, transpose_a=True, transpose_b=ta)
    else:
        gb = g.call("matmul", a, gy, transpose_a=not ta)
    return ga, gb
