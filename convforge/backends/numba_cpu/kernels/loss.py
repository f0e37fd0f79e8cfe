"""Loss kernels: cross entropy (integer labels) and MSE, each with its backward.

Labels index the logits, so the runtime checks them against ``[0, C)`` before any kernel
runs (``convforge.backends.base.check_labels``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering


@njit(cache=True)
def cross_entropy(logits, target, mean, out):
    N, C = logits.shape
    total = 0.0
    for n in range(N):
        m = -np.inf
        for c in range(C):
            m = max(m, logits[n, c])
        s = 0.0
        for c in range(C):
            s += math.exp(logits[n, c] - m)
        total += m + math.log(s) - logits[n, target[n]]
    if mean and N > 0:
        total /= N
    out[0] = total


@njit(cache=True, parallel=True)
def cross_entropy_backward(g, logits, target, mean, gx):
    N, C = logits.shape
    factor = g[0] / N if (mean and N > 0) else g[0]
    for n in prange(N):
        m = -np.inf
        for c in range(C):
            m = max(m, logits[n, c])
        s = 0.0
        for c in range(C):
            s += math.exp(logits[n, c] - m)
        for c in range(C):
            p = math.exp(logits[n, c] - m) / s
            if c == target[n]:
                p -= 1.0
            gx[n, c] = p * factor


@njit(cache=True)
def mse_loss(x, t, mean, out):
    total = 0.0
    for i in range(x.shape[0]):
        d = np.float64(x[i]) - t[i]
        total += d * d
    if mean and x.shape[0] > 0:
        total /= x.shape[0]
    out[0] = total


@njit(cache=True, parallel=True)
def mse_loss_backward(g, x, t, mean, gx):
    n = x.shape[0]
    factor = 2.0 * g[0] / (n if (mean and n > 0) else 1)
    for i in prange(n):
        gx[i] = (x[i] - t[i]) * factor


def _mean(node) -> bool:
    return node.attrs["reduction"] == "mean"


@lowering("cross_entropy")
def _(ctx, node, ins, outs):
    k = ctx.static(cross_entropy, "cross_entropy")
    ctx.line(f"{k}({ins[0]}, {ins[1]}, {_mean(node)}, {outs[0]}.reshape(1))")


@lowering("cross_entropy_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(cross_entropy_backward, "cross_entropy_backward")
    ctx.line(f"{k}({ins[0]}.reshape(1), {ins[1]}, {ins[2]}, {_mean(node)}, {outs[0]})")


@lowering("mse_loss")
def _(ctx, node, ins, outs):
    k = ctx.static(mse_loss, "mse_loss")
    ctx.line(f"{k}({ins[0]}.reshape(-1), {ins[1]}.reshape(-1), {_mean(node)}, {outs[0]}.reshape(1))")


@lowering("mse_loss_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(mse_loss_backward, "mse_loss_backward")
    ctx.line(
        f"{k}({ins[0]}.reshape(1), {ins[1]}.reshape(-1), {ins[2]}.reshape(-1), {_mean(node)}, "
        f"{outs[0]}.reshape(-1))"
    )
