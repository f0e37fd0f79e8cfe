"""``linear`` and ``matmul``: shared-memory tiled GEMM with a fused epilogue.

One block computes a ``TILE x TILE`` tile of ``c = op(a) @ op(b)``: each step stages a tile
of each operand in shared memory (one element per thread), then every thread accumulates
its dot product from shared memory. Blocks stride over tiles, so any size fits the grid.
``linear`` is ``x @ w.T`` followed by the epilogue (bias, batch-norm affine, activations)
before the single store; its gradients are plain ``matmul`` nodes with transpose flags.
"""

from __future__ import annotations

from convforge.backends.numba_cuda.codegen import SCALAR
from convforge.backends.numba_cuda.kernels import lowering
from convforge.backends.numba_cuda.kernels.epilogue import epilogue_lines
from convforge.backends.numba_cuda.kernels.templates import indent
from convforge.ir.graph import Node, Value

_GEMM = """\
TILE = {tile}


@cuda.jit(cache=True)
def kernel({params}, c):
    sa = cuda.shared.array((TILE, TILE), dtype={DT})
    sb = cuda.shared.array((TILE, TILE), dtype={DT})
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    M = c.shape[0]
    N = c.shape[1]
    K = {K}
    tiles_m = (M + TILE - 1) // TILE
    tiles_n = (N + TILE - 1) // TILE
    bm = cuda.blockIdx.y
    while bm < tiles_m:
        bn = cuda.blockIdx.x
        while bn < tiles_n:
            row = bm * TILE + ty
            col = bn * TILE + tx
            acc = {DT}(0.0)
            for k0 in range(0, K, TILE):
                ka = k0 + tx
                if row < M and ka < K:
                    sa[ty, tx] = {A}
                else:
                    sa[ty, tx] = 0
                kb = k0 + ty
                if kb < K and col < N:
                    sb[ty, tx] = {B}
                else:
                    sb[ty, tx] = 0
                cuda.syncthreads()
                for kk in range(TILE):
                    acc += sa[ty, kk] * sb[kk, tx]
                cuda.syncthreads()
            if row < M and col < N:
                v = acc
{epilogue}
                c[row, col] = v
            bn += cuda.gridDim.x
        bm += cuda.gridDim.y
"""


def gemm(
    ctx,
    pattern: str,
    a: Value,
    b: Value,
    ta: bool,
    tb: bool,
    c: Value,
    *,
    bias: Value | None = None,
    bn: list[Value] | None = None,
    bn_eps: float = 0.0,
    acts: list[tuple[str, dict]] = (),
) -> None:
    """Generate and launch ``c = op(a) @ op(b)`` (+ epilogue on output column ``o``)."""
    params = ["a", "bm_", *(["b"] if bias is not None else []), *(["bnw", "bnb", "bnm", "bnv"] if bn else [])]
    lines = ["o = col", *epilogue_lines(bias is not None, bn_eps if bn else None, list(acts))]
    src = _GEMM.format(
        tile=ctx.geometry.tile,
        params=", ".join(params),
        DT=SCALAR[c.dtype],
        K="a.shape[0]" if ta else "a.shape[1]",
        A="a[ka, row]" if ta else "a[row, ka]",
        B="bm_[col, kb]" if tb else "bm_[kb, col]",
        epilogue=indent(lines, 16),
    )
    kernel = ctx.kernel("linear", f"{pattern} ({c.dtype})", src)
    m, n = ctx.shape(c)
    t = ctx.geometry.tile
    cap = ctx.geometry.max_blocks
    grid = (max(1, min((n + t - 1) // t, cap)), max(1, min((m + t - 1) // t, cap)))
    ctx.launch(kernel, grid, (t, t), a, b, *([bias] if bias is not None else []), *(bn or []), c)


@lowering("linear")
def _(ctx, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    gemm(
        ctx,
        "linear" + (" -> bias" if bias is not None else ""),
        x,
        w,
        False,
        True,
        node.outputs[0],
        bias=bias,
    )


@lowering("matmul")
def _(ctx, node: Node) -> None:
    a, b = node.inputs
    ta, tb = node.attrs["transpose_a"], node.attrs["transpose_b"]
    gemm(ctx, f"matmul {{transpose_a={ta}, transpose_b={tb}}}", a, b, ta, tb, node.outputs[0])
