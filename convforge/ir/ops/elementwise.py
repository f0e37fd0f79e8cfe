"""Elementwise and reduction helpers: add, mul, scale, reduce_sum, ones_like, zeros_like, cast.

``add`` is how autodiff sums the gradients of a value used twice, and how a residual
block is written (``x + f(x)``).
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError
from convforge.ir.ops.common import expect_float, expect_same_dtype, expect_same_shape
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import DTYPES, TensorType

E = FusionKind.ELEMENTWISE


def _binary(a: TensorType, b: TensorType) -> TensorType:
    expect_same_dtype(a, b)
    expect_same_shape(a, b, "operands")
    return a


# -- add / mul ----------------------------------------------------------------------------
add = Op("add", fusion=E, doc="a + b (same shape)")
add.shape(_binary)


@add.reference
def _(a, b):
    return a + b


@add.vjp
def _(g, node, gy):
    return (gy, gy)


mul = Op("mul", fusion=E, doc="a * b (same shape)")
mul.shape(_binary)


@mul.reference
def _(a, b):
    return a * b


@mul.vjp
def _(g, node, gy):
    a, b = node.inputs
    return (g.call("mul", gy, b), g.call("mul", gy, a))


# -- scale --------------------------------------------------------------------------------
scale = Op("scale", fusion=E, attrs={"factor": 1.0}, doc="factor * x")


@scale.check
def _(factor):
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise AttributeValueError(f"factor must be a number, got {factor!r}")
    return {"factor": float(factor)}


@scale.shape
def _(x, factor):
    expect_float(x)
    return x


@scale.reference
def _(x, factor):
    return x * x.dtype.type(factor)


@scale.vjp
def _(g, node, gy):
    return (g.call("scale", gy, **node.attrs),)


# -- reduce_sum ---------------------------------------------------------------------------
reduce_sum = Op(
    "reduce_sum",
    fusion=FusionKind.REDUCE,
    attrs={"dims": (), "keepdim": False},
    doc="sum over dims (a bias gradient is reduce_sum(gy, dims=(0, 2, 3)))",
)


@reduce_sum.check
def _(dims, keepdim):
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise AttributeValueError(f"dims must be a tuple of ints, got {dims!r}")
    return {"dims": dims, "keepdim": bool(keepdim)}


def _reduced_dims(x: TensorType, dims: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for d in dims:
        if not -x.rank <= d < x.rank:
            raise AttributeValueError(f"dim {d} is out of range for {x} of rank {x.rank}")
        out.append(d % x.rank)
    if len(set(out)) != len(out):
        raise AttributeValueError(f"dims {dims} repeat a dimension")
    return tuple(sorted(out))


@reduce_sum.shape
def _(x, dims, keepdim):
    expect_float(x)
    reduced = _reduced_dims(x, dims)
    if keepdim:
        return x.with_shape(tuple(1 if i in reduced else d for i, d in enumerate(x.shape)))
    return x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in reduced))


@reduce_sum.reference
def _(x, dims, keepdim):
    return np.asarray(x.sum(axis=tuple(dims), keepdims=keepdim), dtype=x.dtype)


# -- constants ----------------------------------------------------------------------------
ones_like = Op("ones_like", fusion=E, doc="a tensor of ones shaped like x (seeds autodiff)")
ones_like.shape(lambda x: x)


@ones_like.reference
def _(x):
    return np.ones_like(x)


zeros_like = Op("zeros_like", fusion=E, doc="a tensor of zeros shaped like x")
zeros_like.shape(lambda x: x)


@zeros_like.reference
def _(x):
    return np.zeros_like(x)


# -- cast ---------------------------------------------------------------------------------
cast = Op("cast", fusion=E, attrs={"dtype": "f32"}, doc="x converted to dtype")


@cast.check
def _(dtype):
    if dtype not in DTYPES:
        raise AttributeValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@cast.shape
def _(x, dtype):
    return x.with_dtype(dtype)


@cast.reference
def _(x, dtype):
    return x.astype(DTYPES[dtype])


@cast.vjp
def _(g, node, gy):
    return (g.call("cast", gy, dtype=node.inputs[0].dtype),)
