"""Optimizer updates as IR: ``sgd_update`` and ``adam_update``, one node per parameter.

Both follow ``torch.optim`` step by step, in its order of operations:

SGD:   g = grad + weight_decay * p;  buf = momentum * buf + (1 - dampening) * g
       (the first step sets buf = g);  g = g + momentum * buf if nesterov else buf;  p = p - lr * g
Adam:  g = grad + weight_decay * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
       p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

``step`` (t, counted from 1) is a graph input, so a trained program can be resumed.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, expect_same_shape, number
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType


def _number(
    name: str, value, *, low: float = 0.0, high: float | None = None, open_high: bool = False
) -> float:
    # NaN is refused (torch.optim.Adam's ``not 0.0 <= x`` checks do); infinities pass where
    # the range allows them, as in torch.optim, and run as IEEE arithmetic says
    return number(name, value, low=low, high=high, open_high=open_high)


def _param_like(param: TensorType, *others: TensorType) -> None:
    expect_float(param, "parameter")
    for other in others:
        expect_same_shape(param, other, "parameter and its gradient/state")
        if other.dtype != param.dtype:
            raise ShapeError(f"expected {param.dtype} like the parameter, got {other}")


# -- SGD ----------------------------------------------------------------------------------
sgd_update = Op(
    "sgd_update",
    fusion=FusionKind.OPAQUE,
    outputs=("", "momentum_buffer"),
    attrs={"lr": 0.01, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
)


@sgd_update.check
def _(lr, momentum, dampening, nesterov, weight_decay):
    out = {
        "lr": _number("lr", lr),
        "momentum": _number("momentum", momentum),
        "dampening": _number("dampening", dampening, high=1.0),
        "nesterov": bool(nesterov),
        "weight_decay": _number("weight_decay", weight_decay),
    }
    if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
        raise AttributeValueError(
            "nesterov momentum requires momentum > 0 and dampening 0, got "
            f"momentum={out['momentum']!r} and dampening={out['dampening']!r}"
        )
    return out


@sgd_update.shape
def _(param, grad, buf, step, **attrs):
    _param_like(param, grad, buf)
    return param, buf


@sgd_update.reference
def _(param, grad, buf, step, lr, momentum, dampening, nesterov, weight_decay):
    t = param.dtype.type
    g = grad + t(weight_decay) * param if weight_decay else grad
    if momentum:
        first = float(step) <= 1
        buf = g.copy() if first else t(momentum) * buf + t(1 - dampening) * g
        g = g + t(momentum) * buf if nesterov else buf
    return (param - t(lr) * g).astype(param.dtype), np.asarray(buf, dtype=param.dtype)


# -- Adam ---------------------------------------------------------------------------------
adam_update = Op(
    "adam_update",
    fusion=FusionKind.OPAQUE,
    outputs=("", "exp_avg", "exp_avg_sq"),
    positive=(3,),  # exp_avg_sq
    attrs={"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
)


@adam_update.check
def _(lr, beta1, beta2, eps, weight_decay):
    return {
        "lr": _number("lr", lr),
        "beta1": _number("beta1", beta1, high=1.0, open_high=True),
        "beta2": _number("beta2", beta2, high=1.0, open_high=True),
        "eps": _number("eps", eps),
        "weight_decay": _number("weight_decay", weight_decay),
    }


@adam_update.shape
def _(param, grad, m, v, step, **attrs):
    _param_like(param, grad, m, v)
    return param, m, v


@adam_update.reference
def _(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    t = param.dtype.type
    g = grad + t(weight_decay) * param if weight_decay else grad
    m = t(beta1) * m + t(1 - beta1) * g
    v = t(beta2) * v + t(1 - beta2) * g * g
    n = float(step)
    bias1 = 1 - beta1**n
    bias2 = 1 - beta2**n
    denom = np.sqrt(v) / t(np.sqrt(bias2)) + t(eps)
    new = param - t(lr / bias1) * (m / denom)
    return new.astype(param.dtype), m.astype(param.dtype), v.astype(param.dtype)
