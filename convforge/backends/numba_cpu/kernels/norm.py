"""Batch norm (eval, train, both backward ops) and dropout kernels.

Tensors are seen as ``[N, C, L]`` (L = H*W, the length, or 1), statistics accumulate in
float64 and threads split the channels. Dropout regenerates its mask from the shared
counter-based hash (``convforge.ir.ops.rng``), compiled here unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.ir.ops import rng

hash_uniform = njit(cache=True)(rng.hash_uniform)


@njit(cache=True, parallel=True)
def batch_norm(x, w, b, mean, var, eps, y):
    N, C, L = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        s = w[c] / math.sqrt(np.float64(var[c]) + eps)
        t = b[c] - mean[c] * s
        for i in range(L):
            y[n, c, i] = x[n, c, i] * s + t


@njit(cache=True, parallel=True)
def batch_norm_train(x, w, b, rmean, rvar, eps, momentum, y, mean, invstd, new_mean, new_var):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        acc = 0.0
        for n in range(N):
            for i in range(L):
                acc += x[n, c, i]
        m = acc / count
        sq = 0.0
        for n in range(N):
            for i in range(L):
                d = x[n, c, i] - m
                sq += d * d
        v = sq / count
        inv = 1.0 / math.sqrt(v + eps)
        mean[c] = m
        invstd[c] = inv
        new_mean[c] = (1.0 - momentum) * rmean[c] + momentum * m
        new_var[c] = (1.0 - momentum) * rvar[c] + momentum * v * (count / (count - 1))
        s = inv * w[c]
        for n in range(N):
            for i in range(L):
                y[n, c, i] = (x[n, c, i] - m) * s + b[c]


@njit(cache=True, parallel=True)
def batch_norm_backward(gy, x, w, mean, invstd, gx, gw, gb):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        m = np.float64(mean[c])
        inv = np.float64(invstd[c])
        sg = 0.0
        sgx = 0.0
        for n in range(N):
            for i in range(L):
                g = np.float64(gy[n, c, i])
                sg += g
                sgx += g * (x[n, c, i] - m) * inv
        gb[c] = sg
        gw[c] = sgx
        k = w[c] * inv / count
        for n in range(N):
            for i in range(L):
                xhat = (x[n, c, i] - m) * inv
                gx[n, c, i] = k * (count * gy[n, c, i] - sg - xhat * sgx)


@njit(cache=True, parallel=True)
def batch_norm_eval_backward(gy, x, w, rmean, rvar, eps, gx, gw, gb):
    N, C, L = x.shape
    for c in prange(C):
        inv = 1.0 / math.sqrt(np.float64(rvar[c]) + eps)
        m = np.float64(rmean[c])
        sg = 0.0
        sgx = 0.0
        k = w[c] * inv
        for n in range(N):
            for i in range(L):
                g = np.float64(gy[n, c, i])
                sg += g
                sgx += g * (x[n, c, i] - m) * inv
                gx[n, c, i] = g * k
        gb[c] = sg
        gw[c] = sgx


@njit(cache=True, parallel=True)
def dropout(x, step, p, seed, y):
    """y = x * keep / (1 - p) with keep = uniform(seed, step, i) >= p (flat arrays)."""
    n = x.shape[0]
    if p >= 1.0:
        for i in prange(n):
            y[i] = 0
        return
    scale = x.dtype.type(1.0 / (1.0 - p))
    for i in prange(n):
        if hash_uniform(seed, step, i) >= p:
            y[i] = x[i] * scale
        else:
            y[i] = 0


def _as3(ctx, value, expr: str) -> str:
    t = value.type
    return f"{expr}.reshape({ctx.dim(t.shape[0])}, {t.shape[1]}, -1)"


@lowering("batch_norm")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm, "batch_norm")
    x = node.inputs[0]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {', '.join(ins[1:])}, {node.attrs['eps']!r}, {_as3(ctx, x, outs[0])})"
    )


@lowering("batch_norm_train")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_train, "batch_norm_train")
    x = node.inputs[0]
    a = node.attrs
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {', '.join(ins[1:])}, {a['eps']!r}, {a['momentum']!r}, "
        f"{_as3(ctx, x, outs[0])}, {', '.join(outs[1:])})"
    )


@lowering("batch_norm_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_backward, "batch_norm_backward")
    x = node.inputs[1]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {_as3(ctx, x, ins[1])}, {', '.join(ins[2:])}, "
        f"{_as3(ctx, x, outs[0])}, {outs[1]}, {outs[2]})"
    )


@lowering("batch_norm_eval_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(batch_norm_eval_backward, "batch_norm_eval_backward")
    x = node.inputs[1]
    ctx.line(
        f"{k}({_as3(ctx, x, ins[0])}, {_as3(ctx, x, ins[1])}, {', '.join(ins[2:])}, "
        f"{node.attrs['eps']!r}, {_as3(ctx, x, outs[0])}, {outs[1]}, {outs[2]})"
    )


@lowering("dropout", "dropout_backward")
def _(ctx, node, ins, outs):
    k = ctx.static(dropout, "dropout")
    a = node.attrs
    ctx.line(
        f"{k}({ins[0]}.reshape(-1), int({ins[1]}), {float(a['p'])!r}, {int(a['seed'])}, "
        f"{outs[0]}.reshape(-1))"
    )
