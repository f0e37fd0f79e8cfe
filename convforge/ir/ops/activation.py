"""Activations: relu, relu6, leaky_relu, sigmoid, tanh, elu, hardtanh, hardsigmoid, softplus,
gelu, gelu_tanh, silu, hardswish, mish, softmax, log_softmax, and their backward ops.

Backward ops take the output gradient first, then what they need from the forward pass
(the output ``y`` where the derivative is a function of it, else the input ``x``). The
monotone activations read their output, so a following max pool can keep one argmax byte
per window in training instead of the activation (``passes/fuse.py``); the others (gelu,
silu, hardswish, mish) read their input. Semantics and defaults are PyTorch's; every
expression is written so that no ``exp`` overflows (Numba's CUDA simulator runs them in
Python, where an overflow raises).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special

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
relu = Op(
    "relu", fusion=E, doc="max(x, 0)",
    scalar="max({x}, 0.0)", backward="relu_backward", monotone=True,
)  # fmt: skip
relu.shape(_same)


@relu.reference
def _(x):
    return np.maximum(x, x.dtype.type(0))


relu_backward = Op(
    "relu_backward", fusion=E, doc="gy where y > 0 else 0", scalar="({g} if {s} > 0.0 else 0.0)"
)
relu_backward.shape(_grad_like)


@relu_backward.reference
def _(gy, y):
    return np.where(y > 0, gy, gy.dtype.type(0))


# -- relu6 --------------------------------------------------------------------------------
relu6 = Op(
    "relu6", fusion=E, doc="min(max(x, 0), 6)",
    scalar="min(max({x}, 0.0), 6.0)", backward="relu6_backward", monotone=True,
)  # fmt: skip
relu6.shape(_same)


@relu6.reference
def _(x):
    return np.clip(x, x.dtype.type(0), x.dtype.type(6))


relu6_backward = Op(
    "relu6_backward", fusion=E, doc="gy where 0 < y < 6 else 0 (as PyTorch's hardtanh_backward)",
    scalar="({g} if 0.0 < {s} < 6.0 else 0.0)",
)  # fmt: skip
relu6_backward.shape(_grad_like)


@relu6_backward.reference
def _(gy, y):
    return np.where((y > 0) & (y < 6), gy, gy.dtype.type(0))


# -- leaky_relu ---------------------------------------------------------------------------
leaky_relu = Op(
    "leaky_relu", fusion=E, attrs={"negative_slope": 0.01}, doc="x if x > 0 else slope * x",
    scalar="({x} if {x} > 0.0 else {x} * {negative_slope})", backward="leaky_relu_backward",
    # monotone for slope >= 0, exactly when the VJP below saves the output: the argmax
    # rewrite (passes/fuse.py) checks that the backward reads the output
    monotone=True,
)  # fmt: skip
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
    scalar="({g} if {s} > 0.0 else {g} * {negative_slope})",
)
leaky_relu_backward.shape(_grad_like)


@leaky_relu_backward.reference
def _(gy, x, negative_slope):
    return np.where(x > 0, gy, gy * gy.dtype.type(negative_slope))


# -- sigmoid ------------------------------------------------------------------------------
sigmoid = Op(
    "sigmoid", fusion=E, doc="1 / (1 + exp(-x))", backward="sigmoid_backward", monotone=True,
    # split by sign so exp never overflows
    scalar="(1.0 / (1.0 + math.exp(-{x})) if {x} >= 0.0 else math.exp({x}) / (1.0 + math.exp({x})))",
)  # fmt: skip
sigmoid.shape(_same)


@sigmoid.reference
def _(x):
    one = x.dtype.type(1)
    # split by sign so exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, one / (one + e), e / (one + e)).astype(x.dtype)


sigmoid_backward = Op(
    "sigmoid_backward", fusion=E, doc="gy * y * (1 - y)", scalar="({g} * {s} * (1.0 - {s}))"
)
sigmoid_backward.shape(_grad_like)


@sigmoid_backward.reference
def _(gy, y):
    return gy * y * (y.dtype.type(1) - y)


# -- tanh ---------------------------------------------------------------------------------
tanh = Op("tanh", fusion=E, scalar="math.tanh({x})", backward="tanh_backward", monotone=True)
tanh.shape(_same)


@tanh.reference
def _(x):
    return np.tanh(x)


tanh_backward = Op("tanh_backward", fusion=E, doc="gy * (1 - y^2)", scalar="({g} * (1.0 - {s} * {s}))")
tanh_backward.shape(_grad_like)


@tanh_backward.reference
def _(gy, y):
    return gy * (y.dtype.type(1) - y * y)


# -- shared checks and sub-expressions -------------------------------------------------------
def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    v = _number(name, value)
    if not v > 0:
        raise AttributeValueError(f"{name} must be > 0, got {value!r}")
    return v


def _sigmoid_of(v: str) -> str:
    """The logistic function of expression ``v``, split by sign so ``exp`` never overflows."""
    return f"(1.0 / (1.0 + math.exp(-{v})) if {v} >= 0.0 else math.exp({v}) / (1.0 + math.exp({v})))"


def _softplus_of(v: str) -> str:
    """``log(1 + exp(v))`` without overflow."""
    return f"(max({v}, 0.0) + math.log1p(math.exp(-abs({v}))))"


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    one = x.dtype.type(1)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, one / (one + e), e / (one + e)).astype(x.dtype)


def _np_softplus(x: np.ndarray) -> np.ndarray:
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


# -- elu ----------------------------------------------------------------------------------
elu = Op(
    "elu", fusion=E, attrs={"alpha": 1.0}, doc="x if x > 0 else alpha * (exp(x) - 1)",
    scalar="({x} if {x} > 0.0 else {alpha} * math.expm1({x}))", backward="elu_backward",
    # monotone for alpha >= 0, exactly when the VJP below reads the output (as leaky_relu)
    monotone=True,
)  # fmt: skip
elu.shape(_same)


@elu.check
def _(alpha):
    return {"alpha": _number("alpha", alpha)}


@elu.reference
def _(x, alpha):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0))).astype(x.dtype)


@elu.vjp
def _(g, node, gy):
    # alpha >= 0: y > 0 exactly where x > 0 and y + alpha = alpha * exp(x) elsewhere, so the
    # derivative is a function of the output; a negative alpha needs the input
    if node.attrs["alpha"] >= 0:
        return (g.call("elu_backward", gy, node.output, **node.attrs),)
    return (g.call("elu_backward_input", gy, node.inputs[0], **node.attrs),)


elu_backward = Op(
    "elu_backward", fusion=E, attrs={"alpha": 1.0},
    doc="gy if y > 0 else gy * (y + alpha); y is elu's output (alpha >= 0)",
    scalar="({g} if {s} > 0.0 else {g} * ({s} + {alpha}))",
)  # fmt: skip
elu_backward.shape(_grad_like)


@elu_backward.reference
def _(gy, y, alpha):
    return np.where(y > 0, gy, gy * (y + y.dtype.type(alpha)))


elu_backward_input = Op(
    "elu_backward_input", fusion=E, attrs={"alpha": 1.0},
    doc="gy if x > 0 else gy * alpha * exp(x); x is elu's input (any alpha)",
    scalar="({g} if {s} > 0.0 else {g} * {alpha} * math.exp({s}))",
)  # fmt: skip
elu_backward_input.shape(_grad_like)


@elu_backward_input.reference
def _(gy, x, alpha):
    return np.where(x > 0, gy, gy * x.dtype.type(alpha) * np.exp(np.minimum(x, 0)))


# -- hardtanh (ONNX Clip) ---------------------------------------------------------------------
hardtanh = Op(
    "hardtanh", fusion=E, attrs={"min_val": -1.0, "max_val": 1.0}, doc="min(max(x, min_val), max_val)",
    scalar="min(max({x}, {min_val}), {max_val})", backward="hardtanh_backward", monotone=True,
)  # fmt: skip
hardtanh.shape(_same)


@hardtanh.check
def _(min_val, max_val):
    lo, hi = _number("min_val", min_val), _number("max_val", max_val)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise AttributeValueError(f"min_val must be <= max_val, got min_val={min_val!r}, max_val={max_val!r}")
    return {"min_val": lo, "max_val": hi}


@hardtanh.reference
def _(x, min_val, max_val):
    return np.minimum(np.maximum(x, x.dtype.type(min_val)), x.dtype.type(max_val))


hardtanh_backward = Op(
    "hardtanh_backward", fusion=E, attrs={"min_val": -1.0, "max_val": 1.0},
    doc="gy where min_val < y < max_val else 0 (as PyTorch's hardtanh_backward)",
    scalar="({g} if {min_val} < {s} < {max_val} else 0.0)",
)  # fmt: skip
hardtanh_backward.shape(_grad_like)


@hardtanh_backward.reference
def _(gy, y, min_val, max_val):
    return np.where((y > min_val) & (y < max_val), gy, gy.dtype.type(0))


# -- hardsigmoid ----------------------------------------------------------------------------
hardsigmoid = Op(
    "hardsigmoid", fusion=E, attrs={"alpha": 1.0 / 6.0, "beta": 0.5},
    doc="min(max(alpha * x + beta, 0), 1); PyTorch's is alpha = 1/6, beta = 1/2",
    scalar="min(max({x} * {alpha} + {beta}, 0.0), 1.0)", backward="hardsigmoid_backward",
    monotone=True,
)  # fmt: skip
hardsigmoid.shape(_same)


@hardsigmoid.check
def _(alpha, beta):
    # alpha > 0 keeps it monotone, so the backward reads the output
    return {"alpha": _positive("alpha", alpha), "beta": _number("beta", beta)}


@hardsigmoid.reference
def _(x, alpha, beta):
    t = x.dtype.type
    return np.minimum(np.maximum(x * t(alpha) + t(beta), t(0)), t(1))


hardsigmoid_backward = Op(
    "hardsigmoid_backward", fusion=E, attrs={"alpha": 1.0 / 6.0, "beta": 0.5},
    doc="gy * alpha where 0 < y < 1 else 0", scalar="({g} * {alpha} if 0.0 < {s} < 1.0 else 0.0)",
)  # fmt: skip
hardsigmoid_backward.shape(_grad_like)


@hardsigmoid_backward.reference
def _(gy, y, alpha, beta):
    return np.where((y > 0) & (y < 1), gy * gy.dtype.type(alpha), gy.dtype.type(0))


# -- softplus -------------------------------------------------------------------------------
softplus = Op(
    "softplus", fusion=E, attrs={"beta": 1.0, "threshold": 20.0},
    doc="log(1 + exp(beta * x)) / beta, or x where beta * x > threshold",
    scalar=f"({{x}} if {{x}} * {{beta}} > {{threshold}} else {_softplus_of('({x} * {beta})')} / {{beta}})",
    backward="softplus_backward", monotone=True,
)  # fmt: skip
softplus.shape(_same)


@softplus.check
def _(beta, threshold):
    return {"beta": _positive("beta", beta), "threshold": _number("threshold", threshold)}


@softplus.reference
def _(x, beta, threshold):
    bx = x * x.dtype.type(beta)
    return np.where(bx > threshold, x, _np_softplus(bx) / x.dtype.type(beta)).astype(x.dtype)


softplus_backward = Op(
    "softplus_backward", fusion=E, attrs={"beta": 1.0, "threshold": 20.0},
    doc="gy * sigmoid(beta * x) = gy * (1 - exp(-beta * y)), or gy where beta * y > threshold",
    scalar="({g} if {s} * {beta} > {threshold} else -{g} * math.expm1(-{beta} * {s}))",
)  # fmt: skip
softplus_backward.shape(_grad_like)


@softplus_backward.reference
def _(gy, y, beta, threshold):
    by = y * y.dtype.type(beta)
    return np.where(by > threshold, gy, -gy * np.expm1(-by)).astype(gy.dtype)


# -- gelu, gelu_tanh ------------------------------------------------------------------------
_SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_TANH_K = 0.7978845608028654  # sqrt(2 / pi)
_TANH_C = 0.044715


gelu = Op(
    "gelu", fusion=E, doc="x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))) (approximate='none')",
    scalar=f"(0.5 * {{x}} * (1.0 + math.erf({{x}} * {_SQRT_HALF})))",
    backward="gelu_backward", saves="input",
)  # fmt: skip
gelu.shape(_same)


@gelu.reference
def _(x):
    t = x.dtype.type
    return (t(0.5) * x * (t(1) + _erf(x * t(_SQRT_HALF)))).astype(x.dtype)


gelu_backward = Op(
    "gelu_backward", fusion=E, doc="gy * (Phi(x) + x * phi(x)); x is gelu's input",
    scalar=(
        f"({{g}} * (0.5 * (1.0 + math.erf({{s}} * {_SQRT_HALF}))"
        f" + {{s}} * {_INV_SQRT_2PI} * math.exp(-0.5 * {{s}} * {{s}})))"
    ),
)  # fmt: skip
gelu_backward.shape(_grad_like)


@gelu_backward.reference
def _(gy, x):
    t = x.dtype.type
    cdf = t(0.5) * (t(1) + _erf(x * t(_SQRT_HALF)))
    return (gy * (cdf + x * t(_INV_SQRT_2PI) * np.exp(t(-0.5) * x * x))).astype(gy.dtype)


def _erf(x: np.ndarray) -> np.ndarray:
    return scipy.special.erf(x).astype(x.dtype)


_TANH_ARG = f"{_TANH_K} * ({{v}} + {_TANH_C} * {{v}} * {{v}} * {{v}})"

gelu_tanh = Op(
    "gelu_tanh", fusion=E,
    doc="x / 2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) (gelu with approximate='tanh')",
    scalar="(0.5 * {x} * (1.0 + math.tanh(" + _TANH_ARG.format(v="{x}") + ")))",
    backward="gelu_tanh_backward", saves="input",
)  # fmt: skip
gelu_tanh.shape(_same)


def _np_gelu_tanh_t(x: np.ndarray) -> np.ndarray:
    t = x.dtype.type
    return np.tanh(t(_TANH_K) * (x + t(_TANH_C) * x * x * x))


@gelu_tanh.reference
def _(x):
    t = x.dtype.type
    return (t(0.5) * x * (t(1) + _np_gelu_tanh_t(x))).astype(x.dtype)


_TANH_S = "math.tanh(" + _TANH_ARG.format(v="{s}") + ")"

gelu_tanh_backward = Op(
    "gelu_tanh_backward", fusion=E, doc="gy * the derivative of gelu_tanh at x; x is its input",
    scalar=(
        f"({{g}} * (0.5 * (1.0 + {_TANH_S}) + 0.5 * {{s}} * (1.0 - {_TANH_S} * {_TANH_S})"
        f" * {_TANH_K} * (1.0 + {3 * _TANH_C!r} * {{s}} * {{s}})))"
    ),
)  # fmt: skip
gelu_tanh_backward.shape(_grad_like)


@gelu_tanh_backward.reference
def _(gy, x):
    t = x.dtype.type
    th = _np_gelu_tanh_t(x)
    slope = t(_TANH_K) * (t(1) + t(3 * _TANH_C) * x * x)
    return (gy * (t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * slope)).astype(gy.dtype)


# -- silu -----------------------------------------------------------------------------------
silu = Op(
    "silu", fusion=E, doc="x * sigmoid(x)", scalar=f"({{x}} * {_sigmoid_of('{x}')})",
    backward="silu_backward", saves="input",
)  # fmt: skip
silu.shape(_same)


@silu.reference
def _(x):
    return x * _np_sigmoid(x)


silu_backward = Op(
    "silu_backward", fusion=E, doc="gy * sigmoid(x) * (1 + x * (1 - sigmoid(x))); x is silu's input",
    scalar=f"({{g}} * {_sigmoid_of('{s}')} * (1.0 + {{s}} * (1.0 - {_sigmoid_of('{s}')})))",
)  # fmt: skip
silu_backward.shape(_grad_like)


@silu_backward.reference
def _(gy, x):
    sig = _np_sigmoid(x)
    return gy * sig * (x.dtype.type(1) + x * (x.dtype.type(1) - sig))


# -- hardswish ------------------------------------------------------------------------------
hardswish = Op(
    "hardswish", fusion=E, doc="x * min(max(x + 3, 0), 6) / 6",
    scalar="({x} * min(max({x} + 3.0, 0.0), 6.0) / 6.0)", backward="hardswish_backward", saves="input",
)  # fmt: skip
hardswish.shape(_same)


@hardswish.reference
def _(x):
    t = x.dtype.type
    return x * np.minimum(np.maximum(x + t(3), t(0)), t(6)) / t(6)


hardswish_backward = Op(
    "hardswish_backward", fusion=E,
    doc="gy where x >= 3, gy * (x / 3 + 1/2) where -3 < x < 3, else 0 (as PyTorch); x is the input",
    scalar="({g} if {s} >= 3.0 else ({g} * ({s} / 3.0 + 0.5) if {s} > -3.0 else 0.0))",
)  # fmt: skip
hardswish_backward.shape(_grad_like)


@hardswish_backward.reference
def _(gy, x):
    t = x.dtype.type
    return np.where(x >= 3, gy, np.where(x > -3, gy * (x / t(3) + t(0.5)), t(0))).astype(gy.dtype)


# -- mish -----------------------------------------------------------------------------------
mish = Op(
    "mish", fusion=E, doc="x * tanh(softplus(x))", scalar=f"({{x}} * math.tanh({_softplus_of('{x}')}))",
    backward="mish_backward", saves="input",
)  # fmt: skip
mish.shape(_same)


@mish.reference
def _(x):
    return x * np.tanh(_np_softplus(x))


_MISH_T = f"math.tanh({_softplus_of('{s}')})"

mish_backward = Op(
    "mish_backward", fusion=E,
    doc="gy * (tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2)), sp = softplus(x); x is the input",
    scalar=f"({{g}} * ({_MISH_T} + {{s}} * {_sigmoid_of('{s}')} * (1.0 - {_MISH_T} * {_MISH_T})))",
)  # fmt: skip
mish_backward.shape(_grad_like)


@mish_backward.reference
def _(gy, x):
    th = np.tanh(_np_softplus(x))
    return gy * (th + x * _np_sigmoid(x) * (x.dtype.type(1) - th * th))


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
    if x.size == 0:  # as torch: an empty result (max over an empty axis has no identity)
        return x.copy()
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
    if x.size == 0:  # as torch: an empty result
        return x.copy()
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
