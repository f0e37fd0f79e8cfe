"""Collectives on numba-cuda: ``all_reduce`` is a host call given the device arrays, which
the communicator reduces through ``__cuda_array_interface__`` (CUDA-aware MPI) or by
staging through the host (``convforge.distributed``); ``sync_batch_norm`` runs the eval
batch-norm kernels plus one thread per channel for the statistics' gradients.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from convforge.backends.lowering import HostCall
from convforge.backends.numba_cuda.kernels import LOWERINGS, lowering
from convforge.backends.numba_cuda.kernels.templates import map_kernel
from convforge.ir import scalar
from convforge.ir.graph import Node


def all_reduce(communicator, x: Any, y: Any, op: str) -> None:
    """``y = op over the ranks of x`` on device arrays: a device-to-device copy, then the
    communicator reduces ``y`` in place."""
    y.copy_to_device(x)
    communicator.all_reduce(y, op)


_ALL_REDUCE = HostCall(all_reduce, "all_reduce (host call)")


def channel_count(communicator, y: Any, count: int) -> None:
    """``y[0] = count`` (known when the program is lowered for a batch size)."""
    y.copy_to_device(np.full(1, count, dtype=y.dtype))


_CHANNEL_COUNT = HostCall(channel_count, "channel_count (host call)")


@lowering("all_reduce")
def _(ctx, node: Node) -> None:
    ctx.launch(_ALL_REDUCE, 1, 1, ctx.flat(node.inputs[0]), ctx.flat(node.outputs[0]), node.attrs["reduce"])


@lowering("channel_count")
def _(ctx, node: Node) -> None:
    x = node.inputs[0]
    shape = ctx.shape(x)
    ctx.launch(_CHANNEL_COUNT, 1, 1, node.outputs[0], ctx.numel(x) // shape[1] if shape[1] else 0)


@lowering("sync_batch_norm")
def _(ctx, node: Node) -> None:
    # y is the eval batch norm with the given statistics
    LOWERINGS["batch_norm"](ctx, _as(node, "batch_norm", node.inputs[:5], node.outputs[:1]))
    mean, var, rmean, rvar, count = node.inputs[3:8]
    _y, new_mean, new_var = node.outputs
    m = scalar.literal(node.attrs["momentum"])
    map_kernel(
        ctx,
        "collective",
        f"sync_batch_norm {{momentum={node.attrs['momentum']!r}}} (running statistics)",
        ["mean", "var", "rmean", "rvar", "count", "new_mean", "new_var"],
        [
            "n = np.float64(count[0])",
            "unbiased = var[i] * (n / (n - 1.0)) if n > 1.0 else math.nan",
            f"new_mean[i] = (1.0 - {m}) * rmean[i] + {m} * mean[i]",
            f"new_var[i] = (1.0 - {m}) * rvar[i] + {m} * unbiased",
        ],
        "mean",
        [mean, var, rmean, rvar, count, new_mean, new_var],
        ctx.numel(mean),
    )


def _as(node: Node, op: str, inputs, outputs) -> Any:
    """``node`` seen as an ``op`` node with these inputs and outputs (to reuse its lowering)."""
    return types.SimpleNamespace(op=op, inputs=list(inputs), outputs=list(outputs), attrs=node.attrs)


@lowering("sync_batch_norm_backward")
def _(ctx, node: Node) -> None:
    # gx, gweight, gbias are the eval batch norm's backward with the given statistics
    LOWERINGS["batch_norm_eval_backward"](
        ctx, _as(node, "batch_norm_eval_backward", node.inputs, node.outputs[:3])
    )
    _gy, _x, weight, _mean, var = node.inputs
    _gx, gw, gb, gmean, gvar = node.outputs
    eps = node.attrs["eps"]
    map_kernel(
        ctx,
        "collective",
        f"sync_batch_norm_backward {{eps={eps!r}}} (statistics)",
        ["weight", "var", "gw", "gb", "gmean", "gvar"],
        [
            f"inv = 1.0 / math.sqrt(np.float64(var[i]) + {scalar.literal(eps)})",
            "gmean[i] = -weight[i] * inv * gb[i]",
            "gvar[i] = -0.5 * weight[i] * inv * inv * gw[i]",
        ],
        "weight",
        [weight, var, gw, gb, gmean, gvar],
        ctx.numel(weight),
    )
