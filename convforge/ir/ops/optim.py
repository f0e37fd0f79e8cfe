"""Optimizer updates as IR, one node per parameter, and gradient clipping by global norm.

Each update follows ``torch.optim`` step by step, in its order of operations:

SGD:     g = grad + weight_decay * p;  buf = momentum * buf + (1 - dampening) * g
         (the first step sets buf = g);  g = g + momentum * buf if nesterov else buf;  p = p - lr * g
Adam:    g = grad + weight_decay * p (AdamW: p = p * (1 - lr * weight_decay), g = grad);
         m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
         p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
RMSprop: g = grad + weight_decay * p;  v = alpha v + (1 - alpha) g^2;  centered: a = a + (1 - alpha)
         (g - a), d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps;  momentum > 0: buf = momentum
         buf + g / d, p = p - lr buf;  else p = p - lr g / d
Adagrad: g = grad + weight_decay * p;  s = s + g^2;  p = p - lr / (1 + (t - 1) lr_decay) g / (sqrt(s) + eps)

``step`` (t, counted from 1) is a graph input, so a trained program can be resumed.
``clip_grad_norm_coef`` is ``torch.nn.utils.clip_grad_norm_``'s factor, ``min(1, max_norm /
(||all gradients||_2 + 1e-6))``; the training graph multiplies every gradient by it (``mul``).
"""

from __future__ import annotations

import math

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
    attrs={
        "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
        "decoupled_weight_decay": False,
    },
)  # fmt: skip


@adam_update.check
def _(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay):
    return {
        "lr": _number("lr", lr),
        "beta1": _number("beta1", beta1, high=1.0, open_high=True),
        "beta2": _number("beta2", beta2, high=1.0, open_high=True),
        "eps": _number("eps", eps),
        "weight_decay": _number("weight_decay", weight_decay),
        "decoupled_weight_decay": bool(decoupled_weight_decay),
    }


@adam_update.shape
def _(param, grad, m, v, step, **attrs):
    _param_like(param, grad, m, v)
    return param, m, v


@adam_update.reference
def _(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay):
    t = param.dtype.type
    if decoupled_weight_decay:
        param, g = param * t(1 - lr * weight_decay), grad
    else:
        g = grad + t(weight_decay) * param if weight_decay else grad
    m = t(beta1) * m + t(1 - beta1) * g
    v = t(beta2) * v + t(1 - beta2) * g * g
    n = float(step)
    bias1 = 1 - beta1**n
    bias2 = 1 - beta2**n
    denom = np.sqrt(v) / t(np.sqrt(bias2)) + t(eps)
    new = param - t(lr / bias1) * (m / denom)
    return new.astype(param.dtype), m.astype(param.dtype), v.astype(param.dtype)


# -- RMSprop ------------------------------------------------------------------------------
rmsprop_update = Op(
    "rmsprop_update",
    fusion=FusionKind.OPAQUE,
    outputs=("", "square_avg", "momentum_buffer", "grad_avg"),
    positive=(2,),  # square_avg
    attrs={"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
)


@rmsprop_update.check
def _(lr, alpha, eps, weight_decay, momentum, centered):
    return {
        "lr": _number("lr", lr),
        "alpha": _number("alpha", alpha),
        "eps": _number("eps", eps),
        "weight_decay": _number("weight_decay", weight_decay),
        "momentum": _number("momentum", momentum),
        "centered": bool(centered),
    }


@rmsprop_update.shape
def _(param, grad, square_avg, buf, grad_avg, step, **attrs):
    _param_like(param, grad, square_avg, buf, grad_avg)
    return param, square_avg, buf, grad_avg


@rmsprop_update.reference
def _(param, grad, square_avg, buf, grad_avg, step, lr, alpha, eps, weight_decay, momentum, centered):
    t = param.dtype.type
    g = grad + t(weight_decay) * param if weight_decay else grad
    square_avg = t(alpha) * square_avg + t(1 - alpha) * g * g
    if centered:
        grad_avg = grad_avg + t(1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + t(eps)
    else:
        avg = np.sqrt(square_avg) + t(eps)
    if momentum > 0:
        buf = t(momentum) * buf + g / avg
        new = param - t(lr) * buf
    else:
        new = param - t(lr) * (g / avg)
    return tuple(np.asarray(a, dtype=param.dtype) for a in (new, square_avg, buf, grad_avg))


# -- Adagrad ------------------------------------------------------------------------------
adagrad_update = Op(
    "adagrad_update",
    fusion=FusionKind.OPAQUE,
    outputs=("", "sum"),
    positive=(2,),  # sum
    attrs={"lr": 0.01, "lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10},
)


@adagrad_update.check
def _(lr, lr_decay, weight_decay, eps):
    return {
        "lr": _number("lr", lr),
        "lr_decay": _number("lr_decay", lr_decay),
        "weight_decay": _number("weight_decay", weight_decay),
        "eps": _number("eps", eps),
    }


@adagrad_update.shape
def _(param, grad, state_sum, step, **attrs):
    _param_like(param, grad, state_sum)
    return param, state_sum


def adagrad_rate(lr: float, lr_decay: float, step: int) -> float:
    """Adagrad's decayed learning rate at step ``step`` (from 1), in float64 as torch computes it."""
    return lr / (1 + (step - 1) * lr_decay)


@adagrad_update.reference
def _(param, grad, state_sum, step, lr, lr_decay, weight_decay, eps):
    t = param.dtype.type
    g = grad + t(weight_decay) * param if weight_decay else grad
    state_sum = state_sum + g * g
    new = param - t(adagrad_rate(lr, lr_decay, int(step))) * (g / (np.sqrt(state_sum) + t(eps)))
    return new.astype(param.dtype), np.asarray(state_sum, dtype=param.dtype)


# -- gradient clipping --------------------------------------------------------------------
#: added to the total norm before dividing, as ``torch.nn.utils.clip_grad_norm_`` does
CLIP_EPS = 1e-6

clip_grad_norm_coef = Op(
    "clip_grad_norm_coef",
    fusion=FusionKind.OPAQUE,
    attrs={"max_norm": 1.0},
    doc="min(1, max_norm / (||(g0, g1, ...)||_2 + 1e-6)): clip_grad_norm_'s gradient scale",
)
clip_grad_norm_coef.check(lambda max_norm: {"max_norm": _number("max_norm", max_norm)})


@clip_grad_norm_coef.shape
def _(*grads, max_norm):
    if not grads:
        raise ShapeError("expected at least one gradient, got none")
    for g in grads:
        expect_float(g, "gradient")
        if g.dtype != grads[0].dtype:
            raise ShapeError(f"expected gradients of one dtype, got {grads[0]} and {g}")
    return TensorType(grads[0].dtype, ())


@clip_grad_norm_coef.reference
def _(*grads, max_norm):
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
    return np.asarray(clip_coef(total, max_norm), dtype=grads[0].dtype)


def clip_coef(total_norm: float, max_norm: float) -> float:
    """The clipping factor for a global norm ``total_norm`` (NaN stays NaN, as in torch)."""
    coef = max_norm / (total_norm + CLIP_EPS)
    return coef if math.isnan(coef) else min(coef, 1.0)
