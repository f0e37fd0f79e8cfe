"""Ops that exist for fusion: the pool that also returns its argmax, and the backward that uses it.

A ``fusion`` node holds a region (a chain of ops) and needs no declaration here; the
backends read the region. In training, ``fuse`` turns ``conv -> act -> max_pool2d`` into a
region ending in ``max_pool2d_argmax``, which writes the argmax tap of every window (one
byte per output) instead of keeping the full pre-pool activation, and rewrites the
backward to ``act_backward(gy, y) -> max_pool2d_backward_argmax(., argmax)``.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops.pool import _MAX_ATTRS, _check_size, _check_window, _crop, _max_argmax, _pooled_hw, _tap
from convforge.ir.ops.registry import FusionKind, Op


def _check_argmax_window(kernel_size, stride, padding, dilation, ceil_mode) -> dict:
    out = _check_window(kernel_size, stride, padding, dilation, ceil_mode)
    kh, kw = out["kernel_size"]
    if kh * kw > 256:
        raise AttributeValueError(f"an argmax byte holds at most 256 window taps, got kernel_size={[kh, kw]}")
    return out


# -- max_pool2d_argmax ------------------------------------------------------------------------
max_pool2d_argmax = Op(
    "max_pool2d_argmax", fusion=FusionKind.POOL, outputs=("", "argmax"), attrs=_MAX_ATTRS,
    doc="max over each window, and the window tap i*kw+j of its first maximum as u8",
)  # fmt: skip
max_pool2d_argmax.check(_check_argmax_window)


@max_pool2d_argmax.shape
def _(x, **attrs):
    y = x.with_shape(x.shape[:2] + _pooled_hw(x, **attrs))
    return y, y.with_dtype("u8")


@max_pool2d_argmax.reference
def _(x, **attrs):
    best, arg, _, _ = _max_argmax(x, **attrs)
    return best, arg.astype(np.uint8)


# -- max_pool2d_backward_argmax -------------------------------------------------------------------
max_pool2d_backward_argmax = Op(
    "max_pool2d_backward_argmax", attrs={**_MAX_ATTRS, "input_size": None},
    doc="gy routed to the window taps stored by max_pool2d_argmax",
)  # fmt: skip


@max_pool2d_backward_argmax.check
def _(input_size, **attrs):
    return {**_check_argmax_window(**attrs), "input_size": _check_size("input_size", input_size)}


@max_pool2d_backward_argmax.shape
def _(gy, argmax, input_size, **attrs):
    if argmax.dtype != "u8":
        raise DTypeError(f"expected argmax of dtype u8, got {argmax}")
    if gy.shape != argmax.shape:
        raise ShapeError(f"expected gradient and argmax of one shape, got {gy} and {argmax}")
    x = gy.with_shape(gy.shape[:2] + tuple(input_size))
    want = x.shape[:2] + _pooled_hw(x, **attrs)
    if tuple(gy.shape) != tuple(want):
        raise ShapeError(f"expected gradient of shape [{','.join(map(str, want))}], got {gy}")
    return x


@max_pool2d_backward_argmax.reference
def _(gy, argmax, kernel_size, stride, padding, dilation, ceil_mode, input_size):
    out_hw = gy.shape[2:]
    need = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, stride, dilation, kernel_size)]
    gxp = np.zeros(
        gy.shape[:2] + (max(need[0], input_size[0] + padding[0]), max(need[1], input_size[1] + padding[1])),
        dtype=gy.dtype,
    )
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            gxp[_tap(gxp, i, j, out_hw, stride, dilation)] += np.where(argmax == i * kw + j, gy, 0)
    return _crop(gxp, gy.shape[:2] + tuple(input_size), padding)


# -- batch-norm folding (fold_batchnorm) -----------------------------------------------------------
def _fold_scale(weight: np.ndarray, running_var: np.ndarray, eps: float) -> np.ndarray:
    return weight / np.sqrt(running_var.astype(np.float64) + eps)


bn_fold_weight = Op(
    "bn_fold_weight", attrs={"eps": 1e-5},
    doc="w * (bn_weight / sqrt(running_var + eps)) per output channel (dim 0 of w)",
)  # fmt: skip


@bn_fold_weight.shape
def _(w, weight, running_var, eps):
    if weight.shape != (w.shape[0],) or running_var.shape != (w.shape[0],):
        raise ShapeError(
            f"expected batch-norm parameters of shape [{w.shape[0]}] for weight {w}, "
            f"got {weight} and {running_var}"
        )
    return w


@bn_fold_weight.reference
def _(w, weight, running_var, eps):
    s = _fold_scale(weight, running_var, eps)
    return (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)


bn_fold_bias = Op(
    "bn_fold_bias", attrs={"eps": 1e-5},
    doc="(bias - running_mean) * bn_weight / sqrt(running_var + eps) + bn_bias; bias optional (0)",
)  # fmt: skip


@bn_fold_bias.shape
def _(weight, bn_bias, running_mean, running_var, *bias, eps):
    for t in (bn_bias, running_mean, running_var, *bias):
        if t.shape != weight.shape:
            raise ShapeError(f"expected per-channel vectors of shape {list(weight.shape)}, got {t}")
    return weight


@bn_fold_bias.reference
def _(weight, bn_bias, running_mean, running_var, *bias, eps):
    s = _fold_scale(weight, running_var, eps)
    b = bias[0] if bias else 0.0
    return ((b - running_mean) * s + bn_bias).astype(weight.dtype)
