"""Losses with PyTorch's formulas, each with its backward op.

* Class-index losses: ``cross_entropy(logits, target[, weight])`` (log-softmax fused in) and
  ``nll_loss(logp, target[, weight])``, with ``ignore_index``, ``label_smoothing`` (cross
  entropy only) and ``reduction`` ``"none" | "mean" | "sum"``. As in torch, the mean divides
  by the summed weights of the non-ignored targets, and label smoothing adds
  ``label_smoothing / C`` times the weighted sum of ``-logp`` over the classes.
* Pointwise losses of ``d = input - target``: ``mse_loss``, ``l1_loss``,
  ``smooth_l1_loss {beta}``, ``huber_loss {delta}``, and
  ``binary_cross_entropy_with_logits(x, t[, weight[, pos_weight]])``. Their per-element value
  and derivative are Python scalar expressions in :data:`POINTWISE` that both Numba backends
  compile; a weight's shape is a suffix of the input's (or ``[1]``), so element ``i``
  reads ``weight[i % weight.size]``.

A target class equal to ``ignore_index`` is allowed besides ``[0, C)`` (the ``labels`` fact
and the node's ``ignore_index`` attribute; ``base.check_labels``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops.common import (
    expect_float,
    expect_rank,
    expect_same_dtype,
    expect_same_shape,
    number,
)
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise AttributeValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _reduce(values: np.ndarray, reduction: str, dtype, divisor: float | None = None) -> np.ndarray:
    if reduction == "none":
        return values.astype(dtype)
    total = values.sum(dtype=np.float64)
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / (values.size if divisor is None else divisor)
    return np.asarray(total, dtype=dtype)


def _loss_type(x: TensorType, reduction: str, rows: bool = False) -> TensorType:
    if reduction != "none":
        return x.with_shape(())
    return x.with_shape(x.shape[:1]) if rows else x


def _expect_grad(g: TensorType, x: TensorType, reduction: str, rows: bool = False) -> None:
    want = _loss_type(x, reduction, rows)
    if g != want:
        raise ShapeError(f"expected the incoming gradient of type {want} (reduction={reduction}), got {g}")


# =========================================================================================
# Class-index losses: cross_entropy and nll_loss
# =========================================================================================
def _check_class(reduction, ignore_index, **smoothing):
    check_reduction(reduction)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise AttributeValueError(f"ignore_index must be an int, got {ignore_index!r}")
    return {k: number(k, v, low=0.0, high=1.0) for k, v in smoothing.items()}


def _class_types(x: TensorType, target: TensorType, weight: TensorType | None) -> None:
    expect_rank(x, 2, "input")
    expect_float(x, "input")
    if target.dtype != "i64":
        raise DTypeError(f"expected target of dtype i64 (class indices), got {target}")
    if target.shape != x.shape[:1]:
        raise ShapeError(f"expected target of shape [{x.shape[0]}] for input {x}, got {target}")
    if weight is not None:
        expect_same_dtype(x, weight)
        if weight.shape != x.shape[1:]:
            raise ShapeError(f"expected weight of shape [{x.shape[1]}] (one per class), got {weight}")


def class_loss_parts(logp, target, weight, ignore_index, label_smoothing):
    """Per row (float64): the loss before reduction, and the weight of its target (0 where
    ignored), whose sum the mean divides by."""
    n, c = logp.shape
    logp = logp.astype(np.float64)
    valid = target != ignore_index
    t = np.where(valid, target, 0)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    wt = np.where(valid, w[t], 0.0)
    loss = np.where(valid, -wt * logp[np.arange(n), t], 0.0)
    if label_smoothing > 0:
        smooth = np.where(valid, -(logp * w).sum(axis=1), 0.0)
        loss = (1 - label_smoothing) * loss + (label_smoothing / c) * smooth
    return loss, wt


def class_loss_grad(g, logp, target, weight, reduction, ignore_index, label_smoothing):
    """The gradient with respect to ``logp`` (float64)."""
    n, c = logp.shape
    valid = target != ignore_index
    t = np.where(valid, target, 0)
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    wt = np.where(valid, w[t], 0.0)
    scale = np.broadcast_to(np.asarray(g, np.float64), (n,)).copy()
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = scale / wt.sum()
    grad = np.zeros((n, c))
    grad[np.arange(n), t] = -(1 - label_smoothing) * wt
    if label_smoothing > 0:
        grad -= (label_smoothing / c) * w
    with np.errstate(invalid="ignore"):
        return np.where(valid[:, None], grad * scale[:, None], 0.0)  # an ignored row: 0, not 0 * inf


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _declare_class_loss(name: str, smoothing: bool, logits: bool, doc: str) -> None:
    attrs = {"reduction": "mean", "ignore_index": -100, **({"label_smoothing": 0.0} if smoothing else {})}
    forward = Op(name, fusion=FusionKind.REDUCE, attrs=attrs, labels={1: 0}, doc=doc)
    backward = Op(f"{name}_backward", fusion=FusionKind.REDUCE, attrs=attrs, labels={2: 1})
    forward.check(_check_class)
    backward.check(_check_class)

    def logp_of(x):
        return _log_softmax(x) if logits else x.astype(np.float64)

    @forward.shape
    def _(x, target, weight=None, **a):
        _class_types(x, target, weight)
        return _loss_type(x, a["reduction"], rows=True)

    @forward.reference
    def _(x, target, weight=None, *, reduction, ignore_index, label_smoothing=0.0):
        loss, wt = class_loss_parts(logp_of(x), target, weight, ignore_index, label_smoothing)
        return _reduce(loss, reduction, x.dtype, wt.sum())

    @forward.vjp
    def _(g, node, gy):
        x, target, *weight = node.inputs
        return (g.call(backward.name, gy, x, target, *weight, **node.attrs), None, *(None for _ in weight))

    @backward.shape
    def _(g, x, target, weight=None, **a):
        _class_types(x, target, weight)
        _expect_grad(g, x, a["reduction"], rows=True)
        return x

    @backward.reference
    def _(g, x, target, weight=None, *, reduction, ignore_index, label_smoothing=0.0):
        grad = class_loss_grad(g, logp_of(x), target, weight, reduction, ignore_index, label_smoothing)
        if logits:  # through log_softmax: G - softmax * sum(G)
            grad = grad - np.exp(_log_softmax(x)) * grad.sum(axis=1, keepdims=True)
        return grad.astype(x.dtype)


_declare_class_loss(
    "cross_entropy",
    smoothing=True,
    logits=True,
    doc="-w[t] log softmax(logits)[t] (+ label smoothing), reduced; torch's cross_entropy",
)
_declare_class_loss(
    "nll_loss", smoothing=False, logits=False, doc="-w[t] input[t], reduced; torch's nll_loss"
)


# =========================================================================================
# Pointwise losses
# =========================================================================================
@dataclasses.dataclass(frozen=True)
class Pointwise:
    """A loss of ``d = input - target`` per element: ``value`` and its derivative ``grad``
    with respect to the input, Python scalar expressions of ``{d}`` (and ``{p}``, the op's
    ``param`` attribute); ``numpy`` computes ``value`` and ``grad`` on arrays."""

    value: str
    grad: str
    param: str | None = None


_SIGN = "(1.0 if {d} > 0 else (-1.0 if {d} < 0 else {d} * 0.0))"

#: op name -> its per-element value and derivative
POINTWISE: dict[str, Pointwise] = {
    "mse_loss": Pointwise("{d} * {d}", "2.0 * {d}"),
    "l1_loss": Pointwise("abs({d})", _SIGN),
    "smooth_l1_loss": Pointwise(
        "(0.5 * {d} * {d} / {p} if abs({d}) < {p} else abs({d}) - 0.5 * {p})",
        "({d} / {p} if abs({d}) < {p} else " + _SIGN + ")",
        "beta",
    ),
    "huber_loss": Pointwise(
        "(0.5 * {d} * {d} if abs({d}) < {p} else {p} * (abs({d}) - 0.5 * {p}))",
        "({d} if abs({d}) < {p} else {p} * " + _SIGN + ")",
        "delta",
    ),
}

_NUMPY = {
    "mse_loss": (lambda d, p: d * d, lambda d, p: 2.0 * d),
    "l1_loss": (lambda d, p: np.abs(d), lambda d, p: np.sign(d)),
    "smooth_l1_loss": (
        lambda d, p: np.where(np.abs(d) < p, 0.5 * d * d / (p or 1.0), np.abs(d) - 0.5 * p),
        lambda d, p: np.where(np.abs(d) < p, d / (p or 1.0), np.sign(d)),
    ),
    "huber_loss": (
        lambda d, p: np.where(np.abs(d) < p, 0.5 * d * d, p * (np.abs(d) - 0.5 * p)),
        lambda d, p: np.where(np.abs(d) < p, d, p * np.sign(d)),
    ),
}

#: the smallest value of each param: torch refuses a negative beta and a delta <= 0
_PARAM_RANGE = {"beta": {"low": 0.0}, "delta": {"low": 0.0, "open_low": True}}


def _declare_pointwise(name: str, spec: Pointwise) -> None:
    attrs = {"reduction": "mean", **({spec.param: 1.0} if spec.param else {})}
    forward = Op(
        name, fusion=FusionKind.REDUCE, attrs=attrs, doc=f"{spec.value.format(d='d', p='p')}, reduced"
    )
    backward = Op(f"{name}_backward", fusion=FusionKind.ELEMENTWISE, attrs=attrs, doc=f"g * {spec.grad}")
    value, grad = _NUMPY[name]

    def check(reduction, **param):
        check_reduction(reduction)
        return {k: number(k, v, **_PARAM_RANGE[k]) for k, v in param.items()}

    forward.check(check)
    backward.check(check)

    @forward.shape
    def _(x, target, **a):
        expect_float(x)
        expect_same_dtype(x, target)
        expect_same_shape(x, target, "input and target")
        return _loss_type(x, a["reduction"])

    @forward.reference
    def _(x, target, *, reduction, **param):
        d = x.astype(np.float64) - target
        return _reduce(value(d, _param(param)), reduction, x.dtype)

    @forward.vjp
    def _(g, node, gy):
        gx = g.call(backward.name, gy, *node.inputs, **node.attrs)
        return (gx, g.call("neg", gx))

    @backward.shape
    def _(g, x, target, **a):
        expect_same_shape(x, target, "input and target")
        _expect_grad(g, x, a["reduction"])
        return x

    @backward.reference
    def _(g, x, target, *, reduction, **param):
        d = x.astype(np.float64) - target
        factor = np.asarray(g, np.float64) / (x.size if reduction == "mean" and x.size else 1)
        return (grad(d, _param(param)) * factor).astype(x.dtype)


def _param(attrs: dict) -> float | None:
    return next(iter(attrs.values()), None)


for _name, _spec in POINTWISE.items():
    _declare_pointwise(_name, _spec)


# -- binary_cross_entropy_with_logits -----------------------------------------------------
#: per element of ``x`` (logit) and ``t`` (target), with ``pw`` the positive weight
#: (torch's stable form: ``(1 - t) x + (1 + (pw - 1) t) (log1p(exp(-|x|)) + max(-x, 0))``)
BCE_VALUE = (
    "((1.0 - {t}) * {x} + (1.0 + ({pw} - 1.0) * {t}) * (math.log1p(math.exp(-abs({x}))) + max(-{x}, 0.0)))"
)
#: its derivative with respect to ``x``: ``(1 + (pw - 1) t) sigmoid(x) - pw t``
BCE_GRAD = "((1.0 + ({pw} - 1.0) * {t}) / (1.0 + math.exp(-{x})) - {pw} * {t})"

bce_with_logits = Op(
    "binary_cross_entropy_with_logits",
    fusion=FusionKind.REDUCE,
    attrs={"reduction": "mean"},
    doc="w * (-pw t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))), reduced",
)
bce_with_logits_backward = Op(
    "binary_cross_entropy_with_logits_backward", fusion=FusionKind.ELEMENTWISE, attrs={"reduction": "mean"}
)
bce_with_logits.check(check_reduction)
bce_with_logits_backward.check(check_reduction)


def _bce_types(x: TensorType, t: TensorType, weights: list[TensorType]) -> None:
    expect_float(x)
    expect_same_dtype(x, t, *weights)
    expect_same_shape(x, t, "input and target")
    for what, w in zip(("weight", "pos_weight"), weights):
        suffix = 0 < w.rank <= x.rank and w.shape == x.shape[x.rank - w.rank :]
        if not suffix and w.shape != (1,):
            raise ShapeError(
                f"expected {what} of a shape ending the input's {x} (such as [{x.shape[-1]}]), got {w}"
            )


def _bce_weights(x: np.ndarray, weight, pos_weight) -> tuple[np.ndarray, np.ndarray]:
    ones = np.ones((1,))
    w = ones if weight is None else weight.astype(np.float64)
    pw = ones if pos_weight is None else pos_weight.astype(np.float64)
    return w, pw


@bce_with_logits.shape
def _(x, t, *weights, reduction):
    _bce_types(x, t, list(weights))
    return _loss_type(x, reduction)


@bce_with_logits.reference
def _(x, t, weight=None, pos_weight=None, *, reduction):
    w, pw = _bce_weights(x, weight, pos_weight)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    log_weight = 1.0 + (pw - 1.0) * t64
    loss = (1.0 - t64) * x64 + log_weight * (np.log1p(np.exp(-np.abs(x64))) + np.maximum(-x64, 0.0))
    return _reduce(loss * w, reduction, x.dtype)


@bce_with_logits.vjp
def _(g, node, gy):
    gx = g.call(bce_with_logits_backward.name, gy, *node.inputs, **node.attrs)
    return (gx, *(None for _ in node.inputs[1:]))


@bce_with_logits_backward.shape
def _(g, x, t, *weights, reduction):
    _bce_types(x, t, list(weights))
    _expect_grad(g, x, reduction)
    return x


@bce_with_logits_backward.reference
def _(g, x, t, weight=None, pos_weight=None, *, reduction):
    w, pw = _bce_weights(x, weight, pos_weight)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    with np.errstate(over="ignore"):
        grad = (1.0 + (pw - 1.0) * t64) / (1.0 + np.exp(-x64)) - pw * t64
    factor = np.asarray(g, np.float64) / (x.size if reduction == "mean" and x.size else 1)
    return (grad * w * factor).astype(x.dtype)


# -- what both Numba backends compile -------------------------------------------------------
_DIFF = ["d = np.float64(x[i]) - y[i]"]
_BCE_LOADS = ["xv = np.float64(x[i])", "tv = np.float64(y[i])"]
_BCE_NAMES = {"x": "xv", "t": "tv", "pw": "pwv"}

#: every pointwise loss op (each has a ``<op>_backward``)
POINTWISE_OPS = (*POINTWISE, bce_with_logits.name)


def pointwise_code(op: str, attrs, weights: int = 0) -> tuple[list[str], str, str, str, str]:
    """For a pointwise loss (or its backward op): Python statements loading element ``i`` of
    the flat operands, the per-element value and derivative (of those locals and ``p``), the
    operand names (``"x, y"``: input and target, plus ``w`` and ``pw`` for the ``weights`` a
    ``binary_cross_entropy_with_logits`` node has) and the literal of ``p``, the op's
    parameter (``beta``, ``delta``; ``0.0`` for none)."""
    name = op.removesuffix("_backward")
    if name == bce_with_logits.name:
        loads = list(_BCE_LOADS)
        for k, (var, arr) in enumerate((("wv", "w"), ("pwv", "pw"))):
            loads.append(f"{var} = {arr}[i % {arr}.size]" if k < weights else f"{var} = 1.0")
        operands = ", ".join(["x", "y", "w", "pw"][: 2 + weights])
        value = f"wv * {BCE_VALUE.format(**_BCE_NAMES)}"
        return loads, value, f"wv * {BCE_GRAD.format(**_BCE_NAMES)}", operands, "0.0"
    spec = POINTWISE[name]
    p = repr(float(attrs[spec.param])) if spec.param else "0.0"
    return _DIFF, spec.value.format(d="d", p="p"), spec.grad.format(d="d", p="p"), "x, y", p
