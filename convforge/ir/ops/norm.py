"""Batch normalisation (eval, train, backward) and dropout.

Batch norm follows PyTorch: statistics per channel (dim 1) over every other dim of
``x`` ([N,C] for BatchNorm1d, [N,C,L], [N,C,H,W] for BatchNorm2d); the batch variance is
biased when normalising, unbiased when updating ``running_var``; with momentum m,
``running = (1 - m) * running + m * batch``. The references compute in float64 and
round to the input dtype once.

Dropout keeps element i when ``rng.uniform(seed, step, i) >= p`` (i the flat C-order
index, see :mod:`convforge.ir.ops.rng`) and scales the kept ones by
``s = 1 / (1 - p)``, computed in float64 and rounded to the input dtype; ``p == 1``
gives zeros. The backward regenerates the mask from (seed, step) instead of storing it.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops import rng
from convforge.ir.ops.common import expect_float, expect_rank, expect_same_dtype, expect_same_shape
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType


# -- attribute and shape rules --------------------------------------------------------------
def _number(name: str, value, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (low < value if open_low else low <= value) or not value <= high:
        bound = f"{'(' if open_low else '['}{low}, {high}]"
        raise AttributeValueError(f"{name} must be in {bound}, got {value!r}")
    return value


def _check_eps(eps) -> dict:
    return {"eps": _number("eps", eps, 0.0, float("inf"), open_low=True)}


def _check_bn_input(x: TensorType, *params: TensorType, names: tuple[str, ...]) -> None:
    expect_float(x)
    expect_rank(x, (2, 3, 4), "input [N,C], [N,C,L] or [N,C,H,W]")
    expect_same_dtype(x, *params)
    channels = x.shape[1]
    for t, name in zip(params, names):
        if t.shape != (channels,):
            raise ShapeError(f"expected {name} of shape [{channels}] (one per channel of input {x}), got {t}")


def _per_channel(x: TensorType) -> TensorType:
    return x.with_shape((x.shape[1],))


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _bcast(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against an [N,C,...] array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


# -- batch_norm (eval) ----------------------------------------------------------------------
batch_norm = Op(
    "batch_norm", fusion=FusionKind.BROADCAST, attrs={"eps": 1e-5},
    doc="(x - running_mean) / sqrt(running_var + eps) * weight + bias",
)  # fmt: skip
batch_norm.check(_check_eps)


@batch_norm.shape
def _(x, weight, bias, running_mean, running_var, eps):
    _check_bn_input(x, weight, bias, running_mean, running_var, names=_BN_PARAMS)
    return x


@batch_norm.reference
def _(x, weight, bias, running_mean, running_var, eps):
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    scale = weight * invstd
    shift = bias - running_mean * scale
    return (x * _bcast(scale, x.ndim) + _bcast(shift, x.ndim)).astype(x.dtype)


@batch_norm.vjp
def _(g, node, gy):
    x, weight, _bias, running_mean, running_var = node.inputs
    gx, gw, gb = g.call("batch_norm_eval_backward", gy, x, weight, running_mean, running_var, **node.attrs)
    return (gx, gw, gb, None, None)


batch_norm_eval_backward = Op(
    "batch_norm_eval_backward", outputs=("", "weight", "bias"), attrs={"eps": 1e-5},
    doc="gx = gy * weight * invstd, gweight = sum(gy * x_hat), gbias = sum(gy), running statistics",
)  # fmt: skip
batch_norm_eval_backward.check(_check_eps)


@batch_norm_eval_backward.shape
def _(gy, x, weight, running_mean, running_var, eps):
    return _backward_types(
        gy, x, weight, running_mean, running_var, ("weight", "running_mean", "running_var")
    )


def _backward_types(gy, x, weight, a, b, names):
    """(gx, gweight, gbias) types of both batch-norm backward ops."""
    _check_bn_input(x, weight, a, b, names=names)
    expect_same_dtype(gy, x)
    expect_same_shape(gy, x, "gradient and input")
    return x, _per_channel(x), _per_channel(x)


@batch_norm_eval_backward.reference
def _(gy, x, weight, running_mean, running_var, eps):
    axes, nd = _axes(x.ndim), x.ndim
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    g64 = gy.astype(np.float64)
    xhat = (x - _bcast(running_mean, nd)) * _bcast(invstd, nd)
    gx = g64 * _bcast(weight * invstd, nd)
    return gx.astype(x.dtype), (g64 * xhat).sum(axes).astype(x.dtype), g64.sum(axes).astype(x.dtype)


# -- batch_norm_train -----------------------------------------------------------------------
batch_norm_train = Op(
    "batch_norm_train", outputs=("", "mean", "invstd", "running_mean", "running_var"),
    attrs={"eps": 1e-5, "momentum": 0.1},
    doc="normalise with batch statistics; return them and the updated running statistics",
)  # fmt: skip


@batch_norm_train.check
def _(eps, momentum):
    return {**_check_eps(eps), "momentum": _number("momentum", momentum, 0.0, 1.0)}


def _values_per_channel(shape) -> int | None:
    """N * spatial, or None while the batch is symbolic."""
    dims = [shape[0], *shape[2:]]
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


@batch_norm_train.shape
def _(x, weight, bias, running_mean, running_var, eps, momentum):
    _check_bn_input(x, weight, bias, running_mean, running_var, names=_BN_PARAMS)
    if _values_per_channel(x.shape) == 1:
        raise ShapeError(f"expected more than 1 value per channel when training, got input {x}")
    c = _per_channel(x)
    return x, c, c, c, c


@batch_norm_train.reference
def _(x, weight, bias, running_mean, running_var, eps, momentum):
    axes, nd = _axes(x.ndim), x.ndim
    count = x.size // x.shape[1]
    if count <= 1:
        raise ShapeError(f"expected more than 1 value per channel when training, got input shape {x.shape}")
    x64 = x.astype(np.float64)
    mean = x64.mean(axes)
    centred = x64 - _bcast(mean, nd)
    var = (centred * centred).mean(axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = centred * _bcast(invstd * weight, nd) + _bcast(bias.astype(np.float64), nd)
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * var * (count / (count - 1))
    return tuple(a.astype(x.dtype) for a in (y, mean, invstd, new_mean, new_var))


@batch_norm_train.vjp
def _(g, node, gy, *stat_grads):
    # the statistics outputs carry no gradient: only y's gradient flows back
    if gy is None:
        return (None,) * 5
    x, weight = node.inputs[0], node.inputs[1]
    mean, invstd = node.outputs[1], node.outputs[2]
    gx, gw, gb = g.call("batch_norm_backward", gy, x, weight, mean, invstd, eps=node.attrs["eps"])
    return (gx, gw, gb, None, None)


batch_norm_backward = Op(
    "batch_norm_backward", outputs=("", "weight", "bias"), attrs={"eps": 1e-5},
    doc="gx = weight * invstd / m * (m * gy - sum(gy) - x_hat * sum(gy * x_hat)), batch statistics",
)  # fmt: skip
batch_norm_backward.check(_check_eps)


@batch_norm_backward.shape
def _(gy, x, weight, mean, invstd, eps):
    return _backward_types(gy, x, weight, mean, invstd, ("weight", "mean", "invstd"))


@batch_norm_backward.reference
def _(gy, x, weight, mean, invstd, eps):
    axes, nd = _axes(x.ndim), x.ndim
    count = x.size // x.shape[1]
    g64 = gy.astype(np.float64)
    inv = invstd.astype(np.float64)
    xhat = (x - _bcast(mean.astype(np.float64), nd)) * _bcast(inv, nd)
    gb = g64.sum(axes)
    gw = (g64 * xhat).sum(axes)
    gx = _bcast(weight * inv / count, nd) * (count * g64 - _bcast(gb, nd) - xhat * _bcast(gw, nd))
    return gx.astype(x.dtype), gw.astype(x.dtype), gb.astype(x.dtype)


# -- dropout --------------------------------------------------------------------------------
def _check_dropout(p, seed) -> dict:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise AttributeValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return {"p": _number("p", p, 0.0, 1.0), "seed": seed}


def _dropout_shape(x: TensorType, step: TensorType, p: float, seed: int) -> TensorType:
    expect_float(x)
    if step.dtype != "i64" or step.shape != ():
        raise DTypeError(f"expected step of type i64[] (a scalar counter), got {step}")
    return x


def _dropout_apply(x: np.ndarray, step: np.ndarray, p: float, seed: int) -> np.ndarray:
    if p >= 1.0:
        return np.zeros_like(x)
    keep = rng.uniform_array(seed, int(step), x.shape) >= p
    return np.where(keep, x * x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0))


dropout = Op(
    "dropout", attrs={"p": 0.5, "seed": 0}, doc="x * keep / (1 - p), keep = uniform(seed, step, i) >= p"
)
dropout.check(_check_dropout)
dropout.shape(_dropout_shape)
dropout.reference(_dropout_apply)


@dropout.vjp
def _(g, node, gy):
    return (g.call("dropout_backward", gy, node.inputs[1], **node.attrs), None)


dropout_backward = Op(
    "dropout_backward", attrs={"p": 0.5, "seed": 0}, doc="gy * keep / (1 - p), the mask regenerated"
)
dropout_backward.check(_check_dropout)
dropout_backward.shape(_dropout_shape)
dropout_backward.reference(_dropout_apply)
