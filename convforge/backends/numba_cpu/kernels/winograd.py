"""Winograd F(2x2, 3x3) transforms for stride-1 3x3 convolutions (Lavin & Gray, 2015).

A 2x2 output tile of a 3x3 convolution is ``A^T [(G g G^T) * (B^T d B)] A`` for the 4x4
input tile ``d`` at the same place: 16 multiplications instead of 36. Over a whole image
the elementwise products become 16 GEMMs, one per position ``e`` of the 4x4 transformed
tile: ``M[e] = U[e] @ V[e]`` with ``U[e]`` [O, C] (the transformed weights, computed once
per call) and ``V[e]`` [C, tiles] (the transformed input of one image). The matrices are

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

written out below as adds, so no 4x4 matrix product runs per tile. The output lands in
the same ``[O, ho*wo]`` rows as the im2col GEMM's, so the generated epilogue (bias,
batch norm, activations, pooling) reads it unchanged.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from convforge.backends.numba_cpu.kernels.blas import gemm


@njit(cache=True)
def weight_transform_rows(w, o0, o1, u):
    """u[e, o, c] = (G w[o, c] G^T)[e // 4, e % 4] for o in [o0, o1)."""
    C = w.shape[1]
    half = w.dtype.type(0.5)
    t = np.empty((4, 3), dtype=w.dtype)
    for o in range(o0, o1):
        for c in range(C):
            g = w[o, c]
            for j in range(3):
                t[0, j] = g[0, j]
                t[1, j] = half * (g[0, j] + g[1, j] + g[2, j])
                t[2, j] = half * (g[0, j] - g[1, j] + g[2, j])
                t[3, j] = g[2, j]
            for i in range(4):
                u[i * 4 + 0, o, c] = t[i, 0]
                u[i * 4 + 1, o, c] = half * (t[i, 0] + t[i, 1] + t[i, 2])
                u[i * 4 + 2, o, c] = half * (t[i, 0] - t[i, 1] + t[i, 2])
                u[i * 4 + 3, o, c] = t[i, 2]


@njit(cache=True)
def transformed_weights(O, C, like):
    """The [16, O, C] buffer of :func:`weight_transform_rows`, allocated outside the
    parallel kernel's body."""
    return np.empty((16, O, C), dtype=like.dtype)


@njit(cache=True)
def tile_counts(ho, wo):
    """(tile rows, tile columns) of 2x2 output tiles covering an ho x wo output."""
    return (ho + 1) // 2, (wo + 1) // 2


#: extra elements per row of V and M: with rows of exactly P elements the 16 planes often
#: lie a multiple of 4 KiB apart, the transforms' 16 store (or load) streams then share one
#: L1 set and the input transform ran 11x slower (VGG's 32x32 layer: 0.47 -> 0.043 ms/image)
ROW_PAD = 8


@njit(cache=True)
def winograd_buffers(C, O, ho, wo, like):
    """Per-chunk scratch: (padded image [C, 2*th+2, 2*tw+2], V [16, C, P], M [16, O, P],
    conv output rows r [O, ho*wo]) for P = th*tw tiles; V and M are views of rows
    ``ROW_PAD`` longer."""
    th, tw = tile_counts(ho, wo)
    P = th * tw
    xp = np.empty((C, 2 * th + 2, 2 * tw + 2), dtype=like.dtype)
    v = np.empty((16, C, P + ROW_PAD), dtype=like.dtype)[:, :, :P]
    m = np.empty((16, O, P + ROW_PAD), dtype=like.dtype)[:, :, :P]
    r = np.empty((O, ho * wo), dtype=like.dtype)
    return xp, v, m, r


@njit(cache=True)
def bt4(a0, a1, a2, a3):
    """B^T applied to a column of 4 values."""
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


@njit(cache=True)
def input_transform(xp, th, tw, v):
    """v[e, c, p] = (B^T d B)[e // 4, e % 4] for the 4x4 tile d of xp[c] at tile p.

    Scalars, not a 4x4 scratch array: through an array LLVM cannot tell the scratch from
    ``v`` and keeps every value in memory (4x slower at VGG's 32x32 layer)."""
    C = xp.shape[0]
    for c in range(C):
        vc = v[:, c]
        for ty in range(th):
            r0 = xp[c, 2 * ty]
            r1 = xp[c, 2 * ty + 1]
            r2 = xp[c, 2 * ty + 2]
            r3 = xp[c, 2 * ty + 3]
            base = ty * tw
            for tx in range(tw):
                x0 = 2 * tx
                p = base + tx
                # B^T d: one transformed column per input column j
                a0, a1, a2, a3 = bt4(r0[x0], r1[x0], r2[x0], r3[x0])
                b0, b1, b2, b3 = bt4(r0[x0 + 1], r1[x0 + 1], r2[x0 + 1], r3[x0 + 1])
                c0, c1, c2, c3 = bt4(r0[x0 + 2], r1[x0 + 2], r2[x0 + 2], r3[x0 + 2])
                d0, d1, d2, d3 = bt4(r0[x0 + 3], r1[x0 + 3], r2[x0 + 3], r3[x0 + 3])
                # (B^T d) B: the same on each row i = (a_i, b_i, c_i, d_i)
                vc[0, p], vc[1, p], vc[2, p], vc[3, p] = bt4(a0, b0, c0, d0)
                vc[4, p], vc[5, p], vc[6, p], vc[7, p] = bt4(a1, b1, c1, d1)
                vc[8, p], vc[9, p], vc[10, p], vc[11, p] = bt4(a2, b2, c2, d2)
                vc[12, p], vc[13, p], vc[14, p], vc[15, p] = bt4(a3, b3, c3, d3)


@njit(cache=True)
def output_transform(m, th, tw, ho, wo, r):
    """r[o, y*wo + x] = (A^T m A) of tile p, cropped to the ho x wo output (ragged edges)."""
    O = m.shape[1]
    for o in range(O):
        for ty in range(th):
            for tx in range(tw):
                p = ty * tw + tx
                # rows of A^T m: s[a, j] for a in {0, 1}
                s00 = m[0, o, p] + m[4, o, p] + m[8, o, p]
                s01 = m[1, o, p] + m[5, o, p] + m[9, o, p]
                s02 = m[2, o, p] + m[6, o, p] + m[10, o, p]
                s03 = m[3, o, p] + m[7, o, p] + m[11, o, p]
                s10 = m[4, o, p] - m[8, o, p] - m[12, o, p]
                s11 = m[5, o, p] - m[9, o, p] - m[13, o, p]
                s12 = m[6, o, p] - m[10, o, p] - m[14, o, p]
                s13 = m[7, o, p] - m[11, o, p] - m[15, o, p]
                y = 2 * ty
                x = 2 * tx
                row = y * wo + x
                r[o, row] = s00 + s01 + s02
                if x + 1 < wo:
                    r[o, row + 1] = s01 - s02 - s03
                if y + 1 < ho:
                    r[o, row + wo] = s10 + s11 + s12
                    if x + 1 < wo:
                        r[o, row + wo + 1] = s11 - s12 - s13


@njit(cache=True)
def winograd_tiles(xp, u, ho, wo, v, m, r):
    """r [O, ho*wo] = the 3x3 stride-1 convolution of the zero-padded image ``xp``
    [C, 2*th+2, 2*tw+2], from the transformed weights ``u`` [16, O, C]."""
    th, tw = tile_counts(ho, wo)
    input_transform(xp, th, tw, v)
    for e in range(16):
        gemm(False, False, 1.0, u[e], v[e], 0.0, m[e])
    output_transform(m, th, tw, ho, wo, r)


# -- the weight gradient: the adjoint of the forward, per position e of the transformed tile --
# y = A^T [U ⊙ V] A with U = G g G^T gives dU[e] = sum over tiles of dM[e] ⊙ V[e], with
# dM = A dy A^T: per image 16 GEMMs dM[e] [O, tiles] @ V[e]^T [tiles, C], summed over the
# batch, then dg = G^T dU G once per (o, c). V is the forward's input transform of x.


@njit(cache=True)
def output_transform_adjoint(gz, rw, th, tw, ho, wo, dm):
    """dm[e, o, p] = (A dy A^T)[e // 4, e % 4] for the 2x2 tile dy of gz[o] (rows of pitch
    rw) at tile p, zero outside the ho x wo output: the adjoint of :func:`output_transform`."""
    zero = gz.dtype.type(0)
    for o in range(gz.shape[0]):
        g = gz[o]
        for ty in range(th):
            y = 2 * ty
            for tx in range(tw):
                x = 2 * tx
                p = ty * tw + tx
                row = y * rw + x
                right = x + 1 < wo
                d00 = g[row]
                d01 = g[row + 1] if right else zero
                d10 = zero
                d11 = zero
                if y + 1 < ho:
                    d10 = g[row + rw]
                    d11 = g[row + rw + 1] if right else zero
                # A dy: rows (d0b, d0b + d1b, d0b - d1b, -d1b); then the same on each row
                t00, t01 = d00, d01
                t10, t11 = d00 + d10, d01 + d11
                t20, t21 = d00 - d10, d01 - d11
                t30, t31 = -d10, -d11
                dm[0, o, p], dm[1, o, p], dm[2, o, p], dm[3, o, p] = t00, t00 + t01, t00 - t01, -t01
                dm[4, o, p], dm[5, o, p], dm[6, o, p], dm[7, o, p] = t10, t10 + t11, t10 - t11, -t11
                dm[8, o, p], dm[9, o, p], dm[10, o, p], dm[11, o, p] = t20, t20 + t21, t20 - t21, -t21
                dm[12, o, p], dm[13, o, p], dm[14, o, p], dm[15, o, p] = t30, t30 + t31, t30 - t31, -t31


@njit(cache=True)
def weight_grad_tiles(xp, gz, rw, ho, wo, v, m, du):
    """du[e] += dM[e] @ V[e]^T for one image: ``xp`` its zero-padded input (as the forward
    pads it), ``gz`` [O, ho*rw] its conv-output gradient."""
    th, tw = tile_counts(ho, wo)
    input_transform(xp, th, tw, v)
    output_transform_adjoint(gz, rw, th, tw, ho, wo, m)
    for e in range(16):
        gemm(False, True, 1.0, m[e], v[e], 1.0, du[e])


@njit(cache=True)
def weight_grad_from_parts(du, gw):
    """gw[o, c] = G^T (sum over chunks of du[:, :, o, c]) G: the adjoint of
    :func:`weight_transform_rows`, in float64."""
    O, C = gw.shape[0], gw.shape[1]
    u = np.empty(16)
    t = np.empty((4, 3))
    for o in range(O):
        for c in range(C):
            for e in range(16):
                acc = 0.0
                for k in range(du.shape[0]):
                    acc += du[k, e, o, c]
                u[e] = acc
            for i in range(4):  # G^T applied to each row of dU
                u0, u1, u2, u3 = u[4 * i], u[4 * i + 1], u[4 * i + 2], u[4 * i + 3]
                t[i, 0] = u0 + 0.5 * (u1 + u2)
                t[i, 1] = 0.5 * (u1 - u2)
                t[i, 2] = 0.5 * (u1 + u2) + u3
            for j in range(3):  # and to each column of the result
                gw[o, c, 0, j] = t[0, j] + 0.5 * (t[1, j] + t[2, j])
                gw[o, c, 1, j] = 0.5 * (t[1, j] - t[2, j])
                gw[o, c, 2, j] = 0.5 * (t[1, j] + t[2, j]) + t[3, j]
