"""Linear and matmul kernels: one parallel GEMM kernel for every transpose, and the linear
layer's epilogue (bias, batch-norm affine, activations) as a generated serial pass.

The output's rows or columns are split across threads, each calling single-threaded BLAS
on its block (``c[i0:i1] = op(a)[i0:i1] @ op(b)``; a product with at most
``blas.SKINNY_ROWS`` rows, small-batch inference of a linear layer, streams the weight
through ``blas.skinny_abt`` instead, one row with one ``?gemv``): no partial sums and no temporaries,
and one compiled kernel serves ``linear`` and all four ``matmul`` transposes. The epilogue reads
the [batch, features] output once more while it is still in cache; a generated parallel
kernel per epilogue cost about a second of cold compile each for a few microseconds.
"""

from __future__ import annotations

from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.blas import SKINNY_ROWS, gemm, skinny_abt, vecmat
from convforge.backends.numba_cpu.kernels.epilogue import epilogue_lines
from convforge.ir import scalar


@njit(cache=True)
def matmul_block(a, b, c, ta, tb, t, chunks, by_rows):
    """Block ``t`` of ``chunks`` of c = op(a) @ op(b): a band of c's rows (``by_rows``),
    which reads a band of op(a) and all of op(b), or a band of its columns."""
    M = c.shape[0] if by_rows else c.shape[1]
    step = (M + chunks - 1) // chunks
    i0 = min(M, t * step)
    i1 = min(M, i0 + step)
    if i0 >= i1:
        return
    if by_rows:
        ai = a[:, i0:i1] if ta else a[i0:i1]
        gemm(ta, tb, 1.0, ai, b, 0.0, c[i0:i1])
    else:
        bj = b[i0:i1] if tb else b[:, i0:i1]
        if c.shape[0] == 1 and not ta:
            vecmat(tb, a, bj, c[:, i0:i1])
        elif c.shape[0] <= SKINNY_ROWS and tb and not ta:
            skinny_abt(a, b, c, i0, i1)
        else:
            gemm(ta, tb, 1.0, a, bj, 0.0, c[:, i0:i1])


@njit(cache=True, parallel=True)
def matmul(a, b, c, ta, tb, nt):
    """c = op(a) @ op(b), where op transposes when ``ta`` / ``tb``.

    The threads split c's larger dimension, so each reads its own part of the larger
    operand: a row split of fc1's forward in Deep MNIST (64 x 3136 @ 3136 x 1024) had
    both threads pack all of the weight, and ran at 72 GFLOP/s.
    """
    by_rows = c.shape[0] >= c.shape[1]
    chunks = max(1, min(nt, max(c.shape[0], c.shape[1]) // 16))
    for t in prange(chunks):
        matmul_block(a, b, c, ta, tb, t, chunks, by_rows)


_EPILOGUE = """\
import math

import numpy as np
from numba import njit

from convforge.backends.numba_cpu.kernels.norm import bn_scale_shift


@njit(cache=True)
def kernel(y, b{bn_param}):
{bn_setup}
    for i in range(y.shape[0]):
        for o in range(y.shape[1]):
            v = y[i, o] + b[o]
{bn_load}
{epi}
            y[i, o] = v
"""


def forward_source(acts: list[tuple[str, dict]], has_bn: bool) -> str:
    """Source of the epilogue pass over a linear layer's output ``y`` [batch, features]."""
    ind = " " * 12
    if has_bn:
        bn_param, bn_setup = ", bn", "    bn_s, bn_t = bn_scale_shift(*bn, True)"
    else:
        bn_param, bn_setup = "", "    bn_s = bn_t = np.empty(0, dtype=y.dtype)"
    return _EPILOGUE.format(
        bn_param=bn_param,
        bn_setup=bn_setup,
        bn_load=(ind + "so = bn_s[o]\n" + ind + "to = bn_t[o]") if has_bn else "",
        epi="\n".join(ind + line for line in epilogue_lines(acts, has_bn)),
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
    """Emit the GEMM, then (with a bias, batch norm or activations) the generated epilogue."""
    ctx.line(f"{ctx.static(matmul, 'matmul')}({x}, {w}, {y}, ta=False, tb=True, nt=T)")
    if b is None and bn is None and not acts:
        return
    key = ("linear", tuple((op, tuple(sorted(at.items()))) for op, at in acts), bn is not None)
    pattern = " -> ".join(["linear(epilogue)", *(["batch_norm"] if bn else []), *(op for op, _ in acts)])
    k = ctx.generated(key, forward_source(acts, bn is not None), pattern)
    out = node.outputs[0].type
    bias = b if b is not None else ctx.zeros(out.shape[1], out.dtype, "no_bias")
    bn_arg = f", bn=({', '.join(bn)}, {scalar.literal(bn_eps)})" if bn is not None else ""
    ctx.line(f"{k}({y}, b={bias}{bn_arg})")


@lowering("linear")
def _(ctx, node, ins, outs):
    emit_forward(ctx, node, ins[0], ins[1], ins[2] if len(ins) > 2 else None, None, 0.0, [], outs[0])


@lowering("matmul")
def _(ctx, node, ins, outs):
    k = ctx.static(matmul, "matmul")
    ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
    ctx.line(f"{k}({ins[0]}, {ins[1]}, {outs[0]}, ta={ta}, tb={tb}, nt=T)")
