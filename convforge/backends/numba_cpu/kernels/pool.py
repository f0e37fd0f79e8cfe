"""Pooling kernels (max, avg, adaptive avg, and their backward ops), parallel over (n, c) planes.

Output sizes come from the IR types (the driver passes arrays already shaped), so the
kernels only need the window parameters; ``ceil_mode`` is therefore implicit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convforge.backends.numba_cpu.kernels import lowering


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
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
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
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            for ox in range(Wo):
                _, arg = _max_window(x, n, c, oy, ox, kh, kw, sh, sw, ph, pw, dh, dw)
                i = arg // kw
                j = arg % kw
                iy = oy * sh - ph + i * dh
                ix = ox * sw - pw + j * dw
                if 0 <= iy < gx.shape[2] and 0 <= ix < gx.shape[3]:
                    gx[n, c, iy, ix] += gy[n, c, oy, ox]


@njit(cache=True, parallel=True)
def max_pool2d_backward_argmax(gy, am, kh, kw, sh, sw, ph, pw, dh, dw, gx):
    """gy routed through the stored argmax taps."""
    N, C, Ho, Wo = gy.shape
    H = gx.shape[2]
    W = gx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            for ox in range(Wo):
                a = np.int64(am[n, c, oy, ox])
                iy = oy * sh - ph + (a // kw) * dh
                ix = ox * sw - pw + (a % kw) * dw
                if 0 <= iy < H and 0 <= ix < W:
                    gx[n, c, iy, ix] += gy[n, c, oy, ox]


@njit(cache=True)
def _avg_bounds(o, s, k, p, size):
    start = o * s - p
    end = min(start + k, size + p)
    full = end - start
    return max(start, 0), min(end, size), full


@njit(cache=True, parallel=True)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, y):
    N, C, Ho, Wo = y.shape
    H = x.shape[2]
    W = x.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for oy in range(Ho):
            y0, y1, fh = _avg_bounds(oy, sh, kh, ph, H)
            for ox in range(Wo):
                x0, x1, fw = _avg_bounds(ox, sw, kw, pw, W)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                if divisor > 0:
                    d = divisor
                elif count_include_pad:
                    d = fh * fw
                else:
                    d = (y1 - y0) * (x1 - x0)
                y[n, c, oy, ox] = acc / d


@njit(cache=True, parallel=True)
def avg_pool2d_backward(gy, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, gx):
    N, C, Ho, Wo = gy.shape
    H = gx.shape[2]
    W = gx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        gx[n, c] = 0
        for oy in range(Ho):
            y0, y1, fh = _avg_bounds(oy, sh, kh, ph, H)
            for ox in range(Wo):
                x0, x1, fw = _avg_bounds(ox, sw, kw, pw, W)
                if divisor > 0:
                    d = divisor
                elif count_include_pad:
                    d = fh * fw
                else:
                    d = (y1 - y0) * (x1 - x0)
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
            y0 = (oy * H) // Ho
            y1 = -(-((oy + 1) * H) // Ho)
            for ox in range(Wo):
                x0 = (ox * W) // Wo
                x1 = -(-((ox + 1) * W) // Wo)
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
            y0 = (oy * H) // Ho
            y1 = -(-((oy + 1) * H) // Ho)
            for ox in range(Wo):
                x0 = (ox * W) // Wo
                x1 = -(-((ox + 1) * W) // Wo)
                g = gy[n, c, oy, ox] / ((y1 - y0) * (x1 - x0))
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        gx[n, c, iy, ix] += g


def window(attrs) -> str:
    """``kh, kw, sh, sw, ph, pw`` of a pooling node."""
    k, s, p = attrs["kernel_size"], attrs["stride"], attrs["padding"]
    return f"{k[0]}, {k[1]}, {s[0]}, {s[1]}, {p[0]}, {p[1]}"


def _dil(attrs) -> str:
    d = attrs.get("dilation", (1, 1))
    return f"{d[0]}, {d[1]}"


def _avg_args(attrs) -> str:
    div = attrs["divisor_override"]
    return f"{window(attrs)}, {bool(attrs['count_include_pad'])}, {int(div) if div else 0}"


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
