"""Activations: relu, leaky_relu, sigmoid, tanh, softmax, log_softmax, and their backward ops.

Backward ops take the output gradient first, then what they need from the forward pass
(the output ``y`` where the derivative is a function of it, else the input ``x``).
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError
from convforge.ir.ops.common import expect_float, expect_same_shape
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType

E = FusionKind.ELEMENTWISE


def _same(x: TensorType, **_: object) -> TensorType:
    expect_float(x)
    return x


def _grad_like(gy: TensorType, other: TensorType, **_: object) -> TensorType:
    expect_float(gy, "gradient")
    expect_same_shape(gy, other, "gradient and saved tensor")
    return gy


# -- relu ---------------------------------------------------------------------------------
relu = Op("relu", fusion=E, doc="max(x, 0)")
relu.shape(_same)


@relu.reference
def _(x):
    return np.maximum(x, x.dtype.type(0))


@relu.vjp
def _(g, node, gy):
    return (g.call("relu_backward", gy, node.output),)


relu_backward = Op("relu_backward", fusion=E, doc="gy where y > 0 else 0")
relu_backward.shape(_grad_like)


@relu_backward.reference
def _(gy, y):
    return np.where(y > 0, gy, gy.dtype.type(0))


# -- leaky_relu ---------------------------------------------------------------------------
leaky_relu = Op("leaky_relu", fusion=E, attrs={"negative_slope": 0.01}, doc="x if x > 0 else slope * x")
leaky_relu.shape(_same)


@leaky_relu.check
def _(negative_slope):
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise AttributeValueError(f"negative_slope must be a number, got {negative_slope!r}")
    return {"negative_slope": float(negative_slope)}


@leaky_relu.reference
def _(x, negative_slope):
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


@leaky_relu.vjp
def _(g, node, gy):
    # with a slope >= 0 the output is positive exactly where the input is, so the backward
    # can read the output, as relu's does: the forward value need not be kept, and a
    # following max pool can be fused with its argmax (see passes/fuse.py)
    s = node.output if node.attrs["negative_slope"] >= 0 else node.inputs[0]
    return (g.call("leaky_relu_backward", gy, s, **node.attrs),)


leaky_relu_backward = Op(
    "leaky_relu_backward",
    fusion=E,
    attrs={"negative_slope": 0.01},
    doc="gy if s > 0 else slope * gy; s is leaky_relu's input, or its output when slope >= 0",
)
leaky_relu_backward.shape(_grad_like)


@leaky_relu_backward.reference
def _(gy, x, negative_slope):
    return np.where(x > 0, gy, gy * gy.dtype.type(negative_slope))


# -- sigmoid ------------------------------------------------------------------------------
sigmoid = Op("sigmoid", fusion=E, doc="1 / (1 + exp(-x))")
sigmoid.shape(_same)


@sigmoid.reference
def _(x):
    one = x.dtype.type(1)
    # split by sign so exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, one / (one + e), e / (one + e)).astype(x.dtype)


@sigmoid.vjp
def _(g, node, gy):
    return (g.call("sigmoid_backward", gy, node.output),)


sigmoid_backward = Op("sigmoid_backward", fusion=E, doc="gy * y * (1 - y)")
sigmoid_backward.shape(_grad_like)


@sigmoid_backward.reference
def _(gy, y):
    return gy * y * (y.dtype.type(1) - y)


# -- tanh ---------------------------------------------------------------------------------
tanh = Op("tanh", fusion=E)
tanh.shape(_same)


@tanh.reference
def _(x):
    return np.tanh(x)


@tanh.vjp
def _(g, node, gy):
    return (g.call("tanh_backward", gy, node.output),)


tanh_backward = Op("tanh_backward", fusion=E, doc="gy * (1 - y^2)")
tanh_backward.shape(_grad_like)


@tanh_backward.reference
def _(gy, y):
    return gy * (y.dtype.type(1) - y * y)


# -- softmax / log_softmax ----------------------------------------------------------------
def _check_dim(dim):
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise AttributeValueError(f"dim must be an int, got {dim!r}")


def _softmax_shape(x: TensorType, dim: int) -> TensorType:
    expect_float(x)
    if not -x.rank <= dim < max(x.rank, 1):
        raise AttributeValueError(f"dim {dim} is out of range for input {x} of rank {x.rank}")
    return x


softmax = Op("softmax", fusion=FusionKind.REDUCE, attrs={"dim": 1})
softmax.check(_check_dim)
softmax.shape(_softmax_shape)


@softmax.reference
def _(x, dim):
    z = x - x.max(axis=dim, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=dim, keepdims=True)


@softmax.vjp
def _(g, node, gy):
    return (g.call("softmax_backward", gy, node.output, **node.attrs),)


softmax_backward = Op(
    "softmax_backward", fusion=FusionKind.REDUCE, attrs={"dim": 1}, doc="y * (gy - sum(gy * y, dim))"
)
softmax_backward.shape(lambda gy, y, dim: _grad_like(gy, y))


@softmax_backward.reference
def _(gy, y, dim):
    return y * (gy - (gy * y).sum(axis=dim, keepdims=True))


log_softmax = Op("log_softmax", fusion=FusionKind.REDUCE, attrs={"dim": 1})
log_softmax.check(_check_dim)
log_softmax.shape(_softmax_shape)


@log_softmax.reference
def _(x, dim):
    z = x - x.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


@log_softmax.vjp
def _(g, node, gy):
    return (g.call("log_softmax_backward", gy, node.output, **node.attrs),)


log_softmax_backward = Op(
    "log_softmax_backward", fusion=FusionKind.REDUCE, attrs={"dim": 1}, doc="gy - exp(y) * sum(gy, dim)"
)
log_softmax_backward.shape(lambda gy, y, dim: _grad_like(gy, y))


@log_softmax_backward.reference
def _(gy, y, dim):
    return gy - np.exp(y) * gy.sum(axis=dim, keepdims=True)
