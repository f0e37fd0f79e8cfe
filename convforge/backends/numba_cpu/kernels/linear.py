"""Linear and matmul kernels: batch-split GEMMs (``np.dot`` per thread) with fused epilogues.

Rows of the batch are split across threads, each running a single-threaded sgemm; the
weight gradient (a reduction over the batch) sums one partial product per thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.conv import epilogue_lines

_FORWARD = """\
import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def kernel(x, w, b, bnw, bnb, bnm, bnv, bn_eps, nt, y):
    N = x.shape[0]
    O = w.shape[0]
{bn_prologue}
    chunks = max(1, min(N // 8, nt))
    step = (N + chunks - 1) // chunks
    wt = w.T
    for t in prange(chunks):
        n0 = t * step
        n1 = min(N, n0 + step)
        if n0 < n1:
            r = np.dot(x[n0:n1], wt)
            for i in range(n1 - n0):
                for o in range(O):
                    v = r[i, o] + b[o]
{bn_load}
{epi}
                    y[n0 + i, o] = v
"""

_BN_PROLOGUE = """\
    bn_s = np.empty(O, dtype=x.dtype)
    bn_t = np.empty(O, dtype=x.dtype)
    for o in range(O):
        s = bnw[o] / math.sqrt(bnv[o] + bn_eps)
        bn_s[o] = s
        bn_t[o] = bnb[o] - bnm[o] * s"""


def forward_source(acts: list[tuple[str, dict]], has_bn: bool) -> str:
    epi = epilogue_lines(acts, has_bn)
    ind = " " * 20
    return _FORWARD.format(
        bn_prologue=_BN_PROLOGUE if has_bn else "",
        bn_load=(ind + "so = bn_s[o]\n" + ind + "to = bn_t[o]") if has_bn else "",
        epi="\n".join(ind + line for line in epi),
    )


def emit_forward(
    ctx,
    node,
    x: str,
    w: str,
    b: str | None,
    bn: list[str] | None,
    bn_eps: float,
    acts: list[tuple[str, dict]],
    y: str,
) -> None:
    key = ("linear", tuple((op, tuple(sorted(at.items()))) for op, at in acts), bn is not None)
    pattern = " -> ".join(["linear", *(["batch_norm"] if bn else []), *(op for op, _ in acts)])
    k = ctx.generated(key, forward_source(acts, bn is not None), pattern)
    out = node.outputs[0].type
    bias = b if b is not None else ctx.zeros(out.shape[1], out.dtype)
    bnargs = ", ".join(bn) if bn is not None else ", ".join([bias] * 4)
    ctx.line(f"{k}({x}, {w}, {bias}, {bnargs}, {float(bn_eps)!r}, T, {y})")


@lowering("linear")
def _(ctx, node, ins, outs):
    emit_forward(ctx, node, ins[0], ins[1], ins[2] if len(ins) > 2 else None, None, 0.0, [], outs[0])


@njit(cache=True, parallel=True)
def matmul_nn(a, b, c, nt):
    """c = a @ b, rows of a split across threads."""
    M = a.shape[0]
    chunks = max(1, min(M // 8, nt))
    step = (M + chunks - 1) // chunks
    for t in prange(chunks):
        m0 = t * step
        m1 = min(M, m0 + step)
        if m0 < m1:
            c[m0:m1] = np.dot(a[m0:m1], b)


@njit(cache=True, parallel=True)
def matmul_nt(a, b, c, nt):
    """c = a @ b.T, rows of a split across threads."""
    M = a.shape[0]
    chunks = max(1, min(M // 8, nt))
    step = (M + chunks - 1) // chunks
    bt = b.T
    for t in prange(chunks):
        m0 = t * step
        m1 = min(M, m0 + step)
        if m0 < m1:
            c[m0:m1] = np.dot(a[m0:m1], bt)


@njit(cache=True, parallel=True)
def matmul_tn(a, b, c, nt):
    """c = a.T @ b: the reduction dimension (rows of a and b) split, partials summed."""
    K = a.shape[0]
    chunks = max(1, min(K // 16, nt))
    step = (K + chunks - 1) // chunks
    part = np.zeros((chunks, c.shape[0], c.shape[1]), dtype=c.dtype)
    for t in prange(chunks):
        k0 = t * step
        k1 = min(K, k0 + step)
        if k0 < k1:
            part[t] = np.dot(a[k0:k1].T, b[k0:k1])
    c[:] = part[0]
    for t in range(1, chunks):
        c += part[t]


@njit(cache=True)
def matmul_tt(a, b, c, nt):
    """c = a.T @ b.T (rare: no autodiff rule emits it for a linear layer)."""
    c[:] = np.dot(a.T, b.T)


@lowering("matmul")
def _(ctx, node, ins, outs):
    ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
    fn = {
        (False, False): matmul_nn,
        (False, True): matmul_nt,
        (True, False): matmul_tn,
        (True, True): matmul_tt,
    }[(ta, tb)]
    k = ctx.static(fn, fn.__name__)
    ctx.line(f"{k}({ins[0]}, {ins[1]}, {outs[0]}, T)")
