"""Collectives on numba-cpu: ``all_reduce`` is a host call into the executable's
communicator (MPI through ``mpi4py``, which is not Numba code); ``sync_batch_norm`` runs the
eval batch-norm kernels (the same formula with given statistics) plus the two per-channel
gradients of the statistics.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from convforge.backends.numba_cpu.kernels import LOWERINGS, lowering
from convforge.ir import scalar


def all_reduce(communicator, x: np.ndarray, y: np.ndarray, op: str) -> None:
    """``y = op over the ranks of x``: copy, then the communicator reduces ``y`` in place."""
    np.copyto(y, x)
    communicator.all_reduce(y, op)


@lowering("all_reduce")
def _(ctx, node, ins, outs):
    k = ctx.host(all_reduce, "all_reduce (host call)")
    ctx.line(f"{k}({ins[0]}, {outs[0]}, {node.attrs['reduce']!r})")


@njit(cache=True)
def running_stats(mean, var, rmean, rvar, count, momentum, new_mean, new_var):
    """``running = (1 - m) * running + m * batch``, the variance made unbiased with ``count``."""
    n = np.float64(count[0])
    for c in range(mean.shape[0]):
        unbiased = var[c] * (n / (n - 1.0)) if n > 1.0 else np.nan
        new_mean[c] = (1.0 - momentum) * rmean[c] + momentum * mean[c]
        new_var[c] = (1.0 - momentum) * rvar[c] + momentum * unbiased


@lowering("sync_batch_norm")
def _(ctx, node, ins, outs):
    LOWERINGS["batch_norm"](ctx, node, ins[:5], outs[:1])
    k = ctx.static(running_stats, "sync_batch_norm (running statistics)")
    ctx.line(f"{k}({', '.join(ins[3:8])}, {scalar.literal(node.attrs['momentum'])}, {outs[1]}, {outs[2]})")


@njit(cache=True)
def stats_gradients(weight, var, gw, gb, eps, gmean, gvar):
    """The gradients of the statistics from those of weight and bias (a loop over channels)."""
    for c in range(weight.shape[0]):
        inv = 1.0 / math.sqrt(np.float64(var[c]) + eps)
        gmean[c] = -weight[c] * inv * gb[c]
        gvar[c] = -0.5 * weight[c] * inv * inv * gw[c]


@lowering("sync_batch_norm_backward")
def _(ctx, node, ins, outs):
    LOWERINGS["batch_norm_eval_backward"](ctx, node, ins, outs[:3])
    k = ctx.static(stats_gradients, "sync_batch_norm_backward (statistics)")
    eps = scalar.literal(node.attrs["eps"])
    ctx.line(f"{k}({ins[2]}, {ins[4]}, {outs[1]}, {outs[2]}, {eps}, {outs[3]}, {outs[4]})")


@lowering("channel_count")
def _(ctx, node, ins, outs):
    channels = node.inputs[0].shape[1]
    ctx.line(f"{outs[0]}[0] = {ins[0]}.size // {channels} if {channels} else 0")
