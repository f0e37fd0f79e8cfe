"""Batch normalisation (eval, train, backward), its folding into a conv or linear layer
(`bn_fold_weight`, `bn_fold_bias`), dropout, local response normalisation, layer norm and
group norm.

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
    "batch_norm", fusion=FusionKind.BROADCAST, attrs={"eps": 1e-5}, positive=(4,),  # running_var
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
    "batch_norm_eval_backward", outputs=("", "weight", "bias"), attrs={"eps": 1e-5}, positive=(4,),
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
    attrs={"eps": 1e-5, "momentum": 0.1}, positive=(4,),  # running_var
    batch_stats=(0,),  # statistics over N and space: more than one value per channel, checked
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
    "batch_norm_backward", outputs=("", "weight", "bias"), attrs={"eps": 1e-5}, positive=(4,),
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


# -- batch-norm folding (fold_batchnorm) -----------------------------------------------------------
def _fold_scale(weight: np.ndarray, running_var: np.ndarray, eps: float) -> np.ndarray:
    return weight / np.sqrt(running_var.astype(np.float64) + eps)


bn_fold_weight = Op(
    "bn_fold_weight", attrs={"eps": 1e-5}, positive=(2,),
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


bn_fold_weight_transposed = Op(
    "bn_fold_weight_transposed", attrs={"eps": 1e-5, "groups": 1}, positive=(2,),
    doc="bn_fold_weight for a conv_transpose2d weight [Cin, Cout/groups, ...]: output channel "
    "g * Cout/groups + j of w[g * Cin/groups + i, j]",
)  # fmt: skip


@bn_fold_weight_transposed.check
def _(eps, groups):
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise AttributeValueError(f"groups must be an int >= 1, got {groups!r}")


@bn_fold_weight_transposed.shape
def _(w, weight, running_var, eps, groups):
    if w.rank < 2 or w.shape[0] % groups:
        raise ShapeError(
            f"groups={groups} must divide the input channels (dim 0) of the transposed weight {w}"
        )
    out_ch = w.shape[1] * groups
    if weight.shape != (out_ch,) or running_var.shape != (out_ch,):
        raise ShapeError(
            f"expected batch-norm parameters of shape [{out_ch}] for transposed weight {w} "
            f"(groups={groups}), got {weight} and {running_var}"
        )
    return w


@bn_fold_weight_transposed.reference
def _(w, weight, running_var, eps, groups):
    s = _fold_scale(weight, running_var, eps)
    # [Cin, Cout/g, *k] as [g, Cin/g, Cout/g, *k]: output channel g * Cout/g + j
    wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    sg = s.reshape(groups, 1, w.shape[1], *(1,) * (w.ndim - 2))
    return (wg * sg).reshape(w.shape).astype(w.dtype)


bn_fold_bias = Op(
    "bn_fold_bias", attrs={"eps": 1e-5}, positive=(3,),
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


# -- local response normalisation (AlexNet's LRN) -----------------------------------------------
_LRN_ATTRS = {"size": None, "alpha": 1e-4, "beta": 0.75, "k": 1.0, "before": None}


def _check_lrn(size, alpha, beta, k, before) -> dict:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise AttributeValueError(f"size must be an int >= 1, got {size!r}")
    if before is None:
        before = size // 2
    if isinstance(before, bool) or not isinstance(before, int) or not 0 <= before < size:
        raise AttributeValueError(f"before must be an int in [0, size={size}), got {before!r}")
    inf = float("inf")
    return {
        "size": size,
        "alpha": _number("alpha", alpha, -inf, inf),
        "beta": _number("beta", beta, -inf, inf),
        "k": _number("k", k, -inf, inf),
        "before": before,
    }


def _lrn_shape(x: TensorType) -> None:
    expect_float(x)
    if x.rank < 3:
        raise ShapeError(f"expected input [N,C,...] of rank >= 3, got rank {x.rank} ({x})")


def _window_sum(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``out[:, c] = sum(v[:, c - lo : c + hi + 1])`` over channels (axis 1), zeros outside."""
    c = v.shape[1]
    # a zero ahead of the padding makes the window sums differences of one cumulative sum
    cum = np.cumsum(np.pad(v, [(0, 0), (lo + 1, hi)] + [(0, 0)] * (v.ndim - 2)), axis=1)
    return cum[:, lo + hi + 1 : lo + hi + 1 + c] - cum[:, :c]


def _lrn_denominator(x: np.ndarray, size: int, alpha: float, k: float, before: int) -> np.ndarray:
    """``k + alpha / size * (sum of x^2 over the channel window)`` in float64."""
    sq = x.astype(np.float64) ** 2
    return k + alpha / size * _window_sum(sq, before, size - 1 - before)


local_response_norm = Op(
    "local_response_norm", attrs=_LRN_ATTRS,
    doc="x / (k + alpha / size * sum of x^2 over channels [c - before, c - before + size))^beta",
)  # fmt: skip
local_response_norm.check(_check_lrn)


@local_response_norm.shape
def _(x, **attrs):
    _lrn_shape(x)
    return x


@local_response_norm.reference
def _(x, size, alpha, beta, k, before):
    d = _lrn_denominator(x, size, alpha, k, before)
    return (x * d**-beta).astype(x.dtype)


@local_response_norm.vjp
def _(g, node, gy):
    return (g.call("local_response_norm_backward", gy, node.inputs[0], **node.attrs),)


local_response_norm_backward = Op(
    "local_response_norm_backward", attrs=_LRN_ATTRS,
    doc="gy * d^-beta - 2 alpha beta / size * x * (sum over the windows holding c of gy x d^(-beta-1))",
)  # fmt: skip
local_response_norm_backward.check(_check_lrn)


@local_response_norm_backward.shape
def _(gy, x, **attrs):
    _lrn_shape(x)
    expect_float(gy, "gradient")
    expect_same_shape(gy, x, "gradient and input")
    return x


@local_response_norm_backward.reference
def _(gy, x, size, alpha, beta, k, before):
    d = _lrn_denominator(x, size, alpha, k, before)
    xd = x.astype(np.float64)
    # channel c is in the window of j for j in [c - (size - 1 - before), c + before]
    t = _window_sum(gy * xd * d ** (-beta - 1), size - 1 - before, before)
    return (gy * d**-beta - 2.0 * alpha * beta / size * xd * t).astype(x.dtype)


# -- layer norm and group norm ------------------------------------------------------------------
# Both normalise "rows" of x with their own mean and biased variance (float64, two passes) and
# apply an optional elementwise affine: layer_norm over the trailing ``normalized_shape`` dims
# (weight and bias of that shape), group_norm over each group of C / num_groups channels of a
# sample (weight and bias per channel). Their backward ops recompute the statistics from x and
# return (gx, gweight, gbias); with no weight the affine is the identity (gweight, gbias are
# still computed, and unused).


def _row_stats(rows: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(x_hat, rstd) of float64 ``rows`` [R, D], normalised along D."""
    mean = rows.mean(axis=1, keepdims=True)
    centred = rows - mean
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + eps)
    return centred * rstd, rstd


def _row_backward(g: np.ndarray, xhat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """The input gradient of ``rows -> x_hat`` for gradient ``g`` of x_hat (all [R, D])."""
    return rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))


def _check_affine(x: TensorType, params: tuple[TensorType, ...], want: tuple, what: str) -> None:
    if len(params) > 2:
        raise ShapeError(
            f"expected at most a weight and a bias after the input, got {len(params)} more inputs"
        )
    expect_same_dtype(x, *params)
    for t, name in zip(params, ("weight", "bias")):
        if tuple(t.shape) != tuple(want):
            raise ShapeError(f"expected {name} of shape {list(want)} ({what} of input {x}), got {t}")


# -- layer_norm --
def _check_layer_norm(normalized_shape, eps) -> dict:
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if (
        not isinstance(normalized_shape, (tuple, list))
        or not normalized_shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in normalized_shape)
    ):
        raise AttributeValueError(f"normalized_shape must be positive ints, got {normalized_shape!r}")
    return {"normalized_shape": tuple(normalized_shape), **_check_eps(eps)}


def _layer_norm_input(x: TensorType, normalized_shape) -> None:
    expect_float(x)
    k = len(normalized_shape)
    if x.rank < k or tuple(x.shape[x.rank - k :]) != tuple(normalized_shape):
        raise ShapeError(
            f"expected input whose trailing dims are normalized_shape {list(normalized_shape)}, got {x}"
        )


def _ln_rows(x: np.ndarray, normalized_shape) -> np.ndarray:
    return x.astype(np.float64).reshape(-1, int(np.prod(normalized_shape)))


layer_norm = Op(
    "layer_norm", attrs={"normalized_shape": None, "eps": 1e-5},
    doc="(x - mean) / sqrt(var + eps) over the trailing normalized_shape dims, * weight + bias (optional)",
)  # fmt: skip
layer_norm.check(_check_layer_norm)


@layer_norm.shape
def _(x, *params, normalized_shape, eps):
    _layer_norm_input(x, normalized_shape)
    _check_affine(x, params, normalized_shape, "normalized_shape")
    return x


@layer_norm.reference
def _(x, *params, normalized_shape, eps):
    xhat, _ = _row_stats(_ln_rows(x, normalized_shape), eps)
    y = xhat * params[0].reshape(1, -1) if params else xhat
    if len(params) > 1:
        y = y + params[1].reshape(1, -1)
    return y.reshape(x.shape).astype(x.dtype)


@layer_norm.vjp
def _(g, node, gy):
    x, *params = node.inputs
    grads = g.call("layer_norm_backward", gy, x, *params[:1], **node.attrs)
    return grads[: len(node.inputs)]


layer_norm_backward = Op(
    "layer_norm_backward", outputs=("", "weight", "bias"), attrs={"normalized_shape": None, "eps": 1e-5},
    doc="gy, x, weight? -> gx, gweight, gbias of layer_norm (statistics recomputed from x)",
)  # fmt: skip
layer_norm_backward.check(_check_layer_norm)


@layer_norm_backward.shape
def _(gy, x, *weight, normalized_shape, eps):
    _layer_norm_input(x, normalized_shape)
    expect_same_shape(gy, x, "gradient and input")
    if len(weight) > 1:
        raise ShapeError(f"expected gy, x and at most a weight, got {2 + len(weight)} inputs")
    p = x.with_shape(tuple(normalized_shape))
    _check_affine(x, (p, *weight), normalized_shape, "normalized_shape")
    return x, p, p


@layer_norm_backward.reference
def _(gy, x, *weight, normalized_shape, eps):
    xhat, rstd = _row_stats(_ln_rows(x, normalized_shape), eps)
    g = _ln_rows(gy, normalized_shape)
    w = weight[0].reshape(1, -1) if weight else 1.0
    gx = _row_backward(g * w, xhat, rstd)
    gw, gb = (g * xhat).sum(axis=0), g.sum(axis=0)
    shape = tuple(normalized_shape)
    return (
        gx.reshape(x.shape).astype(x.dtype),
        gw.reshape(shape).astype(x.dtype),
        gb.reshape(shape).astype(x.dtype),
    )


# -- group_norm --
def _check_group_norm(num_groups, eps) -> dict:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise AttributeValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    return _check_eps(eps)


def _group_norm_input(x: TensorType, num_groups: int) -> int:
    expect_float(x)
    if x.rank < 2:
        raise ShapeError(f"expected input [N, C, ...] of rank >= 2, got {x}")
    channels = x.shape[1]
    if channels % num_groups:
        raise ShapeError(f"num_groups={num_groups} must divide the {channels} channels of input {x}")
    return channels


def _gn_rows(x: np.ndarray, num_groups: int) -> np.ndarray:
    return x.astype(np.float64).reshape(x.shape[0] * num_groups, -1)


def _per_channel_of(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel vector broadcast against ``x`` [N, C, *S]."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


group_norm = Op(
    "group_norm", attrs={"num_groups": None, "eps": 1e-5},
    doc="(x - mean) / sqrt(var + eps) over each group of C / num_groups channels of a sample, "
    "* weight[c] + bias[c] (optional)",
)  # fmt: skip
group_norm.check(_check_group_norm)


@group_norm.shape
def _(x, *params, num_groups, eps):
    channels = _group_norm_input(x, num_groups)
    _check_affine(x, params, (channels,), "one per channel")
    return x


@group_norm.reference
def _(x, *params, num_groups, eps):
    xhat, _ = _row_stats(_gn_rows(x, num_groups), eps)
    y = xhat.reshape(x.shape)
    if params:
        y = y * _per_channel_of(params[0], x)
    if len(params) > 1:
        y = y + _per_channel_of(params[1], x)
    return y.astype(x.dtype)


@group_norm.vjp
def _(g, node, gy):
    x, *params = node.inputs
    grads = g.call("group_norm_backward", gy, x, *params[:1], **node.attrs)
    return grads[: len(node.inputs)]


group_norm_backward = Op(
    "group_norm_backward", outputs=("", "weight", "bias"), attrs={"num_groups": None, "eps": 1e-5},
    doc="gy, x, weight? -> gx, gweight, gbias of group_norm (statistics recomputed from x)",
)  # fmt: skip
group_norm_backward.check(_check_group_norm)


@group_norm_backward.shape
def _(gy, x, *weight, num_groups, eps):
    channels = _group_norm_input(x, num_groups)
    expect_same_shape(gy, x, "gradient and input")
    if len(weight) > 1:
        raise ShapeError(f"expected gy, x and at most a weight, got {2 + len(weight)} inputs")
    _check_affine(x, (gy.with_shape((channels,)), *weight), (channels,), "one per channel")
    p = x.with_shape((channels,))
    return x, p, p


@group_norm_backward.reference
def _(gy, x, *weight, num_groups, eps):
    xhat, rstd = _row_stats(_gn_rows(x, num_groups), eps)
    g = gy.astype(np.float64)
    gw_full = g * (_per_channel_of(weight[0], x) if weight else 1.0)
    gx = _row_backward(gw_full.reshape(xhat.shape), xhat, rstd).reshape(x.shape)
    axes = (0, *range(2, x.ndim))
    gw = (g * xhat.reshape(x.shape)).sum(axis=axes)
    gb = g.sum(axis=axes)
    return gx.astype(x.dtype), gw.astype(x.dtype), gb.astype(x.dtype)
