"""Losses: cross_entropy (integer labels) and mse_loss, each with its backward op.

``cross_entropy`` is the numerically stable fused log-softmax + negative log-likelihood;
its backward is ``(softmax(logits) - onehot(target)) * g / N`` for the mean reduction.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops.common import expect_float, expect_rank, expect_same_dtype, expect_same_shape
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise AttributeValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _reduce(values: np.ndarray, reduction: str, dtype) -> np.ndarray:
    total = values.sum(dtype=np.float64)
    if reduction == "mean":
        total = total / max(values.size, 1)
    return np.asarray(total, dtype=dtype)


# -- cross_entropy ------------------------------------------------------------------------
cross_entropy = Op(
    "cross_entropy",
    fusion=FusionKind.REDUCE,
    attrs={"reduction": "mean"},
    labels={1: 0},  # target indexes the classes of logits
    doc="mean over the batch of -log softmax(logits)[target]",
)
cross_entropy.check(_check_reduction)


def _ce_types(logits: TensorType, target: TensorType) -> None:
    expect_rank(logits, 2, "logits")
    expect_float(logits, "logits")
    if target.dtype != "i64":
        raise DTypeError(f"expected target of dtype i64 (class indices), got {target}")
    if target.shape != logits.shape[:1]:
        raise ShapeError(f"expected target of shape [{logits.shape[0]}] for logits {logits}, got {target}")


@cross_entropy.shape
def _(logits, target, reduction):
    _ce_types(logits, target)
    return logits.with_shape(())


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@cross_entropy.reference
def _(logits, target, reduction):
    logp = _log_softmax(logits)
    picked = -logp[np.arange(logits.shape[0]), target]
    return _reduce(picked, reduction, logits.dtype)


@cross_entropy.vjp
def _(g, node, gy):
    logits, target = node.inputs
    return (g.call("cross_entropy_backward", gy, logits, target, **node.attrs), None)


cross_entropy_backward = Op(
    "cross_entropy_backward", fusion=FusionKind.REDUCE, attrs={"reduction": "mean"}, labels={2: 1}
)
cross_entropy_backward.check(_check_reduction)


@cross_entropy_backward.shape
def _(g, logits, target, reduction):
    _ce_types(logits, target)
    if g.shape != () or g.dtype != logits.dtype:
        raise ShapeError(f"expected the incoming gradient as a {logits.dtype}[] scalar, got {g}")
    return logits


@cross_entropy_backward.reference
def _(g, logits, target, reduction):
    n = logits.shape[0]
    grad = np.exp(_log_softmax(logits))
    grad[np.arange(n), target] -= 1
    factor = g / n if reduction == "mean" and n else g
    return (grad * factor).astype(logits.dtype)


# -- mse_loss -----------------------------------------------------------------------------
mse_loss = Op(
    "mse_loss", fusion=FusionKind.REDUCE, attrs={"reduction": "mean"}, doc="mean((input - target)^2)"
)
mse_loss.check(_check_reduction)


@mse_loss.shape
def _(x, target, reduction):
    expect_float(x)
    expect_same_dtype(x, target)
    expect_same_shape(x, target, "input and target")
    return x.with_shape(())


@mse_loss.reference
def _(x, target, reduction):
    diff = x.astype(np.float64) - target
    return _reduce(diff * diff, reduction, x.dtype)


@mse_loss.vjp
def _(g, node, gy):
    gx = g.call("mse_loss_backward", gy, *node.inputs, **node.attrs)
    return (gx, g.call("scale", gx, factor=-1.0))


mse_loss_backward = Op(
    "mse_loss_backward",
    fusion=FusionKind.ELEMENTWISE,
    attrs={"reduction": "mean"},
    doc="2 * (input - target) * g / numel",
)
mse_loss_backward.check(_check_reduction)


@mse_loss_backward.shape
def _(g, x, target, reduction):
    expect_same_shape(x, target, "input and target")
    if g.shape != ():
        raise ShapeError(f"expected the incoming gradient as a scalar, got {g}")
    return x


@mse_loss_backward.reference
def _(g, x, target, reduction):
    factor = 2.0 * g / (x.size if reduction == "mean" and x.size else 1)
    return ((x - target) * factor).astype(x.dtype)
