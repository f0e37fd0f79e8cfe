"""Pooling kernels (max, avg, adaptive avg, and their backward ops), parallel over (n, c) planes.

Output sizes come from the IR types (the driver passes arrays already shaped), so the
kernels only need the window parameters; ``ceil_mode`` is therefore implicit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering
from convforge.backends.numba_cpu.kernels.activation import act_grad
from convforge.ir.ops.pool import pads_hi


@njit(cache=True)
def _max_window(x, n, c, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw):
    """(max, first argmax tap) of one window; NaN wins as in PyTorch."""
    H = x.shape[2]
    W = x.shape[3]
    best = -np.inf
    arg = 0
    for i in range(kh):
        iy = oy * sh - ph + i * dh
        if 0 <= iy < H:
            for j in range(kw):
                ix = ox * sw - pw + j * dw
                if 0 <= ix < W:
                    v = x[n, c, iy, ix]
                    if v > best or v != v:
                        best = v
                        arg = i * kw + j
    return best, arg


@njit(cache=True, parallel=True)
def max_pool2d_argmax(x, kh, kw, sh, sw, ph, pw, dh, dw, y, am):
    """Max pool; with a real ``am`` (not the empty stand-in) also each window's argmax tap,
    one byte per output. Inference and training share this one kernel."""
    N, C, Ho, Wo = y.shape
    want_arg = am.shape[0] == N
    inside = _windows_inside(x.shape[2], x.shape[3], Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        if inside:  # the branch-free plane pass the fused conv kernels use
            amo = am[n, c].reshape(-1) if want_arg else am.reshape(-1)
            max_pool_inside(
                x[n, c].reshape(-1), x.shape[3], kh, kw, sh, sw, Ho, Wo, y[n, c].reshape(-1), amo, want_arg
            )
            continue
        for oy in range(Ho):
            for ox in range(Wo):
                best, arg = _max_window(x, n, c, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw)
                y[n, c, oy, ox] = best
                if want_arg:
                    am[n, c, oy, ox] = arg


@njit(cache=True, parallel=True)
def max_pool2d_backward(gy, x, kh, kw, sh, sw, ph, pw, dh, dw, gx):
    """gy routed to each window's first maximum (recomputed from x)."""
    N, C, Ho, Wo = gy.shape
    inside = _windows_inside(x.shape[2], x.shape[3], Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        if inside:
            max_pool_inside_backward(
                x[n, c].reshape(-1),
                x.shape[3],
                kh,
                kw,
                sh,
                sw,
                Ho,
                Wo,
                gy[n, c].reshape(-1),
                gx[n, c].reshape(-1),
            )
            continue
        for oy in range(Ho):
            for ox in range(Wo):
                _, arg = _max_window(x, n, c, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw)
                _scatter_tap(gx, gy, n, c, oy, ox, arg, kw, sh, sw, ph, pw, dh, dw)


@njit(cache=True)
def _windows_inside(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """Whether every window lies inside the plane, undilated: no bounds check is needed."""
    return ph == 0 and pw == 0 and dh == 1 and dw == 1 and (Ho - 1) * sh + kh <= H and (Wo - 1) * sw + kw <= W


@njit(cache=True, parallel=True)
def max_pool2d_backward_argmax(gy, am, kh, kw, sh, sw, ph, pw, dh, dw, gx):
    """gy routed through the stored argmax taps."""
    N, C, Ho, Wo = gy.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            for ox in range(Wo):
                a = np.int64(am[n, c, oy, ox])
                _scatter_tap(gx, gy, n, c, oy, ox, a, kw, sh, sw, ph, pw, dh, dw)


@njit(cache=True)
def _scatter_tap(gx, gy, n, c, oy, ox, tap, kw, sh, sw, ph, pw, dh, dw):
    """Add ``gy[n, c, oy, ox]`` to the input pixel of window tap ``tap`` (row-major in the
    kernel), unless that tap lies in the padding."""
    iy, ix = _tap_pixel(oy, ox, tap, kw, sh, sw, ph, pw, dh, dw)
    if 0 <= iy < gx.shape[2] and 0 <= ix < gx.shape[3]:
        gx[n, c, iy, ix] += gy[n, c, oy, ox]


@njit(cache=True)
def _tap_pixel(oy, ox, tap, kw, sh, sw, ph, pw, dh, dw):
    """The input pixel (iy, ix) under tap ``tap`` of output window (oy, ox); it may lie in
    the padding."""
    return oy * sh - ph + (tap // kw) * dh, ox * sw - pw + (tap % kw) * dw


@njit(cache=True)
def _avg_bounds(o, s, k, p, p_hi, size):
    start = o * s - p
    end = min(start + k, size + p_hi)
    full = end - start
    return max(start, 0), min(end, size), full


@njit(cache=True)
def _avg_divisor(divisor, count_include_pad, fh, fw, y0, y1, x0, x1):
    """What a window's sum is divided by: ``divisor_override``, the padded window size, or
    the count of real pixels in it."""
    if divisor > 0:
        return divisor
    if count_include_pad:
        return fh * fw
    return (y1 - y0) * (x1 - x0)


@njit(cache=True)
def _adaptive_bounds(o, size, out):
    """[start, end) of adaptive window ``o`` of ``out`` over ``size`` (PyTorch's floor / ceil)."""
    return (o * size) // out, -(-((o + 1) * size) // out)


@njit(cache=True, parallel=True)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, phh, pwh, count_include_pad, divisor, y):
    """Average pool; ``ph, pw`` the top and left padding, ``phh, pwh`` the bottom and right."""
    N, C, Ho, Wo = y.shape
    H = x.shape[2]
    W = x.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oy in range(Ho):
            y0, y1, fh = _avg_bounds(oy, sh, kh, ph, phh, H)
            for ox in range(Wo):
                x0, x1, fw = _avg_bounds(ox, sw, kw, pw, pwh, W)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                d = _avg_divisor(divisor, count_include_pad, fh, fw, y0, y1, x0, x1)
                y[n, c, oy, ox] = acc / d


@njit(cache=True, parallel=True)
def avg_pool2d_backward(gy, kh, kw, sh, sw, ph, pw, phh, pwh, count_include_pad, divisor, gx):
    N, C, Ho, Wo = gy.shape
    H = gx.shape[2]
    W = gx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            y0, y1, fh = _avg_bounds(oy, sh, kh, ph, phh, H)
            for ox in range(Wo):
                x0, x1, fw = _avg_bounds(ox, sw, kw, pw, pwh, W)
                d = _avg_divisor(divisor, count_include_pad, fh, fw, y0, y1, x0, x1)
                g = gy[n, c, oy, ox] / d
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        gx[n, c, iy, ix] += g


@njit(cache=True, parallel=True)
def adaptive_avg_pool2d(x, y):
    N, C, Ho, Wo = y.shape
    H = x.shape[2]
    W = x.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oy in range(Ho):
            y0, y1 = _adaptive_bounds(oy, H, Ho)
            for ox in range(Wo):
                x0, x1 = _adaptive_bounds(ox, W, Wo)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                y[n, c, oy, ox] = acc / ((y1 - y0) * (x1 - x0))


@njit(cache=True, parallel=True)
def adaptive_avg_pool2d_backward(gy, gx):
    N, C, Ho, Wo = gy.shape
    H = gx.shape[2]
    W = gx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            y0, y1 = _adaptive_bounds(oy, H, Ho)
            for ox in range(Wo):
                x0, x1 = _adaptive_bounds(ox, W, Wo)
                g = gy[n, c, oy, ox] / ((y1 - y0) * (x1 - x0))
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        gx[n, c, iy, ix] += g


def window(attrs) -> str:
    """``kh, kw, sh, sw, ph, pw`` of a pooling node (``ph, pw``: the top and left padding)."""
    k, s, p = attrs["kernel_size"], attrs["stride"], attrs["padding"]
    return f"{k[0]}, {k[1]}, {s[0]}, {s[1]}, {p[0]}, {p[1]}"


def _dil(attrs) -> str:
    d = attrs.get("dilation", (1, 1))
    return f"{d[0]}, {d[1]}"


def _avg_args(attrs) -> str:
    div = attrs["divisor_override"]
    phh, pwh = pads_hi(attrs["padding"])
    return f"{window(attrs)}, {phh}, {pwh}, {bool(attrs['count_include_pad'])}, {int(div) if div else 0}"


def _max_args(attrs) -> str:
    return f"{window(attrs)}, {_dil(attrs)}"


#: op -> (static kernel, its attribute arguments); every call is kernel(*inputs, attrs, *outputs)
_KERNELS = {
    "max_pool2d_argmax": (max_pool2d_argmax, _max_args),
    "max_pool2d_backward": (max_pool2d_backward, _max_args),
    "max_pool2d_backward_argmax": (max_pool2d_backward_argmax, _max_args),
    "avg_pool2d": (avg_pool2d, _avg_args),
    "avg_pool2d_backward": (avg_pool2d_backward, _avg_args),
    "adaptive_avg_pool2d": (adaptive_avg_pool2d, None),
    "adaptive_avg_pool2d_backward": (adaptive_avg_pool2d_backward, None),
}


@lowering("max_pool2d")
def _(ctx, node, ins, outs):
    k = ctx.static(max_pool2d_argmax, "max_pool2d_argmax")
    ctx.line(f"{k}({ins[0]}, {_max_args(node.attrs)}, {outs[0]}, {ctx.dummy_u8()}.reshape(0, 0, 0, 0))")


@lowering(*_KERNELS)
def _(ctx, node, ins, outs):
    kernel, attr_args = _KERNELS[node.op]
    k = ctx.static(kernel, node.op)
    args = [*ins, *([attr_args(node.attrs)] if attr_args else []), *outs]
    ctx.line(f"{k}({', '.join(args)})")


# -- helpers of the fused conv kernels (kernels/conv.py, kernels/fusion.py) ----------------
@njit(cache=True)
def max_pool_plane(ro, rw, ho, wo, pkh, pkw, psh, psw, pph, ppw, hp, wp, yo, am, n, o, want_arg):
    """Max-pool one channel of a GEMM output (row pitch ``rw``) into ``yo``; with
    ``want_arg`` also store each window's first-maximum tap in ``am[n, o]``.

    A separate function rather than inline code in the parallel kernel: Numba compiles it
    once (cached), and inline it ran 1.7x slower inside the ``prange`` body (measured)."""
    if _windows_inside(ho, wo, hp, wp, pkh, pkw, psh, psw, pph, ppw, 1, 1):
        # am[n, o] exists only when want_arg (otherwise am is an empty stand-in)
        amo = am[n, o] if want_arg else am.reshape(-1)
        max_pool_inside(ro, rw, pkh, pkw, psh, psw, hp, wp, yo, amo, want_arg)
        return
    for py in range(hp):
        y0 = py * psh - pph
        for px in range(wp):
            x0 = px * psw - ppw
            best = -np.inf
            arg = 0
            for a in range(pkh):
                yy = y0 + a
                if 0 <= yy < ho:
                    for c in range(pkw):
                        xx = x0 + c
                        if 0 <= xx < wo:
                            v = ro[yy * rw + xx]
                            if v > best or v != v:  # NaN wins, as in PyTorch
                                best = v
                                arg = a * pkw + c
            yo[py * wp + px] = best
            if want_arg:
                am[n, o, py * wp + px] = arg


# Windows that lie inside the plane (no padding, no ceil-mode overhang) need no bounds
# checks, and the comparisons are written as selects, not branches. 2x2 windows (LeNet's)
# are unrolled and compared as a tree (row by row, then the two row winners), which keeps
# PyTorch's rule: the first maximum in row-major order, a NaN wins (the last one). At
# batch 64 this took LeNet's conv1 pool + argmax from 0.40 to 0.19 ms.


@njit(cache=True)
def _pick(v, best):
    """Whether ``v`` replaces ``best`` in a row-major scan: larger, or NaN."""
    return (v > best) | (v != v)


@njit(cache=True)
def max_pool_inside(ro, rw, pkh, pkw, psh, psw, hp, wp, yo, amo, want_arg):
    """:func:`max_pool_plane` without padding or overhang; ``amo`` takes the first-maximum
    tap of each window when ``want_arg``."""
    if pkh == 2 and pkw == 2 and not want_arg:
        _max_pool_inside_2x2(ro, rw, psh, psw, hp, wp, yo)
        return
    for py in range(hp):
        row = py * psh * rw
        out = py * wp
        for px in range(wp):
            best, arg = _inside_argmax(ro, row + px * psw, rw, pkh, pkw)
            yo[out + px] = best
            if want_arg:
                amo[out + px] = arg


@njit(cache=True)
def _max_pool_inside_2x2(ro, rw, psh, psw, hp, wp, yo):
    """The window maxima alone (inference) of 2x2 windows inside the plane: through row
    views indexed by the bare loop counter, so LLVM vectorises the loop (the pool's share
    of VGG's fused 32 -> 32 conv + ReLU + pool at batch 64: 2.2 -> 0.1 ms)."""
    for py in range(hp):
        top = ro[py * psh * rw : py * psh * rw + rw]
        bottom = ro[py * psh * rw + rw : py * psh * rw + 2 * rw]
        out = yo[py * wp : py * wp + wp]
        for px in range(wp):
            i = px * psw
            a0, a1, b0, b1 = top[i], top[i + 1], bottom[i], bottom[i + 1]
            m0 = a1 if _pick(a1, a0) else a0
            m1 = b1 if _pick(b1, b0) else b0
            out[px] = m1 if _pick(m1, m0) else m0


@njit(cache=True)
def max_pool_inside_backward(xo, rw, pkh, pkw, psh, psw, hp, wp, gyo, gxo):
    """gxo += each window's gradient ``gyo`` at its first maximum of plane ``xo`` (row
    pitch ``rw``), for windows inside the plane (as :func:`max_pool_inside`)."""
    for py in range(hp):
        row = py * psh * rw
        out = py * wp
        for px in range(wp):
            i = row + px * psw
            _, arg = _inside_argmax(xo, i, rw, pkh, pkw)
            gxo[i + (arg // pkw) * rw + arg % pkw] += gyo[out + px]


@njit(cache=True)
def _inside_argmax(ro, i, rw, pkh, pkw):
    """(max, first-maximum tap) of the window at flat index ``i`` of a plane with row pitch
    ``rw``, in row-major scan order (NaN wins); 2x2 windows branch-free."""
    if pkh == 2 and pkw == 2:
        a0, a1 = ro[i], ro[i + 1]
        b0, b1 = ro[i + rw], ro[i + rw + 1]
        t0 = _pick(a1, a0)
        t1 = _pick(b1, b0)
        m0 = a1 if t0 else a0
        m1 = b1 if t1 else b0
        t = _pick(m1, m0)
        return (m1 if t else m0), ((3 if t1 else 2) if t else (1 if t0 else 0))
    best = ro[i]
    arg = 0
    for a in range(pkh):
        for c in range(pkw):
            v = ro[i + a * rw + c]
            t = _pick(v, best)
            best = v if t else best
            arg = a * pkw + c if t else arg
    return best, arg


@njit(cache=True)
def avg_pool_plane(ro, rw, pkh, pkw, psh, psw, hp, wp, yo):
    """Average-pool one channel (no padding: the fuse pass only fuses such pools)."""
    inv = 1.0 / (pkh * pkw)
    for py in range(hp):
        for px in range(wp):
            acc = 0.0
            for a in range(pkh):
                base = (py * psh + a) * rw + px * psw
                for c in range(pkw):
                    acc += ro[base + c]
            yo[py * wp + px] = acc * inv


@njit(cache=True)
def scatter_pooled_grad(gp, yp, am, n, kind, p, q, pkh, pkw, psh, psw, pph, ppw, ho, wo, rw, gz, gb):
    """gz[o, iy*rw + ix] = the conv-output gradient of image n, from the pooled gradient.

    Each pooled gradient times the activation's derivative (a function of the pooled
    output, the activations being monotone) goes to its window's argmax; ``gb`` gathers
    the bias gradient on the way. ``kind``, ``p``, ``q`` as in :func:`act_grad`.
    """
    O, hp, wp = gp.shape[1], gp.shape[2], gp.shape[3]
    gz[:] = 0
    for o in range(O):
        acc = 0.0
        for py in range(hp):
            for px in range(wp):
                g = act_grad(kind, p, q, gp[n, o, py, px], yp[n, o, py, px])
                a = np.int64(am[n, o, py, px])
                iy = py * psh - pph + a // pkw
                ix = px * psw - ppw + a % pkw
                if 0 <= iy < ho and 0 <= ix < wo:
                    gz[o, iy * rw + ix] += g
                    acc += g
        gb[o] += acc


@njit(cache=True, parallel=True)
def act_backward_max_pool_argmax(gy, y, am, act, pool, gx):
    """gx = scatter(act'(y) * gy, argmax); ``act`` is (kind, p, q) as in :func:`activation.act_grad`,
    ``pool`` the window (kh, kw, sh, sw, ph, pw).

    The activation is monotone, so its derivative at the window's maximum is a function
    of the pooled output ``y``: the full pre-pool activation is never stored.
    """
    for n in prange(gx.shape[0]):
        _scatter_image(gy, y, am, n, act, pool, gx)


@njit(cache=True)
def _scatter_image(gy, y, am, n, act, pool, gx):
    kind, p, q = act
    kh, kw, sh, sw, ph, pw = pool
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    bias_sums = np.zeros(C, dtype=gx.dtype)  # a by-product this op does not need
    scatter_pooled_grad(
        gy, y, am, n, kind, p, q, kh, kw, sh, sw, ph, pw, H, W, W, gx[n].reshape(C, H * W), bias_sums
    )


# -- PyTorch's indices (return_indices=True) and max unpooling --------------------------------------
@njit(cache=True, parallel=True)
def max_pool2d_with_indices(x, kh, kw, sh, sw, ph, pw, dh, dw, y, ind):
    """Max pool and each window's first maximum as the flat index iy * W + ix in its plane."""
    N, C, Ho, Wo = y.shape
    W = x.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oy in range(Ho):
            for ox in range(Wo):
                best, arg = _max_window(x, n, c, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw)
                y[n, c, oy, ox] = best
                iy, ix = _tap_pixel(oy, ox, arg, kw, sh, sw, ph, pw, dh, dw)
                ind[n, c, oy, ox] = iy * W + ix


@njit(cache=True, parallel=True)
def max_unpool2d(x, ind, y):
    """y[p].flat[ind[p, i]] = x[p, i] per plane p (x, ind [P, L]; y [P, Ho*Wo], zeroed first);
    an index outside the plane is skipped, a repeated one keeps the last value."""
    P, L = x.shape
    size = y.shape[1]
    for p in prange(P):
        y[p] = 0
        for i in range(L):
            j = ind[p, i]
            if 0 <= j < size:
                y[p, j] = x[p, i]


@njit(cache=True, parallel=True)
def max_unpool2d_backward(gy, ind, gx):
    P, L = gx.shape
    size = gy.shape[1]
    for p in prange(P):
        for i in range(L):
            j = ind[p, i]
            gx[p, i] = gy[p, j] if 0 <= j < size else 0


def _planes(ctx, value, expr: str) -> str:
    """``expr`` (an [N, C, H, W] array) seen as [N * C, H * W]."""
    n, c, h, w = value.shape
    return f"{expr}.reshape({ctx.dim(n)} * {c}, {h * w})"


@lowering("max_pool2d_with_indices")
def _(ctx, node, ins, outs):
    k = ctx.static(max_pool2d_with_indices, "max_pool2d_with_indices")
    ctx.line(f"{k}({ins[0]}, {_max_args(node.attrs)}, {outs[0]}, {outs[1]})")


@lowering("max_unpool2d")
def _(ctx, node, ins, outs):
    x, y = node.inputs[0], node.outputs[0]
    k = ctx.static(max_unpool2d, "max_unpool2d")
    ctx.line(f"{k}({_planes(ctx, x, ins[0])}, {_planes(ctx, x, ins[1])}, {_planes(ctx, y, outs[0])})")


@lowering("max_unpool2d_backward")
def _(ctx, node, ins, outs):
    gy, gx = node.inputs[0], node.outputs[0]
    k = ctx.static(max_unpool2d_backward, "max_unpool2d_backward")
    ctx.line(f"{k}({_planes(ctx, gy, ins[0])}, {_planes(ctx, gx, ins[1])}, {_planes(ctx, gx, outs[0])})")
