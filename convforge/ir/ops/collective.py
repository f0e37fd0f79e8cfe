"""Collectives between data-parallel ranks (``all_reduce``) and the ops ``nn.SyncBatchNorm``
is built from (``sync_batch_norm`` and its backward).

A collective exchanges data with the other ranks through a :class:`Communicator`, a
run-time object the executable holds (``Executable.communicator``), never an attribute of
the graph: the same compiled program runs on every rank. The reference receives it as the
keyword ``communicator``; the Numba backends lower the op to a host call that receives it.
A program run without one (:data:`LOCAL`, one rank) computes the single-process result:
``all_reduce`` is then the identity, which is what the op table checks.

``all_reduce(x) {reduce="mean"}`` averages ``x`` element by element over the ranks
(``"sum"`` adds); its gradient is the same collective of the incoming gradient. The data-parallel
pass (``passes/data_parallel.py``) feeds it flat buckets of gradients; ``bucket`` numbers
them (``-1``: not a gradient bucket).

``sync_batch_norm(x, weight, bias, mean, var, running_mean, running_var, count)`` normalises
with given statistics (``(x - mean) / sqrt(var + eps) * weight + bias``, per channel as
batch norm), and unlike the eval ``batch_norm`` passes gradients to ``mean`` and ``var``
too, so the statistics can be computed (and all-reduced) in the graph and differentiated
through; like ``batch_norm_train`` it also returns the updated running statistics;
``channel_count(x)`` is the number of values per channel, a tensor (the batch is symbolic).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, expect_same_shape, number
from convforge.ir.ops.norm import _axes, _backward_types, _bcast, _check_bn_input, _check_eps
from convforge.ir.ops.registry import Op

#: the reductions ``all_reduce`` knows, as ``torch.distributed.ReduceOp`` names them
REDUCE_OPS = ("sum", "mean")


class Communicator(Protocol):
    """What a collective op needs at run time: this process's ``rank`` among ``size``
    ranks, and an in-place all-reduce of a host (NumPy) or device (``__cuda_array_interface__``)
    array. ``convforge.distributed`` wraps MPI in it."""

    rank: int
    size: int

    def all_reduce(self, buf: Any, op: str) -> None:
        """Replace ``buf`` by the element-wise ``op`` (``"sum"``/``"mean"``) over all ranks."""


class LocalCommunicator:
    """One rank: every collective is the identity."""

    rank = 0
    size = 1

    def all_reduce(self, buf: Any, op: str) -> None:
        return None

    def __repr__(self) -> str:
        return "<LocalCommunicator rank 0 of 1>"


#: the communicator of a program run by itself
LOCAL = LocalCommunicator()


def _check_reduce(reduce: str, bucket: int) -> dict:
    if reduce not in REDUCE_OPS:
        raise AttributeValueError(f"reduce must be one of {', '.join(REDUCE_OPS)}, got {reduce!r}")
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < -1:
        raise AttributeValueError(f"bucket must be an int >= -1, got {bucket!r}")
    return {"reduce": reduce, "bucket": bucket}


# -- all_reduce -----------------------------------------------------------------------------
all_reduce = Op(
    "all_reduce", attrs={"reduce": "mean", "bucket": -1}, collective=True,
    doc="x reduced element-wise over the ranks (reduce: sum or mean), the same on every rank",
)  # fmt: skip
all_reduce.check(_check_reduce)


@all_reduce.shape
def _(x, reduce, bucket):
    expect_float(x)
    return x


@all_reduce.reference
def _(x, reduce, bucket, communicator: Communicator | None = None):
    out = np.array(x, copy=True, order="C")
    (communicator or LOCAL).all_reduce(out, reduce)
    return out


@all_reduce.vjp
def _(g, node, gy):
    # every rank's output depends on every rank's input with weight 1 (sum) or 1/p (mean)
    return (g.call("all_reduce", gy, reduce=node.attrs["reduce"], bucket=-1),)


# -- sync_batch_norm ------------------------------------------------------------------------
_PARAMS = ("weight", "bias", "mean", "var", "running_mean", "running_var")

sync_batch_norm = Op(
    "sync_batch_norm", outputs=("", "running_mean", "running_var"), attrs={"eps": 1e-5, "momentum": 0.1},
    positive=(4, 6, 7),  # var, running_var, count
    doc="(x - mean) / sqrt(var + eps) * weight + bias, differentiable in mean and var; and the "
    "running statistics updated with them (var made unbiased with count, the values per channel)",
)  # fmt: skip


@sync_batch_norm.check
def _(eps, momentum):
    return {**_check_eps(eps), "momentum": number("momentum", momentum, low=0.0, high=1.0)}


@sync_batch_norm.shape
def _(x, weight, bias, mean, var, running_mean, running_var, count, eps, momentum):
    _check_bn_input(x, weight, bias, mean, var, running_mean, running_var, names=_PARAMS)
    if count.shape != (1,) or count.dtype != x.dtype:
        raise ShapeError(f"expected count of type {x.dtype}[1] (channel_count), got {count}")
    c = weight
    return x, c, c


@sync_batch_norm.reference
def _(x, weight, bias, mean, var, running_mean, running_var, count, eps, momentum):
    nd = x.ndim
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    y = (x - _bcast(mean.astype(np.float64), nd)) * _bcast(invstd * weight, nd) + _bcast(bias, nd)
    n = float(count[0])
    unbiased = var * (n / (n - 1.0)) if n > 1 else np.full_like(var, np.nan)
    new_mean = (1.0 - momentum) * running_mean + momentum * mean.astype(np.float64)
    new_var = (1.0 - momentum) * running_var + momentum * unbiased.astype(np.float64)
    return tuple(a.astype(x.dtype) for a in (y, new_mean, new_var))


@sync_batch_norm.vjp
def _(g, node, gy, *stat_grads):
    if gy is None:
        return (None,) * 8
    x, weight, _bias, mean, var = node.inputs[:5]
    grads = g.call("sync_batch_norm_backward", gy, x, weight, mean, var, eps=node.attrs["eps"])
    return (*grads, None, None, None)


sync_batch_norm_backward = Op(
    "sync_batch_norm_backward", outputs=("", "weight", "bias", "mean", "var"), attrs={"eps": 1e-5},
    positive=(4,),
    doc="gx = gy * weight * invstd, gweight = sum(gy * x_hat), gbias = sum(gy), "
    "gmean = -weight * invstd * gbias, gvar = -weight * invstd^2 * gweight / 2",
)  # fmt: skip
sync_batch_norm_backward.check(_check_eps)


@sync_batch_norm_backward.shape
def _(gy, x, weight, mean, var, eps):
    expect_same_shape(gy, x, "gradient and input")
    gx, gw, gb = _backward_types(gy, x, weight, mean, var, ("weight", "mean", "var"))
    return gx, gw, gb, gw, gw


@sync_batch_norm_backward.reference
def _(gy, x, weight, mean, var, eps):
    axes, nd = _axes(x.ndim), x.ndim
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
    g64 = gy.astype(np.float64)
    xhat = (x - _bcast(mean.astype(np.float64), nd)) * _bcast(invstd, nd)
    gw = (g64 * xhat).sum(axes)
    gb = g64.sum(axes)
    gx = g64 * _bcast(weight * invstd, nd)
    gmean = -weight * invstd * gb
    gvar = -0.5 * weight * invstd * invstd * gw
    return tuple(a.astype(x.dtype) for a in (gx, gw, gb, gmean, gvar))


# -- channel_count --------------------------------------------------------------------------
channel_count = Op(
    "channel_count", doc="[N * H * W ...]: how many values each channel of x has, as a tensor "
    "of x's dtype (the batch is known only at run time); no gradient",
)  # fmt: skip


@channel_count.shape
def _(x):
    expect_float(x)
    if x.rank < 2:
        raise ShapeError(f"expected an input [N, C, ...], got {x}")
    return x.with_shape((1,))


@channel_count.reference
def _(x):
    return np.array([x.size // x.shape[1] if x.shape[1] else 0], dtype=x.dtype)


@channel_count.vjp
def _(g, node, gy):
    return (None,)
