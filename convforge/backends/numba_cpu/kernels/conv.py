"""Convolution kernels: im2col + BLAS GEMM per image, epilogue fused onto the GEMM output.

Measured on the 2-core target (LeNet conv1/conv2, batch 64): direct loop nests lose 5-30x
to GEMM; one big GEMM over the whole batch loses to a ``prange`` over images, each thread
running im2col into a cache-sized buffer and a single-threaded sgemm (``blas.gemm``, with
``beta = 1`` where a product accumulates; batching 2-8 images per GEMM did not raise its
rate at LeNet's shapes, measured). The
forward kernel is generated per epilogue (bias, batch-norm affine, activation, pooling);
shapes, strides, padding and dilation are runtime arguments, so a new batch or image size
compiles nothing. ``conv1d`` runs through the same kernels with a height of 1.

Stride 1 (most convolutions) takes the *wide* layout: the image is zero-padded once, and
with a row pitch of ``Wp = wo + (kw-1)*dw`` every im2col row is one contiguous slice of
the padded image (``Wp - wo`` extra columns per output row are computed and ignored).
That turns im2col from a gather of short rows into ``kh*kw*C`` memcpys: LeNet's conv1
forward went from 1.03 ms to 0.32 ms at batch 64 (conv2: 0.78 -> 0.46 ms). The backward
products use the same layout, with the output gradient widened by zero columns.

In training, the kernel of :func:`pool_backward_source` computes all of a conv -> activation
-> max-pool layer's gradients from the pooled gradient and the one-byte argmax, image by
image, with the gradient products of :func:`gradient_products_source`.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu import tuning
from convforge.backends.numba_cpu.codegen import load_keyed
from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.blas import copy_run, gemm
from convforge.backends.numba_cpu.kernels.direct import MAX_WIDTH, micro_kernels_source
from convforge.backends.numba_cpu.kernels.epilogue import epilogue_lines, indent
from convforge.backends.numba_cpu.kernels.pool import window
from convforge.backends.numba_cpu.kernels.winograd import TILES, tile_counts, tile_size, winograd_imports
from convforge.errors import BackendError
from convforge.ir import scalar
from convforge.ir.graph import Node, Value
from convforge.ir.ops.conv import pad_pairs
from convforge.ir.types import TensorType


@njit(cache=True)
def inside_columns(off, sw, W, wo):
    """The range [lo, hi) of output columns ox whose input column ox*sw + off lies in [0, W)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = (W - 1 - off) // sw + 1 if W - 1 - off >= 0 else 0
    hi = min(hi, wo)
    return min(lo, hi), hi


@njit(cache=True)
def im2col(x, n, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col):
    """col[(c*kh+i)*kw+j, oy*wo+ox] = x[n, c0+c, oy*sh+i*dh-ph, ox*sw+j*dw-pw] (0 outside)."""
    H = x.shape[2]
    W = x.shape[3]
    zero = x.dtype.type(0)
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                off = j * dw - pw
                lo, hi = inside_columns(off, sw, W, wo)
                for oy in range(ho):
                    iy = oy * sh + i * dh - ph
                    row = oy * wo
                    if iy < 0 or iy >= H:
                        for ox in range(wo):
                            col[k, row + ox] = zero
                    else:
                        for ox in range(lo):
                            col[k, row + ox] = zero
                        for ox in range(lo, hi):
                            col[k, row + ox] = x[n, c0 + c, iy, ox * sw + off]
                        for ox in range(hi, wo):
                            col[k, row + ox] = zero


@njit(cache=True)
def col2im(col, n, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gx):
    """The adjoint of :func:`im2col`: gx[n, c0+c, iy, ix] += col[k, p] over every tap."""
    H = gx.shape[2]
    W = gx.shape[3]
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                off = j * dw - pw
                lo, hi = inside_columns(off, sw, W, wo)
                for oy in range(ho):
                    iy = oy * sh + i * dh - ph
                    if 0 <= iy < H:
                        row = oy * wo
                        for ox in range(lo, hi):
                            gx[n, c0 + c, iy, ox * sw + off] += col[k, row + ox]


@njit(cache=True)
def wide_pitch(ho, wo, kh, kw, dh, dw):
    """(rows, row pitch) of the zero-padded image for the stride-1 wide layout."""
    return ho + (kh - 1) * dh + 1, wo + (kw - 1) * dw


# Helpers copy with ``copy_run`` or element loops, not slice assignment: Numba generates
# shape-check code with formatted error messages for every array-to-slice assignment, and
# re-optimises that code in each kernel that links the helper (seconds of cold compile).


@njit(cache=True)
def pad_image(x, n, ph, pw, xp):
    """xp[c] = x[n, c] placed at (ph, pw) in zeros; xp is [C, Hp, Wp]."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xp[:] = 0
    for c in range(C):
        for iy in range(H):
            copy_run(xp[c, iy + ph], pw, x[n, c, iy], 0, W)


@njit(cache=True)
def im2col_wide(xp, c0, cg, kh, kw, dh, dw, ho, col):
    """col[(c*kh+i)*kw+j, q] = xp[c0+c].flat[i*dh*Wp + j*dw + q] for q < ho*Wp (stride 1)."""
    Wp = xp.shape[2]
    L = ho * Wp
    for c in range(cg):
        flat = xp[c0 + c].reshape(-1)
        for i in range(kh):
            for j in range(kw):
                s = i * dh * Wp + j * dw
                copy_run(col[(c * kh + i) * kw + j], 0, flat, s, L)


@njit(cache=True)
def col2im_wide(col, c0, cg, kh, kw, dh, dw, ho, xp):
    """The adjoint of :func:`im2col_wide`: xp[c0+c].flat[s_k : s_k + ho*Wp] += col[k]."""
    Wp = xp.shape[2]
    L = ho * Wp
    for c in range(cg):
        flat = xp[c0 + c].reshape(-1)
        for i in range(kh):
            for j in range(kw):
                s = i * dh * Wp + j * dw
                # through views, so the index is a bare loop counter: Numba then skips its
                # negative-index wraparound and LLVM vectorises the loop (2x on LeNet's conv2)
                dst = flat[s : s + L]
                src = col[(c * kh + i) * kw + j]
                for q in range(L):
                    dst[q] += src[q]


@njit(cache=True)
def widen(gy, n, ho, wo, Wp, out):
    """out[o, oy*Wp + ox] = gy[n, o, oy*wo + ox]; the extra columns are zero."""
    out[:] = 0
    for o in range(gy.shape[1]):
        for oy in range(ho):
            copy_run(out[o], oy * Wp, gy[n, o], oy * wo, wo)


# Parallel kernels are a ``prange`` over thread chunks whose body calls plain ``@njit``
# helpers (images t, t + chunks, ... per chunk, scratch allocated once per chunk): Numba's
# parfor lowering cost grows with the body it has to analyse, and a helper is compiled
# (and cached) once for every kernel that calls it.


@njit(cache=True)
def scratch_buffers(C, O, kg, kh, kw, sh, sw, dh, dw, ho, wo, like):
    """Per-chunk scratch of the conv kernels: (col, padded image, out, row pitch rw).

    ``out`` [O, ho*rw] takes a conv output (or output gradient) per image. In the stride-1
    wide layout rw is the padded row pitch Wp (gradients are widened with zero columns);
    otherwise rw is wo and the padded image is unused."""
    wide = sh == 1 and sw == 1
    Hp, Wp = wide_pitch(ho, wo, kh, kw, dh, dw)
    rw = Wp if wide else wo
    col = np.empty((kg, ho * rw), dtype=like.dtype)
    xp = np.empty((C, Hp, Wp) if wide else (1, 1, 1), dtype=like.dtype)
    out = np.empty((O, ho * rw), dtype=like.dtype)
    return col, xp, out, rw


@njit(cache=True)
def direct_buffers(C, O, kh, kw, dh, dw, ho, wo, like):
    """Per-chunk scratch of the direct kernel (``kernels/direct.py``): (padded image
    [C, Hp, Wp], output rows [O, ho*Wp], row pitch Wp) in the stride-1 wide layout."""
    Hp, Wp = wide_pitch(ho, wo, kh, kw, dh, dw)
    xp = np.empty((C, Hp, Wp), dtype=like.dtype)
    r = np.empty((O, ho * Wp), dtype=like.dtype)
    return xp, r, Wp


@njit(cache=True)
def group_columns(x, n, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col):
    """col = im2col of channels [c0, c0 + cg) of image n: slices of the padded image ``xp``
    in the stride-1 wide layout, a gather from ``x`` otherwise."""
    if sh == 1 and sw == 1:
        im2col_wide(xp, c0, cg, kh, kw, dh, dw, ho, col)
    else:
        im2col(x, n, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col)


@njit(cache=True)
def image_columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col):
    """col = im2col of every channel of image n (padded into ``xp`` first when stride is 1)."""
    if sh == 1 and sw == 1:
        pad_image(x, n, ph, pw, xp)
    group_columns(x, n, 0, x.shape[1], kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col)


@njit(cache=True)
def conv_gemm_image(x, n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, r):
    """r = W @ im2col(x[n]) for one image, group by group; wide layout when stride is 1."""
    O = w2.shape[0]
    og = O // groups
    cg = x.shape[1] // groups
    wide = sh == 1 and sw == 1
    if wide:
        pad_image(x, n, ph, pw, xp)
    for g in range(groups):
        group_columns(x, n, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col)
        if groups == 1:
            gemm(False, False, 1.0, w2, col, 0.0, r)
        else:
            gemm(False, False, 1.0, w2[g * og : (g + 1) * og], col, 0.0, r[g * og : (g + 1) * og])


@njit(cache=True)
def input_grad_image(gz, n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gcol, xp, gx):
    """gx[n] = col2im(W^T @ gz) for one image's conv-output gradient ``gz`` [O, ho*rw]
    (row pitch Wp in the stride-1 wide layout, where ``xp`` is the padded scratch)."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    og = w2.shape[0] // groups
    cg = C // groups
    wide = sh == 1 and sw == 1
    if wide:
        xp[:] = 0
    else:
        gx[n] = 0
    for g in range(groups):
        gemm(True, False, 1.0, w2[g * og : (g + 1) * og], gz[g * og : (g + 1) * og], 0.0, gcol)
        if wide:
            col2im_wide(gcol, g * cg, cg, kh, kw, dh, dw, ho, xp)
        else:
            col2im(gcol, n, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gx)
    if wide:
        for c in range(C):
            for iy in range(H):
                copy_run(gx[n, c, iy], 0, xp[c, iy + ph], pw, W)


@njit(cache=True)
def weight_grad_image(x, n, gz, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, part):
    """part += im2col(x[n]) @ gz^T for one image ([K, O], the weight gradient transposed)."""
    C = x.shape[1]
    og = part.shape[1] // groups
    cg = C // groups
    wide = sh == 1 and sw == 1
    if wide:
        pad_image(x, n, ph, pw, xp)
    for g in range(groups):
        group_columns(x, n, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col)
        gemm(False, True, 1.0, col, gz[g * og : (g + 1) * og], 1.0, part[:, g * og : (g + 1) * og])


@njit(cache=True)
def backward_input_chunk(gy, w2, t, chunks, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gx):
    """gx[n] = col2im(W^T @ gy[n]) for images n = t, t + chunks, ..."""
    N, C = gx.shape[0], gx.shape[1]
    O, kg = w2.shape
    gcol, xp, gyw, rw = scratch_buffers(C, O, kg, kh, kw, sh, sw, dh, dw, ho, wo, gx)
    wide = sh == 1 and sw == 1
    for n in range(t, N, chunks):
        if wide:
            widen(gy, n, ho, wo, rw, gyw)
            input_grad_image(gyw, n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gcol, xp, gx)
        else:
            input_grad_image(gy[n], n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gcol, xp, gx)


@njit(cache=True, parallel=True)
def conv2d_backward_input(gy, w, sh, sw, ph, pw, dh, dw, groups, ho, wo, nt, gx):
    """gx[n] = col2im(w^T @ gy[n]) per image; gy is [N, O, Ho*Wo], gx [N, C, H, W]."""
    O, cg, kh, kw = w.shape
    w2 = w.reshape(O, cg * kh * kw)
    chunks = max(1, min(gx.shape[0], nt))
    for t in prange(chunks):
        backward_input_chunk(gy, w2, t, chunks, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, gx)


@njit(cache=True)
def backward_weight_chunk(x, gy, t, chunks, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, part):
    """part = sum of im2col(x[n]) @ gy[n]^T over images n = t, t + chunks, ... ([K, O]: the
    weight gradient transposed, see :func:`sum_parts_t`)."""
    N, C = x.shape[0], x.shape[1]
    kg, O = part.shape
    col, xp, gyw, rw = scratch_buffers(C, O, kg, kh, kw, sh, sw, dh, dw, ho, wo, x)
    wide = sh == 1 and sw == 1
    part[:] = 0
    for n in range(t, N, chunks):
        if wide:
            widen(gy, n, ho, wo, rw, gyw)
            weight_grad_image(x, n, gyw, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, part)
        else:
            weight_grad_image(x, n, gy[n], groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, part)


# -- the input gradient of a stride-1 convolution as a forward convolution -------------------
# gx[c, y, x] = sum_{o,i,j} w[o, c, i, j] * gy[o, y + ph - i*dh, x + pw - j*dw]: with gy zero
# padded by (k-1)*d - p per side and w flipped with its channel axes swapped, that is the
# forward correlation, so the forward algorithms (direct micro-kernels, Winograd) run it.


@njit(cache=True)
def flipped_weights(w):
    """A new [C, O, kh, kw] array wf[c, o, i, j] = w[o, c, kh-1-i, kw-1-j]: the weights of
    the input gradient's conv."""
    O, C, kh, kw = w.shape
    wf = np.empty((C, O, kh, kw), dtype=w.dtype)
    for c in range(C):
        for o in range(O):
            for i in range(kh):
                for j in range(kw):
                    wf[c, o, i, j] = w[o, c, kh - 1 - i, kw - 1 - j]
    return wf


@njit(cache=True)
def place_rows(gz, rw, ho, wo, pt, pl, gp):
    """gp[o, pt + oy, pl + ox] = gz[o, oy*rw + ox] in zeros: one image's output gradient
    (rows of pitch rw) as the padded input of its input gradient's conv."""
    gp[:] = 0
    for o in range(gz.shape[0]):
        for oy in range(ho):
            copy_run(gp[o, pt + oy], pl, gz[o], oy * rw, wo)


@njit(cache=True)
def store_image(r, rw, n, gx):
    """gx[n, c, y, :] = r[c, y*rw : y*rw + W]: conv output rows of pitch rw into image n."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    for c in range(C):
        for y in range(H):
            copy_run(gx[n, c, y], 0, r[c], y * rw, W)


# The weight gradient is accumulated transposed, ``im2col(x) @ gy^T`` ([K, O]): the same
# product, but a GEMM shape OpenBLAS runs faster (LeNet's conv2, per image: 79 instead of
# 51 GFLOP/s single-threaded).


@njit(cache=True)
def sum_parts_t(part, out):
    """out = (part[0] + part[1] + ...)^T: the per-chunk partial sums of a [K, O] reduction."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            acc = part[0, j, i]
            for t in range(1, part.shape[0]):
                acc += part[t, j, i]
            out[i, j] = acc


@njit(cache=True)
def new_parts(chunks, rows, cols, like):
    """[chunks, rows, cols] partial sums, allocated outside the parallel kernel's body."""
    return np.empty((chunks, rows, cols), dtype=like.dtype)


@njit(cache=True, parallel=True)
def conv2d_backward_weight(x, gy, sh, sw, ph, pw, dh, dw, groups, ho, wo, nt, gw):
    """gw = sum_n gy[n] @ im2col(x[n])^T; one partial sum per thread, then reduced."""
    O, cg, kh, kw = gw.shape
    kg = cg * kh * kw
    chunks = max(1, min(x.shape[0], nt))
    part = new_parts(chunks, kg, O, gw)
    for t in prange(chunks):
        backward_weight_chunk(x, gy, t, chunks, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, part[t])
    sum_parts_t(part, gw.reshape(O, kg))


# -- the generated backward of a conv region (training) -------------------------------------
# A region's head rebuilds each image's conv-output gradient in scratch (``gz``, row pitch
# ``rw``: the max pool's scatter to the argmax here, the batch norm's affine in
# ``norm.norm_backward_source``), and the conv's gradient products run on it while it is in
# cache: the weight gradient as an im2col GEMM or in Winograd tiles, the input gradient as
# the im2col GEMM's transpose, or placed in the padded layout of the stride-1 conv that
# computes it (``gradient_as_conv``) and run on the Winograd tiles or the direct
# micro-kernels. The algorithms are runtime arguments (the scratch of one not taken is
# empty): every variant compiled separately cost 8-11 s of cold compile each; only the
# direct micro-kernels, written out per kernel width, make a source of their own.
#: the input gradient's algorithm as the kernels' runtime argument: its index here
INPUT_GRAD_ALGORITHMS = ("im2col", "winograd", "direct")

# Lines marked W| are the Winograd products', written in only where one of them runs
# Winograd (N| lines stand in for them elsewhere): the variant's code in a kernel that never
# takes it made LeNet-5's cold compile 20.6 -> 35.7 s (the whole training program)
_PRODUCTS = """\
from convforge.backends.numba_cpu.kernels.conv import (
    direct_buffers, flipped_weights, input_grad_image, new_parts, pad_image, place_rows,
    scratch_buffers, store_image, sum_parts_t, weight_grad_image,
)
{winograd}

{micro}@njit(cache=True)
def gradient_group(x, geometry, grad, mine):
    # images per Winograd GEMM, of the `mine` a thread runs (1 without Winograd)
N|    return 1
W|    group = mine
W|    if grad[0]:
W|        group = min(group, group_size(geometry[9], geometry[10], mine))
W|    if grad[1] == 1:
W|        group = min(group, group_size(x.shape[2], x.shape[3], mine))
W|    return group if grad[0] or grad[1] == 1 else 1


@njit(cache=True)
def gradient_scratch(x, O, kg, geometry, grad, group):
    # one thread's: (im2col buffers with gz and rw), the input gradient's direct buffers,
    # the weight and input gradients' Winograd buffers (for groups of `group` images);
    # those of an algorithm not taken are empty
    kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo = geometry
    wino_w, alg_in = grad[0], grad[1]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    dg = alg_in == 2
W|    wg = alg_in == 1
    return (
        scratch_buffers(C, O, kg, kh, kw, sh, sw, dh, dw, ho, wo, x),
        direct_buffers(O if dg else 0, C if dg else 0, kh, kw, dh, dw, H, W, x),
W|        winograd_buffers(C if wino_w else 0, O if wino_w else 0, ho, wo, group, x),
W|        winograd_buffers(O if wg else 0, C if wg else 0, H, W, group, x),
    )


@njit(cache=True)
def image_gradients(x, n, j, k, chunks, w2, wf, u, geometry, grad, want_gx, scratch, part, gx):
    # image n's weight gradient into part, its input gradient into gx, from scratch's gz.
    # On Winograd, n is image j of a group of k (images n - j * chunks, ..., spaced
    # `chunks` apart) whose GEMMs run with its last image
    kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo = geometry
    wino_w, alg_in, pt, pl = grad
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    col, xp, gz, rw = scratch[0]
    dgp, dr, drg = scratch[1]
W|    wxp, wv, wm, _ = scratch[2]
W|    igp, iv, im, ir = scratch[3]
W|    if wino_w:
W|        pad_image(x, n, ph, pw, wxp)
W|        image_tiles(wxp, ho, wo, j, wv)
W|        image_adjoint(gz, rw, ho, wo, j, wm)
W|        if j == k - 1:
W|            group_weight_products(wm, wv, k, ho, wo, part.reshape(WINOGRAD_T, gz.shape[0], C))
W|    else:
W|        weight_grad_image(x, n, gz, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, part)
N|    weight_grad_image(x, n, gz, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, part)
    if not want_gx:
        return
    if alg_in == 0:
        input_grad_image(gz, n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, gx)
W|    elif alg_in == 1:
W|        place_rows(gz, rw, ho, wo, pt, pl, igp)
W|        image_tiles(igp, H, W, j, iv)
W|        if j == k - 1:
W|            group_products(u, iv, k, H, W, im)
W|            for i in range(k):
W|                image_rows(im, i, H, W, ir)
W|                store_image(ir, W, n - (j - i) * chunks, gx)
{direct}

W|@njit(cache=True, parallel=True)
N|@njit(cache=True)
def gradient_weights(w, x, grad, nt):
    # the input gradient's weights: flipped (im2col reads w itself), and transformed when it
    # runs on Winograd tiles
    alg_in = grad[1]
    wf = flipped_weights(w) if alg_in != 0 else np.empty((0, 0, 0, 0), dtype=w.dtype)
{check}N|    if grad[0] or alg_in == 1:
N|        raise ValueError("Winograd gradient products asked of a kernel compiled without them")
N|    u = np.empty((0, 0, 0), dtype=w.dtype)
W|    u = transformed_weights(x.shape[1] if alg_in == 1 else 0, w.shape[0], x)
W|    chunks = max(1, min(u.shape[1], nt))
W|    step = (u.shape[1] + chunks - 1) // chunks
W|    for t in prange(chunks):
W|        weight_transform_rows(wf, t * step, min(u.shape[1], (t + 1) * step), u)
    return wf, u


@njit(cache=True)
def weight_grad_parts(chunks, w, wino_w):
    # one thread's weight gradient each: [kg, O] in im2col's layout, [T * O, C] in Winograd's
    O, cg, kh, kw = w.shape
W|    if wino_w:
W|        return new_parts(chunks, WINOGRAD_T * O, cg, w)
    return new_parts(chunks, cg * kh * kw, O, w)


@njit(cache=True)
def weight_grad_sum(part, wino_w, gw):
    O, cg, kh, kw = gw.shape
W|    if wino_w:
W|        weight_grad_from_parts(part.reshape(part.shape[0], WINOGRAD_T, O, cg), gw)
W|        return
    sum_parts_t(part, gw.reshape(O, cg * kh * kw))
"""

_DIRECT = """\
    elif alg_in == 2:
        place_rows(gz, rw, ho, wo, pt, pl, dgp)
        direct_rows(dgp, wf, 0, C, kh, dh, dw, H, dr)
        store_image(dr, drg, n, gx)
"""


def gradient_products_source(kw: int = 0, r: int = 0) -> str:
    """The helpers a generated conv-region backward calls: ``gradient_group``,
    ``gradient_scratch``, ``image_gradients``, ``gradient_weights``, ``weight_grad_parts``,
    ``weight_grad_sum``.

    Their ``grad`` argument is (weight gradient on Winograd, input gradient algorithm: the
    index in ``INPUT_GRAD_ALGORITHMS``, and the top and left padding of the input
    gradient's conv, :func:`gradient_as_conv`). With ``r`` the Winograd products are written
    in, on the variant for r x r kernels (``winograd.TILES``); with ``kw`` the direct
    micro-kernels for that kernel width, which the input gradient may then take.
    """
    fields = {"micro": "", "direct": "", "check": "", "winograd": winograd_imports(r) if r else ""}
    if kw:
        fields["micro"] = micro_kernels_source(kw) + "\n\n"
        fields["direct"] = _DIRECT
        fields["check"] = "    if alg_in == 2:\n        check_width(wf)\n"
    drop = "N|" if r else "W|"
    lines = _PRODUCTS.format(**fields).splitlines()
    kept = (line[2:] if line[:2] in ("W|", "N|") else line for line in lines if line[:2] != drop)
    return "\n".join(kept) + "\n"


_POOL_BACKWARD = """\
import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels.pool import scatter_pooled_grad
{products}

@njit(cache=True)
def chunk(gp, yp, am, act, pool, x, w2, wf, u, geometry, grad, t, chunks, want_gx, part_w, part_b, gx):
    kind, p, q = act
    pkh, pkw, psh, psw, pph, ppw = pool
    ho, wo = geometry[9], geometry[10]
    mine = (x.shape[0] - t + chunks - 1) // chunks  # images t, t + chunks, ...
    group = gradient_group(x, geometry, grad, mine)
    scratch = gradient_scratch(x, gp.shape[1], w2.shape[1], geometry, grad, group)
    gz, rw = scratch[0][2], scratch[0][3]
    part_w[:] = 0
    part_b[:] = 0
    for i in range(mine):
        n = t + i * chunks
        scatter_pooled_grad(gp, yp, am, n, kind, p, q, pkh, pkw, psh, psw, pph, ppw, ho, wo, rw, gz, part_b)
        j = i % group
        k = min(group, mine - i + j)
        image_gradients(x, n, j, k, chunks, w2, wf, u, geometry, grad, want_gx, scratch, part_w, gx)


@njit(cache=True, parallel=True)
def kernel(gp, yp, am, act, pool, x, w, conv, grad, nt, gw, gb, gx):
    O, cg, kh, kw = w.shape
    N = x.shape[0]
    w2 = w.reshape(O, cg * kh * kw)
    wf, u = gradient_weights(w, x, grad, nt)
    chunks = max(1, min(N, nt))
    part_w = weight_grad_parts(chunks, w, grad[0])
    part_b = new_parts(chunks, 1, O, gw)
    want_gx = gx.shape[0] == N
    for t in prange(chunks):
        chunk(
            gp, yp, am, act, pool, x, w2, wf, u, (kh, kw) + conv, grad, t, chunks, want_gx,
            part_w[t], part_b[t, 0], gx,
        )
    weight_grad_sum(part_w, grad[0], gw)
    if gb.shape[0] == O:
        sum_parts_t(part_b, gb.reshape(O, 1))
"""


def pool_backward_source(kw: int = 0, r: int = 0) -> str:
    """Source of the backward of conv2d -> activation -> max_pool2d_argmax from the pooled
    gradient: ``kernel(gp, yp, am, act, pool, x, w, conv, grad, nt, gw, gb, gx)``.

    ``act`` is (kind, p, q) as in ``activation.act_grad``, ``pool`` the window (kh, kw, sh,
    sw, ph, pw), ``conv`` (sh, sw, ph, pw, dh, dw, groups, ho, wo) and ``grad``, ``kw`` and
    ``r`` as in :func:`gradient_products_source`. gw and gb (when ``gb`` has O entries) are
    summed over the batch; gx is written when it has N images (the first conv layer, whose
    input gradient nobody reads, passes none).
    """
    return _POOL_BACKWARD.format(products=gradient_products_source(kw, r))


# -- the generated forward kernel ---------------------------------------------------------
_FORWARD = """\
@njit(cache=True)
def store(r, rw, n, o0, o1, b, bn_s, bn_t, ho, wo,
          pkh, pkw, psh, psw, pph, ppw, hp, wp, y, am, want_arg):
{store}


@njit(cache=True, parallel=True)
def kernel(x, w, b, {bn_param}conv, pool, nt, y, am):
    sh, sw, ph, pw, dh, dw, groups, ho, wo = conv
    pkh, pkw, psh, psw, pph, ppw, hp, wp = pool
    N = x.shape[0]
    O = w.shape[0]
    w2 = w.reshape(O, w.shape[1] * w.shape[2] * w.shape[3])
    kh = w.shape[2]
    kw = w.shape[3]
    want_arg = am.shape[0] == N  # a real argmax buffer (training), not the empty stand-in
{bn_setup}
    chunks = max(1, min(N, nt))
{conv_loop}
"""

_IM2COL_LOOP = """\
    for t in prange(chunks):
        col, xp, r, rw = scratch_buffers(x.shape[1], O, w2.shape[1], kh, kw, sh, sw, dh, dw, ho, wo, x)
        for n in range(t, N, chunks):
            conv_gemm_image(x, n, w2, groups, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, col, xp, r)
            store(r, rw, n, 0, O, b, bn_s, bn_t, ho, wo,
                  pkh, pkw, psh, psw, pph, ppw, hp, wp, y, am, want_arg)"""

# the weights are transformed once per call, output rows split over the threads; then
# each thread's images are padded and transformed a group at a time (small images share
# one set of 16 or 36 GEMMs), and each image's rows r come back for the epilogue
_WINOGRAD_LOOP = """\
    u = transformed_weights(O, x.shape[1], x)
    wchunks = max(1, min(O, nt))
    wstep = (O + wchunks - 1) // wchunks
    for t in prange(wchunks):
        weight_transform_rows(w, t * wstep, min(O, (t + 1) * wstep), u)
    for t in prange(chunks):
        mine = (N - t + chunks - 1) // chunks  # images t, t + chunks, ...
        group = group_size(ho, wo, mine)
        xp, v, m, r = winograd_buffers(x.shape[1], O, ho, wo, group, x)
        for g0 in range(0, mine, group):
            k = min(group, mine - g0)
            for j in range(k):
                pad_image(x, t + (g0 + j) * chunks, ph, pw, xp)
                image_tiles(xp, ho, wo, j, v)
            group_products(u, v, k, ho, wo, m)
            for j in range(k):
                image_rows(m, j, ho, wo, r)
                store(r, wo, t + (g0 + j) * chunks, 0, O, b, bn_s, bn_t, ho, wo,
                      pkh, pkw, psh, psw, pph, ppw, hp, wp, y, am, want_arg)"""

# images split over the threads; with fewer images than threads the output channels of
# each image are split too (blocks of whole micro-kernels), each task padding its image
_DIRECT_LOOP = """\
    check_width(w)
    per_image = 1 if N >= nt or N == 0 else (nt + N - 1) // N
    blocks, per = channel_blocks(O, per_image)
    tasks = N * blocks
    chunks = max(1, min(tasks, nt))
    for t in prange(chunks):
        xp, r, rw = direct_buffers(x.shape[1], O, kh, kw, dh, dw, ho, wo, x)
        last = -1
        for task in range(t, tasks, chunks):
            n = task // blocks
            o0 = (task % blocks) * per
            o1 = min(O, o0 + per)
            if n != last:
                pad_image(x, n, ph, pw, xp)
                last = n
            direct_rows(xp, w, o0, o1, kh, dh, dw, ho, r)
            store(r, rw, n, o0, o1, b, bn_s, bn_t, ho, wo,
                  pkh, pkw, psh, psw, pph, ppw, hp, wp, y, am, want_arg)"""

# fewer images than threads (batch 1): each image's columns are built once, then the
# threads split the output channels of its GEMM and epilogue (groups == 1 only)
_CHANNEL_SPLIT_LOOP = """\
    col, xp, r, rw = scratch_buffers(x.shape[1], O, w2.shape[1], kh, kw, sh, sw, dh, dw, ho, wo, x)
    ochunks = max(1, min(O, nt))
    ostep = (O + ochunks - 1) // ochunks
    for n in range(N):
        image_columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, xp, col)
        for t in prange(ochunks):
            o0 = t * ostep
            o1 = min(O, o0 + ostep)
            if o0 < o1:
                gemm(False, False, 1.0, w2[o0:o1], col, 0.0, r[o0:o1])
                store(r, rw, n, o0, o1, b, bn_s, bn_t, ho, wo,
                      pkh, pkw, psh, psw, pph, ppw, hp, wp, y, am, want_arg)"""

_STORE_PLAIN = """\
    for o in range(o0, o1):
        bo = b[o]
{bn_load}
        for oy in range(ho):
            for ox in range(wo):
                v = r[o, oy * rw + ox] + bo
{epi}
                y[n, o, oy * wo + ox] = v"""

_STORE_MAX = """\
    for o in range(o0, o1):
        bo = b[o]
{bn_load}
        # the epilogue runs over whole GEMM rows (a vectorisable loop), then the pool reads them
        for q in range(ho * rw):
            v = r[o, q] + bo
{epi_row}
            r[o, q] = v
        max_pool_plane(r[o], rw, ho, wo, pkh, pkw, psh, psw, pph, ppw, hp, wp, y[n, o], am, n, o, want_arg)"""

_STORE_AVG = """\
    for o in range(o0, o1):
        bo = b[o]
{bn_load}
        for q in range(ho * rw):
            v = r[o, q] + bo
{epi_row}
            r[o, q] = v
        avg_pool_plane(r[o], rw, pkh, pkw, psh, psw, hp, wp, y[n, o])"""


def forward_source(
    acts: list[tuple[str, dict]],
    has_bn: bool,
    pool: str,
    algorithm: str = "im2col",
    split: str = "images",
    kw: int = 0,
) -> str:
    """Source of the fused conv kernel for one epilogue: ``pool`` is none|max|avg,
    ``algorithm`` im2col|winograd|direct (see :func:`conv_algorithm`; ``direct`` is written
    out for the kernel width ``kw``, ``winograd`` runs the variant for a ``kw`` x ``kw``
    kernel); ``split`` says what the im2col threads share out:
    ``images`` (a chunk of the batch each) or ``channels`` (one image at a time, each thread
    a block of output channels: for fewer images than threads; the direct kernel does both).

    The max-pool variant writes the argmax only when ``am`` is a real buffer (training), so
    inference and training share one compiled kernel.
    """
    epi = epilogue_lines(acts, has_bn)
    bn_load = indent(["so = bn_s[o]", "to = bn_t[o]"] if has_bn else [], 8)
    if pool == "none":
        store = _STORE_PLAIN.format(bn_load=bn_load, epi=indent(epi, 16))
    elif pool == "max":
        store = _STORE_MAX.format(bn_load=bn_load, epi_row=indent(epi, 12))
    else:
        store = _STORE_AVG.format(bn_load=bn_load, epi_row=indent(epi, 12))
    if has_bn:
        bn_param, bn_setup = "bn, ", "    bn_s, bn_t = bn_scale_shift(*bn, True)"
    else:
        bn_param, bn_setup = "", "    bn_s = bn_t = np.empty(0, dtype=y.dtype)"
    micro = ""
    if algorithm == "direct":
        loop = _DIRECT_LOOP
        micro = micro_kernels_source(kw) + "\n\n"
    elif split == "channels":
        loop = _CHANNEL_SPLIT_LOOP
    else:
        loop = _WINOGRAD_LOOP if algorithm == "winograd" else _IM2COL_LOOP
    body = micro + _FORWARD.format(store=store, bn_param=bn_param, bn_setup=bn_setup, conv_loop=loop)
    header = (
        "import math\n\nimport numpy as np\nfrom numba import njit, prange\n\n"
        "from convforge.backends.numba_cpu.kernels.blas import gemm\n"
        "from convforge.backends.numba_cpu.kernels.conv import (\n"
        "    conv_gemm_image, direct_buffers, image_columns, pad_image, scratch_buffers,\n)\n"
        "from convforge.backends.numba_cpu.kernels.direct import channel_blocks\n"
        "from convforge.backends.numba_cpu.kernels.norm import bn_scale_shift\n"
        "from convforge.backends.numba_cpu.kernels.pool import avg_pool_plane, max_pool_plane\n"
    )
    if algorithm == "winograd":
        header += winograd_imports(kw)
    return header + "\n\n" + body


def forward_key(acts: list[tuple[str, dict]], has_bn: bool, pool: str, variant: str) -> tuple:
    """The kernel-cache key of the fused forward kernel :func:`forward_source` makes
    (``variant``: the algorithm, ``im2col-channels`` for the channel split, or
    ``direct-k<kw>`` for the direct kernel of width kw)."""
    return ("conv", tuple((op, tuple(sorted(at.items()))) for op, at in acts), has_bn, pool, variant)


# -- algorithm selection --------------------------------------------------------------------
#: environment override of the cost model: ``auto`` (default), ``im2col``, ``winograd`` or
#: ``direct`` (applied where the convolution is eligible, im2col elsewhere)
ALGO_ENV = "CONVFORGE_CONV_ALGO"
ALGORITHMS = ("auto", "im2col", "winograd", "direct")
#: the cost model's Winograd thresholds, from single-thread per-image timings (docs/performance.md):
#: with few channels the transforms (about 32 adds per input tile and channel, 24 per output
#: tile) outweigh the 2.25x fewer multiplications (3 -> 32 at 32x32: 3x slower), and the 16
#: GEMMs [O, C] @ [C, tiles] must be big enough for BLAS: it won from O*C*tiles = 65536 on
#: (16 -> 16 at 32x32: 1.5x, 128 -> 128 at 4x4: 2.3x) and lost below (16 -> 16 at 8x8: 0.6x)
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_MACS = 65536
#: the cost model's direct-convolution thresholds (batch 64, 2 threads, docs/performance.md):
#: up to 8 input channels the im2col GEMM is thin (1 -> 6 5x5: direct 0.12 ms, im2col 0.42;
#: 3 -> 32 3x3 at 32x32: 0.66 and 1.33; 6 -> 16 5x5 at 14x14: 0.44 and 0.61). A 3x3 kernel
#: on a plane of 32x32 outputs keeps the micro-kernel's loops long, so direct beats im2col
#: there (32 -> 32: 8.1 against 11.3 ms), but not the grouped Winograd (6.1 ms; 64 -> 64
#: at 16x16: direct 7.8, Winograd 4.9): direct takes such planes only where the cost model
#: rejects Winograd (fewer than 16 channels)
DIRECT_MAX_CHANNELS = 8
DIRECT_MIN_PLANE = 1024
#: with fewer images than threads both split the output channels; from 16x16 outputs on
#: direct's long rows win (batch 1, 2 threads: 32 -> 32 at 32x32 0.13 against im2col's
#: 0.35 ms, 64 -> 64 at 16x16 0.14 against 0.27; 5x5 64 -> 192 at 27x27 3.7 against 3.9),
#: on 13x13 and smaller im2col's GEMMs do (192 -> 384: 2.8 against 1.9; 128 -> 128 at 8x8:
#: 0.30 against 0.21)
DIRECT_SMALL_BATCH_MIN_PLANE = 256
#: kernel size -> the fewest tiles on which the weight gradient takes Winograd (its GEMMs
#: contract over the tiles of a plane). 3x3: from 8x8 tiles (16x16 outputs) on they won
#: (batch 64, the fused batch-norm backward: 64 -> 64 at 16x16, 18.2 against 19.4 ms), at
#: 4x4 tiles they lost (64 -> 128 at 8x8: 13.3 against 12.4). 5x5 saves more (2.78x):
#: 7x7 tiles won (Deep MNIST's 32 -> 64 at 14x14, the fused max-pool backward, weight
#: gradient alone: 12.6 against 15.2 ms)
WINOGRAD_WEIGHT_MIN_TILES = {3: 64, 5: 49}


def conv_algorithm(conv: Node, tune: bool = False, gradient: bool = False) -> tuple[str, str]:
    """(algorithm, why) for a forward convolution node: ``im2col``, ``winograd`` (F(2x2, 3x3)
    or F(2x2, 5x5), ``kernels/winograd.py``) or ``direct`` (``kernels/direct.py``).

    Winograd takes 3x3 and 5x5 conv2d with stride 1, dilation 1 and groups 1; the cost model
    picks it when input and output channels are both at least ``WINOGRAD_MIN_CHANNELS`` and
    each of its GEMMs per image (16 or 36) has at least ``WINOGRAD_MIN_MACS`` multiply-adds
    (O * C * 2x2 output tiles). Direct takes stride 1, groups 1 and kernels up to
    ``direct.MAX_WIDTH`` wide; the cost model picks it for at most ``DIRECT_MAX_CHANNELS``
    input channels, and for 3x3 kernels on planes of at least ``DIRECT_MIN_PLANE`` outputs,
    but never for the conv that computes an input ``gradient`` (:func:`gradient_as_conv`):
    in the fused batch-norm backward Winograd ran those faster (32 -> 32 at 32x32, batch 64:
    22.6 against 24.2 ms for the whole backward) and direct did not beat im2col
    (docs/performance.md), while every kernel width it runs compiles a backward variant of
    its own; ``$CONVFORGE_CONV_ALGO=direct`` still puts it there.
    With ``tune`` every
    eligible algorithm is timed at the layer's geometry instead (once per geometry, CPU and
    thread count: the tuning log, ``numba_cpu/tuning.py``). ``$CONVFORGE_CONV_ALGO``
    overrides both.
    """
    choice = _algorithm_choice(conv)
    if choice == "im2col":
        return "im2col", f"{ALGO_ENV}=im2col"
    blockers = {"winograd": _winograd_blocker(conv), "direct": _direct_blocker(conv)}
    if choice != "auto":
        if blockers[choice]:
            return "im2col", f"{blockers[choice]} ({ALGO_ENV}={choice} does not apply)"
        return choice, f"{ALGO_ENV}={choice}"
    candidates = ("im2col", *(name for name, blocker in blockers.items() if not blocker))
    if len(candidates) == 1:
        return "im2col", "; ".join(blockers.values())
    if tune:
        return tuned_algorithm(conv, candidates)
    o, c = conv.inputs[1].shape[:2]
    kh, kw = _kernel_size(conv)
    ho, wo = _plane(conv)
    direct = "direct" in candidates and not gradient
    if direct and c <= DIRECT_MAX_CHANNELS:
        channels = f"{c} input channel{'s' if c > 1 else ''}"
        return "direct", f"{channels}: im2col's GEMM would be thin (K = {c * kh * kw})"
    winograd_no = _winograd_rejection(conv) if "winograd" in candidates else ""
    if "winograd" in candidates and not winograd_no:
        th, tw = tile_counts(ho, wo, tile_size(kh))
        return "winograd", f"{_winograd_name(kh)}, {c} -> {o} channels, {th}x{tw} tiles: {_winograd_gain(kh)}"
    if direct and (kh, kw) == (3, 3) and ho * wo >= DIRECT_MIN_PLANE:
        return "direct", f"3x3 on a {ho}x{wo} plane: at least {DIRECT_MIN_PLANE} outputs for direct"
    return "im2col", winograd_no or f"{c} -> {o} channels, {kh}x{kw} on {ho}x{wo}: im2col by the cost model"


def _winograd_rejection(conv: Node) -> str:
    """Why the cost model does not take Winograd for an eligible ``conv`` ('' when it does)."""
    o, c = conv.inputs[1].shape[:2]
    kh, _kw = _kernel_size(conv)
    th, tw = tile_counts(*_plane(conv), tile_size(kh))
    if min(c, o) < WINOGRAD_MIN_CHANNELS:
        return f"{c} -> {o} channels: fewer than {WINOGRAD_MIN_CHANNELS} for winograd"
    if o * c * th * tw < WINOGRAD_MIN_MACS:
        return f"{o}x{c}x{th * tw} per-tile GEMMs: below {WINOGRAD_MIN_MACS} multiply-adds for winograd"
    return ""


def small_batch_algorithm(conv: Node) -> tuple[str, str]:
    """(algorithm, why) for a groups-1 forward ``conv`` on fewer images than threads, where
    both ``direct`` and ``im2col`` split the output channels over the threads: direct where
    it applies to a plane of at least ``DIRECT_SMALL_BATCH_MIN_PLANE`` outputs, unless
    ``$CONVFORGE_CONV_ALGO`` names another algorithm."""
    ho, wo = _plane(conv)
    choice = _algorithm_choice(conv)
    if choice not in ("auto", "direct"):
        return "im2col", f"{ALGO_ENV}={choice}"
    if blocker := _direct_blocker(conv):
        return "im2col", blocker
    if ho * wo < DIRECT_SMALL_BATCH_MIN_PLANE:
        return "im2col", f"a {ho}x{wo} plane: below {DIRECT_SMALL_BATCH_MIN_PLANE} outputs for direct"
    return "direct", f"a {ho}x{wo} plane: at least {DIRECT_SMALL_BATCH_MIN_PLANE} outputs"


def _winograd_name(r: int) -> str:
    m = tile_size(r)
    return f"F({m}x{m}, {r}x{r})"


def _winograd_gain(r: int) -> str:
    m = tile_size(r)
    return f"{(m * r) ** 2 / (m + r - 1) ** 2:.2f}x fewer multiplications"


def _algorithm_choice(node: Node) -> str:
    """``$CONVFORGE_CONV_ALGO``, checked (``auto`` when unset)."""
    choice = os.environ.get(ALGO_ENV, "auto").strip().lower() or "auto"
    if choice not in ALGORITHMS:
        raise BackendError(
            f"{ALGO_ENV}={os.environ[ALGO_ENV]!r} (node {node.describe()}): expected one of "
            f"{', '.join(ALGORITHMS)}"
        )
    return choice


def _kernel_size(conv: Node) -> tuple[int, int]:
    """(kh, kw) of a conv2d or conv1d node's weight (a conv1d kernel is one row)."""
    kernel = conv.inputs[1].shape[2:]
    return (1, kernel[0]) if len(kernel) == 1 else (kernel[0], kernel[1])


def _plane(conv: Node) -> tuple[int, int]:
    """(ho, wo) of a conv2d or conv1d node's output (a conv1d is one row)."""
    shape = conv.outputs[0].shape
    return (1, shape[2]) if len(shape) == 3 else (shape[2], shape[3])


def forward_variant(algorithm: str, kw: int) -> str:
    """The :func:`forward_key` variant of a forward kernel for ``algorithm`` (the direct
    kernel is written out per kernel width, the Winograd one runs a variant per size)."""
    return f"{algorithm}-k{kw}" if algorithm in ("direct", "winograd") else algorithm


#: the batch a convolution is timed at when tuned (its graph's batch is not known yet)
TUNE_BATCH = 16


def tuned_algorithm(conv: Node, candidates: tuple[str, ...]) -> tuple[str, str]:
    """(algorithm, why) for a convolution, by timing the plain forward kernels (no
    epilogue) of each of ``candidates`` at the node's geometry and ``TUNE_BATCH`` images."""
    x_t, w_t = conv.inputs[0].type, conv.inputs[1].type
    o, c = w_t.shape[:2]
    kh, kw = _kernel_size(conv)
    h, w = (1, x_t.shape[2]) if x_t.rank == 3 else x_t.shape[2:]
    ho, wo = _plane(conv)
    geometry = conv_params(conv)
    threads = numba.get_num_threads()
    key = f"{conv.op} {w_t.dtype} x[{TUNE_BATCH},{c},{h},{w}] w[{o},{c},{kh},{kw}] params{list(geometry)}"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((TUNE_BATCH, c, h, w)).astype(x_t.np_dtype)
    weights = rng.standard_normal((o, c, kh, kw)).astype(w_t.np_dtype)
    bias = np.zeros(o, dtype=w_t.np_dtype)
    y = np.empty((TUNE_BATCH, o, ho * wo), dtype=x_t.np_dtype)
    no_argmax = np.zeros((0, 0, 0), dtype=np.uint8)
    pool = (1, 1, 1, 1, 0, 0, ho, wo)
    conv_args = (*geometry, ho, wo)

    def candidate(algorithm: str):
        # the very kernel a plain convolution's driver calls (same key, same file)
        source = forward_source([], False, "none", algorithm, kw=kw)
        key = forward_key([], False, "none", forward_variant(algorithm, kw))
        kernel = load_keyed(key, source, conv.op)[0].kernel
        return lambda: kernel(x, weights, b=bias, conv=conv_args, pool=pool, nt=threads, y=y, am=no_argmax)

    return tuning.choose(key, {name: candidate(name) for name in candidates}, threads)


def _winograd_blocker(conv: Node) -> str:
    """Why no Winograd variant (``winograd.TILES``) can run ``conv`` ('' when one can)."""
    if conv.op != "conv2d":
        return f"{conv.op}: winograd is for conv2d"
    kh, kw = conv.inputs[1].shape[2:]
    a = conv.attrs
    if kh != kw or kh not in TILES:
        sizes = " and ".join(f"{r}x{r}" for r in TILES)
        return f"{kh}x{kw} kernel: winograd is for {sizes}"
    if tuple(a["stride"]) != (1, 1) or tuple(a["dilation"]) != (1, 1) or a["groups"] != 1:
        geometry = f"stride {list(a['stride'])}, dilation {list(a['dilation'])}, groups {a['groups']}"
        return f"{geometry}: winograd needs 1, 1, 1"
    return ""


def _direct_blocker(conv: Node) -> str:
    """Why the direct micro-kernels cannot run ``conv`` ('' when they can)."""
    sh, sw, _ph, _pw, _dh, _dw, groups = conv_params(conv)
    kw = conv.inputs[1].shape[-1]
    if (sh, sw) != (1, 1) or groups != 1:
        return f"stride {list(conv.attrs['stride'])}, groups {groups}: direct needs stride 1, groups 1"
    if kw > MAX_WIDTH:
        return f"kernel width {kw}: direct is written out up to {MAX_WIDTH}"
    return ""


def gradient_as_conv(node: Node) -> Node | None:
    """The forward convolution whose output is the input gradient ``node`` computes (a
    ``conv*_backward_input`` or ``conv_transpose2d``: inputs gy [N, O, ...] and w [O, C, ...]).

    For stride 1 and groups 1 that is gy, zero padded by (k-1)*d - p per side, correlated
    with the weights of :func:`flipped_weights`, so :func:`conv_algorithm` can choose any
    forward algorithm for it. None for other strides or groups, or where the padding is
    wider than (k-1)*d (the padded gradient would be cropped).
    """
    sh, sw, _ph, _pw, _dh, _dw, groups = conv_params(node)
    if (sh, sw) != (1, 1) or groups != 1:
        return None
    gy, w, gx = node.inputs[0], node.inputs[1], node.outputs[0]
    nd = gy.type.rank - 2
    dilation = tuple(node.attrs["dilation"])
    pads = []
    for axis, (lo, _hi) in enumerate(pad_pairs(node.attrs["padding"], nd)):
        span = (w.shape[2 + axis] - 1) * dilation[axis]
        size_in, size_out = gy.shape[2 + axis], gx.shape[2 + axis]
        pads.append((span - lo, size_out + lo - size_in))  # from size_out = size_in + both - span
    if min(min(p) for p in pads) < 0:
        return None
    conv = Node(
        f"conv{nd}d",
        {
            "stride": (1,) * nd,
            "padding": tuple(lo for lo, _ in pads) + tuple(hi for _, hi in pads),
            "dilation": dilation,
            "groups": 1,
        },
        meta={**node.meta, "layer": f"{node.meta.get('layer') or node.op}: input gradient"},
    )
    o, c = w.shape[:2]
    flipped = TensorType(w.dtype, (c, o, *w.shape[2:]))
    conv.inputs = [Value(gy.name, gy.type), Value(f"{w.name}.flipped", flipped)]
    conv.outputs = [Value(gx.name, gx.type, conv)]
    return conv


def weight_grad_algorithm(node: Node) -> tuple[str, str]:
    """(algorithm, why) for the weight gradient a ``conv2d_backward_weight`` node (inputs x
    and gy) computes: ``winograd`` (16 or 36 GEMMs per image on transformed tiles, the adjoint of
    the forward's, ``winograd.weight_grad_tiles``) or ``im2col``.

    The cost model takes Winograd for at least ``WINOGRAD_MIN_CHANNELS`` channels each way
    and ``WINOGRAD_WEIGHT_MIN_TILES`` tiles for the kernel size; ``$CONVFORGE_CONV_ALGO`` overrides it
    (``direct`` has no weight-gradient kernel: im2col).
    """
    x, gy = node.inputs[0], node.inputs[1]
    forward = Node("conv2d" if x.type.rank == 4 else "conv1d", node.attrs, meta=node.meta)
    forward.inputs = [x, Value(node.outputs[0].name, node.outputs[0].type)]
    forward.outputs = [Value(gy.name, gy.type, forward)]
    blocker = _winograd_blocker(forward)
    choice = _algorithm_choice(node)
    if blocker:
        return "im2col", blocker
    if choice != "auto":
        return ("winograd" if choice == "winograd" else "im2col"), f"{ALGO_ENV}={choice}"
    o, c = node.outputs[0].shape[:2]
    r = forward.inputs[1].shape[-1]
    th, tw = tile_counts(*_plane(forward), tile_size(r))
    if min(c, o) < WINOGRAD_MIN_CHANNELS:
        return "im2col", f"{c} -> {o} channels: fewer than {WINOGRAD_MIN_CHANNELS} for winograd"
    if th * tw < WINOGRAD_WEIGHT_MIN_TILES[r]:
        return "im2col", f"{th}x{tw} tiles: fewer than {WINOGRAD_WEIGHT_MIN_TILES[r]} for winograd"
    return "winograd", f"{_winograd_name(r)}, {c} -> {o} channels, {th}x{tw} tiles: {_winograd_gain(r)}"


# -- lowering -----------------------------------------------------------------------------
def conv_params(node: Node) -> tuple[int, ...]:
    """(sh, sw, ph, pw, dh, dw, groups) of a conv1d/conv2d node as 2-D parameters.

    Only the top/left padding enters the kernels: the bottom/right padding is already in
    the output size.
    """
    a = node.attrs
    if node.op.startswith("conv1d"):
        ((lo, _hi),) = pad_pairs(a["padding"], 1)
        return (1, a["stride"][0], 0, lo, 1, a["dilation"][0], a["groups"])
    (pt, _pb), (pl, _pr) = pad_pairs(a["padding"], 2)
    return (a["stride"][0], a["stride"][1], pt, pl, a["dilation"][0], a["dilation"][1], a["groups"])


def as4d(ctx, value, expr: str) -> str:
    """A conv1d operand [N,C,L] seen as [N,C,1,L]."""
    if value.type.rank == 3:
        d0, c, length = value.shape
        return f"{expr}.reshape({ctx.dim(d0)}, {c}, 1, {length})"
    return expr


def emit_forward(
    ctx,
    conv: Node,
    x: str,
    w: str,
    b: str | None,
    bn: list[str] | None,
    bn_eps: float,
    acts: list[tuple[str, dict]],
    pool: Node | None,
    y: str,
    am: str | None,
    out_value,
) -> None:
    """Emit one fused conv kernel call (the conv, then BN, activations and pool from the region)."""
    pool_kind = "none"
    if pool is not None:
        pool_kind = "avg" if pool.op == "avg_pool2d" else "max"
    algorithm, why = conv_algorithm(conv, tune=bool(ctx.graph.meta.get("tune")))
    kw = conv.inputs[1].shape[-1]
    # one file for max_pool2d and max_pool2d_argmax: the kernel writes the argmax when given a buffer
    pool_name = {"max_pool2d": "max_pool2d(+argmax)", "max_pool2d_argmax": "max_pool2d(+argmax)"}
    pattern = " -> ".join(
        [conv.op, *(["batch_norm"] if bn else []), *(op for op, _ in acts)]
        + ([pool_name.get(pool.op, pool.op)] if pool is not None else [])
    )

    def image_split_kernel(name: str) -> str:
        key = forward_key(acts, bn is not None, pool_kind, forward_variant(name, kw))
        return ctx.generated(key, forward_source(acts, bn is not None, pool_kind, name, kw=kw), pattern)

    k = image_split_kernel(algorithm)
    xin, win = conv.inputs[0], conv.inputs[1]
    x4 = as4d(ctx, xin, x)
    w4 = as4d(ctx, win, w)
    cout = conv.outputs[0].type
    ho, wo = _plane(conv)
    sh, sw, ph, pw, dh, dw, groups = conv_params(conv)
    if pool is not None:
        pt = pool.outputs[0].type
        pool_geometry = f"({window(pool.attrs)}, {pt.shape[2]}, {pt.shape[3]})"
    else:
        pool_geometry = f"(1, 1, 1, 1, 0, 0, {ho}, {wo})"
    bias = b if b is not None else ctx.zeros(cout.shape[1], cout.dtype, "no_bias")
    bn_arg = f"bn=({', '.join(bn)}, {scalar.literal(bn_eps)}), " if bn is not None else ""
    n = ctx.dim(out_value.shape[0])
    # the trailing size spelled out: NumPy cannot infer -1 for an empty array
    rest = math.prod(out_value.type.shape[2:])
    y3 = f"{y}.reshape({n}, {cout.shape[1]}, {rest})"
    am3 = f"{am}.reshape({n}, {cout.shape[1]}, {rest})" if am else ctx.dummy_u8()
    args = (
        f"({x4}, {w4}, b={bias}, {bn_arg}conv=({sh}, {sw}, {ph}, {pw}, {dh}, {dw}, {groups}, {ho}, {wo}), "
        f"pool={pool_geometry}, nt=T, y={y3}, am={am3})"
    )
    if groups != 1 or algorithm == "direct":
        if algorithm == "direct":
            why += "; below one image per thread the channels split too"
        ctx.line(f"# conv algorithm: {algorithm} ({why})")
        ctx.line(k + args)
        return
    # a batch smaller than the thread count would leave threads idle in the image split
    small_algorithm, small_why = small_batch_algorithm(conv)
    if small_algorithm == "direct":  # the direct kernel splits the channels itself
        small = image_split_kernel("direct")
    else:
        small = ctx.generated(
            forward_key(acts, bn is not None, pool_kind, "im2col-channels"),
            forward_source(acts, bn is not None, pool_kind, "im2col", split="channels"),
            pattern + " [channel split]",
        )
    ctx.line(
        f"if {n} < T:  # conv algorithm: {small_algorithm}, fewer images than threads: "
        f"they split the channels ({small_why})"
    )
    ctx.line(f"    {small}{args}")
    ctx.line(f"else:  # conv algorithm: {algorithm} ({why})")
    ctx.line(f"    {k}{args}")


@lowering("conv2d", "conv1d")
def _(ctx, node, ins, outs):
    emit_forward(
        ctx,
        node,
        ins[0],
        ins[1],
        ins[2] if len(ins) > 2 else None,
        None,
        0.0,
        [],
        None,
        outs[0],
        None,
        node.outputs[0],
    )


def _gy3(ctx, value, expr: str) -> str:
    t = value.type
    return f"{expr}.reshape({ctx.dim(t.shape[0])}, {t.shape[1]}, {math.prod(t.shape[2:])})"


@lowering("conv2d_backward_input", "conv1d_backward_input")
def _(ctx, node, ins, outs):
    _emit_backward_input(ctx, node, ins[0], ins[1], outs[0])


def _emit_backward_input(ctx, node, gy_expr: str, w_expr: str, out_expr: str) -> None:
    """The transposed convolution of input 0 (``gy``) by input 1 (``w``) into the output."""
    gy, w = node.inputs[0], node.inputs[1]
    sh, sw, ph, pw, dh, dw, groups = conv_params(node)
    k = ctx.static(conv2d_backward_input, "conv2d_backward_input")
    ho, wo = (1, gy.shape[2]) if gy.type.rank == 3 else (gy.shape[2], gy.shape[3])
    ctx.line(
        f"{k}({_gy3(ctx, gy, gy_expr)}, {as4d(ctx, w, w_expr)}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}, "
        f"{groups}, {ho}, {wo}, T, {as4d(ctx, node.outputs[0], out_expr)})"
    )


@njit(cache=True, parallel=True)
def add_channel_bias(y, b):
    """y[n, c, :] += b[c] (y is [N, C, L])."""
    N, C, L = y.shape
    for nc in prange(N * C):
        v = b[nc % C]
        for i in range(L):
            y[nc // C, nc % C, i] += v


@lowering("conv_transpose2d")
def _(ctx, node, ins, outs):
    # the input gradient of the convolution whose output is x (output_padding is only in
    # the output size: the rows it adds are read by no window and keep the bias alone)
    _emit_backward_input(ctx, node, ins[0], ins[1], outs[0])
    if len(ins) > 2:
        k = ctx.static(add_channel_bias, "add_channel_bias")
        ctx.line(f"{k}({_gy3(ctx, node.outputs[0], outs[0])}, {ins[2]})")


@lowering("conv2d_backward_weight", "conv1d_backward_weight")
def _(ctx, node, ins, outs):
    x, gy = node.inputs
    sh, sw, ph, pw, dh, dw, groups = conv_params(node)
    ho, wo = (1, gy.shape[2]) if gy.type.rank == 3 else (gy.shape[2], gy.shape[3])
    k = ctx.static(conv2d_backward_weight, "conv2d_backward_weight")
    ctx.line(
        f"{k}({as4d(ctx, x, ins[0])}, {_gy3(ctx, gy, ins[1])}, {sh}, {sw}, {ph}, {pw}, {dh}, {dw}, "
        f"{groups}, {ho}, {wo}, T, {as4d(ctx, node.outputs[0], outs[0])})"
    )
