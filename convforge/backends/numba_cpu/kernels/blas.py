"""GEMM and memcpy from inside ``@njit`` code: BLAS ``?gemm`` called directly, row-major, with beta.

``gemm(ta, tb, alpha, a, b, beta, c)`` computes ``c = alpha * op(a) @ op(b) + beta * c`` on
2-D float32 / float64 arrays whose rows are contiguous (any row stride: slices of a larger
array are passed without a copy). It goes straight to the BLAS that Numba's ``np.dot``
uses (SciPy's, through Numba's ``numba_xxgemm`` helper), so compared with ``np.dot``:

* ``beta = 1`` accumulates into ``c`` (no temporary and no separate add), and the
  transposes are BLAS flags, not copies;
* no shape-check code with formatted error messages is generated in every caller. Numba
  re-optimises a callee's code in each function that links it, so that code cost seconds
  of cold compile per kernel. Shapes are the caller's contract here: every call site
  derives them from the IR's checked types.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

ensure_blas()

_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(
        types.char,  # kind: 's' or 'd'
        types.char,  # transa
        types.char,  # transb
        types.intp,  # m
        types.intp,  # n
        types.intp,  # k
        types.voidptr,  # alpha
        types.voidptr,  # a
        types.intp,  # lda
        types.voidptr,  # b
        types.intp,  # ldb
        types.voidptr,  # beta
        types.voidptr,  # c
        types.intp,  # ldc
    ),
)

_xxgemv = types.ExternalFunction(
    "numba_xxgemv",
    types.intc(
        types.char,  # kind: 's' or 'd'
        types.char,  # trans
        types.intp,  # m
        types.intp,  # n
        types.voidptr,  # alpha
        types.voidptr,  # a
        types.intp,  # lda
        types.voidptr,  # x
        types.voidptr,  # beta
        types.voidptr,  # y
    ),
)

_N = ord("n")
_T = ord("t")


@intrinsic
def _data(typingctx, arr):
    """The data pointer of an array, as ``void*``."""
    sig = types.voidptr(arr)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)

    return sig, codegen


@intrinsic
def _kind(typingctx, arr):
    """BLAS kind of an array's dtype: ``'s'`` for float32, ``'d'`` for float64 (a constant)."""
    if arr.dtype not in (types.float32, types.float64):
        return None
    code = ord("s") if arr.dtype == types.float32 else ord("d")
    sig = types.char(arr)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.char, code)

    return sig, codegen


@intrinsic
def _same_dtype(typingctx, a, b, c):
    """Nothing at run time; fails to compile unless a, b and c share one dtype (``_kind``
    reads c's, and BLAS would read the others' bytes as that type)."""
    if not (a.dtype == b.dtype == c.dtype):
        return None
    sig = types.void(a, b, c)

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_run(typingctx, dst, di, src, si, n):
    """dst[di : di + n] = src[si : si + n] for 1-D arrays of one dtype, as one ``memcpy``.

    The ranges are the caller's contract (no bounds check) and must not overlap. An
    element loop does not vectorise here (LLVM cannot rule out aliasing), and a slice
    assignment brings in the shape-check code this module avoids.
    """
    arrays = (dst, src)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in arrays):
        return None
    if dst.dtype != src.dtype:
        return None
    sig = types.void(dst, di, src, si, n)

    def codegen(context, builder, signature, args):
        dty, _, sty, _, _ = signature.args
        d = context.make_array(dty)(context, builder, args[0])
        s = context.make_array(sty)(context, builder, args[2])
        di_ = context.cast(builder, args[1], signature.args[1], types.intp)
        si_ = context.cast(builder, args[3], signature.args[3], types.intp)
        n_ = context.cast(builder, args[4], signature.args[4], types.intp)
        dptr = builder.gep(d.data, [di_])
        sptr = builder.gep(s.data, [si_])
        cgutils.raw_memcpy(builder, dptr, sptr, n_, context.get_abi_sizeof(context.get_data_type(dty.dtype)))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _rows_contiguous(a, b, c):
    """Whether each operand's rows are contiguous (a column of extent 1 has a stride that
    means nothing: NumPy gives a [k, 1] transpose's copy a row-sized one)."""
    return (
        (a.shape[1] <= 1 or a.strides[1] == a.itemsize)
        and (b.shape[1] <= 1 or b.strides[1] == b.itemsize)
        and (c.shape[1] <= 1 or c.strides[1] == c.itemsize)
    )


@njit(cache=True)
def _ld(a):
    """Leading dimension of a row-major 2-D array (its row stride in elements)."""
    ld = a.strides[0] // a.itemsize
    return max(ld, a.shape[1], 1)


@njit(cache=True)
def gemm(ta, tb, alpha, a, b, beta, c):
    """c = alpha * op(a) @ op(b) + beta * c; ``ta`` / ``tb`` transpose a / b.

    Row-major ``c`` is column-major ``c.T``, so BLAS computes ``op(b).T @ op(a).T`` with
    the operands swapped and the same transpose flags.
    """
    _same_dtype(a, b, c)
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[0] if ta else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty product: c = beta * c (the operands' strides mean nothing here)
        for i in range(m):
            for j in range(n):
                c[i, j] = beta * c[i, j] if beta != 0.0 else 0.0
        return
    if not _rows_contiguous(a, b, c):
        raise ValueError("gemm: operands need contiguous rows")
    consts = np.empty(2, dtype=c.dtype)
    consts[0] = alpha
    consts[1] = beta
    _xxgemm(
        _kind(c),
        _T if tb else _N,
        _T if ta else _N,
        n,
        m,
        k,
        _data(consts),
        _data(b),
        _ld(b),
        _data(a),
        _ld(a),
        _data(consts[1:]),
        _data(c),
        _ld(c),
    )


@njit(cache=True)
def vecmat(tb, a, b, c):
    """c[0] = a[0] @ op(b) for one-row ``a`` and ``c``, through BLAS ``?gemv``.

    A GEMM packs all of ``b`` to multiply it by one row (batch-1 inference of a linear
    layer: AlexNet's fc6 reads 151 MB of weights): ``?gemv`` streams it once. Row-major
    ``b`` [n, k] (``tb``) is column-major [k, n], whose transpose times the row is ``c``.
    """
    _same_dtype(a, b, c)
    n = c.shape[1]
    k = a.shape[1]
    if n == 0:
        return
    if k == 0:
        for j in range(n):
            c[0, j] = 0.0
        return
    if not _rows_contiguous(a, b, c):
        raise ValueError("vecmat: operands need contiguous rows")
    consts = np.empty(2, dtype=c.dtype)
    consts[0] = 1.0
    consts[1] = 0.0
    if tb:
        _xxgemv(_kind(c), _T, k, n, _data(consts), _data(b), _ld(b), _data(a), _data(consts[1:]), _data(c))
    else:
        _xxgemv(_kind(c), _N, n, k, _data(consts), _data(b), _ld(b), _data(a), _data(consts[1:]), _data(c))


#: the most rows of ``a`` for which :func:`skinny_abt` beats ``?gemm`` (AlexNet's fc6 at
#: batch 8: 9.2 against 18.1 ms, batch 4: 5.6 against 16.9; a 16 x 3136 @ 3136 x 1024
#: product lost, 1.24 against 1.06 ms)
SKINNY_ROWS = 8


@njit(cache=True, fastmath={"reassoc", "contract"})
def skinny_abt(a, b, c, j0, j1):
    """c[:, j] = a @ b[j] for j in [j0, j1): a product with few rows (``a`` [m, k], ``b``
    [n, k] row-major, a linear layer's weight) that reads each row of ``b`` from memory
    once, for four output columns at a time.

    ``?gemm`` packs ``b`` and runs its micro-kernel mostly empty at m <= 8; here each
    ``b`` row is dotted with every row of ``a`` (in cache) while it is in L1. ``reassoc``
    lets LLVM vectorise the dot products (several partial sums; the order is fixed per
    machine, so results are deterministic).
    """
    m = c.shape[0]
    k = min(a.shape[1], b.shape[1])
    zero = c.dtype.type(0)
    j = j0
    while j + 4 <= j1:
        b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
        for i in range(m):
            ai = a[i]
            s0 = s1 = s2 = s3 = zero
            for q in range(k):
                v = ai[q]
                s0 += v * b0[q]
                s1 += v * b1[q]
                s2 += v * b2[q]
                s3 += v * b3[q]
            c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s0, s1, s2, s3
        j += 4
    for jj in range(j, j1):
        bj = b[jj]
        for i in range(m):
            ai = a[i]
            s = zero
            for q in range(k):
                s += ai[q] * bj[q]
            c[i, jj] = s
