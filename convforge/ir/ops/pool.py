"""Pooling: max_pool2d, avg_pool2d, adaptive_avg_pool2d, their backward ops, the max-pool argmax
pair, max_pool2d_with_indices (PyTorch's ``return_indices=True``) and max_unpool2d.

Semantics are PyTorch's (NCHW): ``stride`` defaults to ``kernel_size``; padding is
``(ph, pw)``, or ``(top, left, bottom, right)`` when the sides differ (ONNX's ``pads``), at
most half the kernel on each side; output sizes are floored, or ceiled with
``ceil_mode`` under PyTorch's rule that the last window starts inside the input or the
left padding (``common.window_out``). Max pooling pads with -inf and picks the first
maximum in row-major window order (a NaN wins, as on PyTorch's CPU); its backward
recomputes that argmax from ``x``. Average pooling divides by the window clipped to the
padded input (``count_include_pad``), or to the input alone, or by ``divisor_override``.
Adaptive average pooling uses the windows ``[floor(i*H/oh), ceil((i+1)*H/oh))``.

The references loop over kernel offsets (or output rows of adaptive pooling), never
over pixels.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops.common import expect_float, expect_rank, int_tuple, window_out
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import TensorType

_MAX_ATTRS = {"kernel_size": None, "stride": None, "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False}
_AVG_ATTRS = {
    "kernel_size": None,
    "stride": None,
    "padding": (0, 0),
    "ceil_mode": False,
    "count_include_pad": True,
    "divisor_override": None,
}


# -- shared attribute and shape rules --------------------------------------------------------
def _check_window(kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False) -> dict:
    if kernel_size is None:
        raise AttributeValueError("kernel_size is required, got None")
    kernel = int_tuple("kernel_size", kernel_size, 2)
    strides = kernel if stride is None else int_tuple("stride", stride, 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = int_tuple("padding", padding, 4, minimum=0)
        pads = pads[:2] if pads[:2] == pads[2:] else pads
    else:
        pads = int_tuple("padding", padding, 2, minimum=0)
    dil = int_tuple("dilation", dilation, 2)
    for p, k in zip(pads, kernel * 2):
        if p > k // 2:
            raise AttributeValueError(
                f"padding must be at most half the kernel size, got padding={list(pads)} "
                f"for kernel_size={list(kernel)} (at most {[k // 2 for k in kernel]} on each side)"
            )
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise AttributeValueError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    return {
        "kernel_size": kernel,
        "stride": strides,
        "padding": pads,
        "dilation": dil,
        "ceil_mode": bool(ceil_mode),
    }


def pads_lo(padding) -> tuple[int, int]:
    """The top and left padding of a pooling window (``padding`` has 2 or 4 numbers)."""
    return tuple(padding[:2])  # type: ignore[return-value]


def pads_hi(padding) -> tuple[int, int]:
    """The bottom and right padding of a pooling window."""
    return tuple(padding[2:]) if len(padding) == 4 else tuple(padding)  # type: ignore[return-value]


def _check_size(name: str, value) -> tuple[int, int]:
    if value is None:
        raise AttributeValueError(f"{name} is required, got None")
    return int_tuple(name, value, 2)  # type: ignore[return-value]


def _pooled_hw(
    x: TensorType, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False
) -> tuple[int, int]:
    expect_float(x)
    expect_rank(x, 4, "input [N,C,H,W]")
    out = []
    for axis, name in ((0, "height"), (1, "width")):
        n = window_out(
            x.shape[2 + axis], kernel_size[axis], stride[axis], padding[axis], pads_hi(padding)[axis],
            dilation[axis], ceil_mode, what=f"input {name}",
        )  # fmt: skip
        if n < 1:
            raise ShapeError(f"output {name} must be >= 1, got {n} for input {x}")
        out.append(n)
    return out[0], out[1]


def _expect_grad(gy: TensorType, expected: tuple) -> None:
    expect_float(gy, "gradient")
    expect_rank(gy, 4, "gradient [N,C,Ho,Wo]")
    if tuple(gy.shape) != tuple(expected):
        shown = ",".join(str(d) for d in expected)
        raise ShapeError(f"expected gradient of shape [{shown}], got {gy}")


# -- reference helpers -----------------------------------------------------------------------
def _padded(x: np.ndarray, out_hw, kernel, stride, padding, dilation, fill) -> np.ndarray:
    """``x`` padded by ``padding`` on the left and to exactly the extent the windows read on the right."""
    n, c, h, w = x.shape
    need = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, stride, dilation, kernel)]
    xp = np.full((n, c, need[0], need[1]), fill, dtype=x.dtype)
    ph, pw = pads_lo(padding)
    # ceil_mode may read past the right padding; floor mode may not reach the right edge
    hh, ww = min(h, need[0] - ph), min(w, need[1] - pw)
    xp[:, :, ph : ph + hh, pw : pw + ww] = x[:, :, :hh, :ww]
    return xp


def _tap(arr: np.ndarray, i: int, j: int, out_hw, stride, dilation) -> tuple:
    """The index selecting, for every output pixel, the element under kernel tap (i, j)."""
    oh, ow = out_hw
    r0, c0 = i * dilation[0], j * dilation[1]
    return (
        slice(None),
        slice(None),
        slice(r0, r0 + (oh - 1) * stride[0] + 1, stride[0]),
        slice(c0, c0 + (ow - 1) * stride[1] + 1, stride[1]),
    )


def _max_argmax(x, kernel_size, stride, padding, dilation, ceil_mode):
    out_hw = _pooled_hw(TensorType("f64", x.shape), kernel_size, stride, padding, dilation, ceil_mode)
    xp = _padded(x, out_hw, kernel_size, stride, padding, dilation, -np.inf)
    best = np.full(x.shape[:2] + out_hw, -np.inf, dtype=x.dtype)
    arg = np.zeros(best.shape, dtype=np.int64)
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            v = xp[_tap(xp, i, j, out_hw, stride, dilation)]
            # strict ">" keeps the first maximum; a NaN always wins, as in PyTorch's CPU kernel
            take = (v > best) | np.isnan(v)
            best = np.where(take, v, best)
            arg = np.where(take, i * kw + j, arg)
    return best, arg, out_hw, xp.shape


def _divisor(
    size: int, out: int, kernel: int, stride: int, pad: int, pad_hi: int, count_include_pad: bool
) -> np.ndarray:
    """Per-output-position window length along one axis (PyTorch's avg_pool2d rule)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad_hi)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def _avg_divisor(x_hw, out_hw, kernel_size, stride, padding, count_include_pad, divisor_override, dtype):
    if divisor_override is not None:
        return dtype.type(divisor_override)
    hi = pads_hi(padding)
    dh = _divisor(x_hw[0], out_hw[0], kernel_size[0], stride[0], padding[0], hi[0], count_include_pad)
    dw = _divisor(x_hw[1], out_hw[1], kernel_size[1], stride[1], padding[1], hi[1], count_include_pad)
    return np.outer(dh, dw).astype(dtype)


def _adaptive_bounds(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(out)
    return (i * size) // out, -(-((i + 1) * size) // out)


# -- max_pool2d ------------------------------------------------------------------------------
max_pool2d = Op("max_pool2d", fusion=FusionKind.POOL, attrs=_MAX_ATTRS, doc="max over each window")


@max_pool2d.check
def _(kernel_size, stride, padding, dilation, ceil_mode):
    return _check_window(kernel_size, stride, padding, dilation, ceil_mode)


@max_pool2d.shape
def _(x, **attrs):
    return x.with_shape(x.shape[:2] + _pooled_hw(x, **attrs))


@max_pool2d.reference
def _(x, **attrs):
    return _max_argmax(x, **attrs)[0]


@max_pool2d.vjp
def _(g, node, gy):
    return (g.call("max_pool2d_backward", gy, node.inputs[0], **node.attrs),)


max_pool2d_backward = Op(
    "max_pool2d_backward", attrs=_MAX_ATTRS, doc="gy routed to each window's first maximum in x"
)


@max_pool2d_backward.check
def _(kernel_size, stride, padding, dilation, ceil_mode):
    return _check_window(kernel_size, stride, padding, dilation, ceil_mode)


@max_pool2d_backward.shape
def _(gy, x, **attrs):
    _expect_grad(gy, x.shape[:2] + _pooled_hw(x, **attrs))
    if gy.dtype != x.dtype:
        raise ShapeError(f"expected gradient of dtype {x.dtype} like the input, got {gy}")
    return x


@max_pool2d_backward.reference
def _(gy, x, kernel_size, stride, padding, dilation, ceil_mode):
    _, arg, out_hw, padded_shape = _max_argmax(x, kernel_size, stride, padding, dilation, ceil_mode)
    gxp = np.zeros(padded_shape, dtype=gy.dtype)
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            # within one tap the strided positions are distinct, so += cannot collide
            gxp[_tap(gxp, i, j, out_hw, stride, dilation)] += np.where(arg == i * kw + j, gy, 0)
    return _crop(gxp, x.shape, padding)


def _crop(gxp: np.ndarray, shape, padding) -> np.ndarray:
    n, c, h, w = shape
    ph, pw = pads_lo(padding)
    gx = np.zeros(shape, dtype=gxp.dtype)
    hh, ww = min(h, gxp.shape[2] - ph), min(w, gxp.shape[3] - pw)
    gx[:, :, :hh, :ww] = gxp[:, :, ph : ph + hh, pw : pw + ww]
    return gx


# -- avg_pool2d ------------------------------------------------------------------------------
def _check_avg(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override) -> dict:
    out = _check_window(kernel_size, stride, padding, (1, 1), ceil_mode)
    del out["dilation"]
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise AttributeValueError(f"count_include_pad must be a bool, got {count_include_pad!r}")
    out["count_include_pad"] = bool(count_include_pad)
    if divisor_override is not None and (
        isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override < 1
    ):
        raise AttributeValueError(f"divisor_override must be None or an int >= 1, got {divisor_override!r}")
    return out


def _avg_hw(x: TensorType, kernel_size, stride, padding, ceil_mode, **_: object) -> tuple[int, int]:
    return _pooled_hw(x, kernel_size, stride, padding, (1, 1), ceil_mode)


avg_pool2d = Op("avg_pool2d", fusion=FusionKind.POOL, attrs=_AVG_ATTRS, doc="mean over each window")
avg_pool2d.check(_check_avg)


@avg_pool2d.shape
def _(x, **attrs):
    return x.with_shape(x.shape[:2] + _avg_hw(x, **attrs))


@avg_pool2d.reference
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    dil = (1, 1)
    out_hw = _avg_hw(TensorType("f64", x.shape), kernel_size, stride, padding, ceil_mode)
    xp = _padded(x, out_hw, kernel_size, stride, padding, dil, 0)
    total = np.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            total += xp[_tap(xp, i, j, out_hw, stride, dil)]
    div = _avg_divisor(x.shape[2:], out_hw, kernel_size, stride, padding, count_include_pad,
                       divisor_override, x.dtype)  # fmt: skip
    return total / div


@avg_pool2d.vjp
def _(g, node, gy):
    x = node.inputs[0]
    return (g.call("avg_pool2d_backward", gy, input_size=tuple(x.shape[2:]), **node.attrs),)


avg_pool2d_backward = Op(
    "avg_pool2d_backward",
    attrs={**_AVG_ATTRS, "input_size": None},
    doc="gy / divisor spread over each window",
)


@avg_pool2d_backward.check
def _(input_size, **attrs):
    return {**_check_avg(**attrs), "input_size": _check_size("input_size", input_size)}


@avg_pool2d_backward.shape
def _(gy, input_size, **attrs):
    expect_rank(gy, 4, "gradient [N,C,Ho,Wo]")
    x = gy.with_shape(gy.shape[:2] + tuple(input_size))
    _expect_grad(gy, x.shape[:2] + _avg_hw(x, **attrs))
    return x


@avg_pool2d_backward.reference
def _(gy, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, input_size):
    dil = (1, 1)
    out_hw = tuple(gy.shape[2:])
    div = _avg_divisor(input_size, out_hw, kernel_size, stride, padding, count_include_pad,
                       divisor_override, gy.dtype)  # fmt: skip
    share = gy / div
    need = [(o - 1) * s + k for o, s, k in zip(out_hw, stride, kernel_size)]
    gxp = np.zeros(gy.shape[:2] + tuple(need), dtype=gy.dtype)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            gxp[_tap(gxp, i, j, out_hw, stride, dil)] += share
    return _crop(gxp, gy.shape[:2] + tuple(input_size), padding)


# -- adaptive_avg_pool2d ---------------------------------------------------------------------
adaptive_avg_pool2d = Op(
    "adaptive_avg_pool2d", fusion=FusionKind.POOL, attrs={"output_size": None},
    doc="mean over [floor(i*H/oh), ceil((i+1)*H/oh)) x the same for columns",
)  # fmt: skip


@adaptive_avg_pool2d.check
def _(output_size):
    return {"output_size": _check_size("output_size", output_size)}


def _adaptive_input(x: TensorType) -> None:
    expect_float(x)
    expect_rank(x, 4, "input [N,C,H,W]")
    for axis in (2, 3):
        if not isinstance(x.shape[axis], int) or x.shape[axis] < 1:
            raise ShapeError(f"expected input with non-empty spatial dimensions, got {x}")


@adaptive_avg_pool2d.shape
def _(x, output_size):
    _adaptive_input(x)
    return x.with_shape(x.shape[:2] + tuple(output_size))


@adaptive_avg_pool2d.reference
def _(x, output_size):
    (oh, ow), (h, w) = output_size, x.shape[2:]
    hs, he = _adaptive_bounds(h, oh)
    ws, we = _adaptive_bounds(w, ow)
    # a rectangle's mean is the mean of its row means: reduce rows, then columns
    rows = np.stack([x[:, :, s:e, :].mean(axis=2) for s, e in zip(hs, he)], axis=2)
    return np.stack([rows[:, :, :, s:e].mean(axis=3) for s, e in zip(ws, we)], axis=3).astype(x.dtype)


@adaptive_avg_pool2d.vjp
def _(g, node, gy):
    x = node.inputs[0]
    return (
        g.call("adaptive_avg_pool2d_backward", gy, output_size=node.attrs["output_size"],
               input_size=tuple(x.shape[2:])),
    )  # fmt: skip


adaptive_avg_pool2d_backward = Op(
    "adaptive_avg_pool2d_backward", attrs={"output_size": None, "input_size": None},
    doc="gy spread evenly over each adaptive window",
)  # fmt: skip


@adaptive_avg_pool2d_backward.check
def _(output_size, input_size):
    return {
        "output_size": _check_size("output_size", output_size),
        "input_size": _check_size("input_size", input_size),
    }


@adaptive_avg_pool2d_backward.shape
def _(gy, output_size, input_size):
    expect_rank(gy, 4, "gradient [N,C,oh,ow]")
    _expect_grad(gy, gy.shape[:2] + tuple(output_size))
    return gy.with_shape(gy.shape[:2] + tuple(input_size))


@adaptive_avg_pool2d_backward.reference
def _(gy, output_size, input_size):
    (oh, ow), (h, w) = output_size, input_size
    hs, he = _adaptive_bounds(h, oh)
    ws, we = _adaptive_bounds(w, ow)
    cols = np.zeros(gy.shape[:3] + (w,), dtype=gy.dtype)
    for j, (s, e) in enumerate(zip(ws, we)):
        cols[:, :, :, s:e] += gy[:, :, :, j : j + 1] / gy.dtype.type(e - s)
    gx = np.zeros(gy.shape[:2] + (h, w), dtype=gy.dtype)
    for i, (s, e) in enumerate(zip(hs, he)):
        gx[:, :, s:e, :] += cols[:, :, i : i + 1, :] / gy.dtype.type(e - s)
    return gx


# -- the argmax pair the fuse pass uses in training ---------------------------------------------
#: an argmax byte numbers the window taps
MAX_ARGMAX_TAPS = 256


def _check_argmax_window(kernel_size, stride, padding, dilation, ceil_mode) -> dict:
    out = _check_window(kernel_size, stride, padding, dilation, ceil_mode)
    kh, kw = out["kernel_size"]
    if kh * kw > MAX_ARGMAX_TAPS:
        raise AttributeValueError(
            f"an argmax byte holds at most {MAX_ARGMAX_TAPS} window taps, got kernel_size={[kh, kw]}"
        )
    return out


# -- max_pool2d_argmax ------------------------------------------------------------------------
max_pool2d_argmax = Op(
    "max_pool2d_argmax", fusion=FusionKind.POOL, outputs=("", "argmax"), attrs=_MAX_ATTRS,
    doc="max over each window, and the window tap i*kw+j of its first maximum as u8",
)  # fmt: skip
max_pool2d_argmax.check(_check_argmax_window)


@max_pool2d_argmax.shape
def _(x, **attrs):
    y = x.with_shape(x.shape[:2] + _pooled_hw(x, **attrs))
    return y, y.with_dtype("u8")


@max_pool2d_argmax.reference
def _(x, **attrs):
    best, arg, _, _ = _max_argmax(x, **attrs)
    return best, arg.astype(np.uint8)


# -- max_pool2d_backward_argmax -------------------------------------------------------------------
max_pool2d_backward_argmax = Op(
    "max_pool2d_backward_argmax", attrs={**_MAX_ATTRS, "input_size": None},
    doc="gy routed to the window taps stored by max_pool2d_argmax",
)  # fmt: skip


@max_pool2d_backward_argmax.check
def _(input_size, **attrs):
    return {**_check_argmax_window(**attrs), "input_size": _check_size("input_size", input_size)}


@max_pool2d_backward_argmax.shape
def _(gy, argmax, input_size, **attrs):
    if argmax.dtype != "u8":
        raise DTypeError(f"expected argmax of dtype u8, got {argmax}")
    if gy.shape != argmax.shape:
        raise ShapeError(f"expected gradient and argmax of one shape, got {gy} and {argmax}")
    x = gy.with_shape(gy.shape[:2] + tuple(input_size))
    want = x.shape[:2] + _pooled_hw(x, **attrs)
    if tuple(gy.shape) != tuple(want):
        raise ShapeError(f"expected gradient of shape [{','.join(map(str, want))}], got {gy}")
    return x


@max_pool2d_backward_argmax.reference
def _(gy, argmax, kernel_size, stride, padding, dilation, ceil_mode, input_size):
    out_hw = gy.shape[2:]
    need = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, stride, dilation, kernel_size)]
    gxp = np.zeros(
        gy.shape[:2] + (max(need[0], input_size[0] + padding[0]), max(need[1], input_size[1] + padding[1])),
        dtype=gy.dtype,
    )
    kh, kw = kernel_size
    for i in range(kh):
        for j in range(kw):
            gxp[_tap(gxp, i, j, out_hw, stride, dilation)] += np.where(argmax == i * kw + j, gy, 0)
    return _crop(gxp, gy.shape[:2] + tuple(input_size), padding)


# -- max pooling with PyTorch's indices, and max unpooling -----------------------------------------
max_pool2d_with_indices = Op(
    "max_pool2d_with_indices", outputs=("", "indices"), attrs=_MAX_ATTRS,
    doc="max_pool2d and, as i64, each window's first maximum as the flat index iy * W + ix in its plane",
)  # fmt: skip
max_pool2d_with_indices.check(_check_window)


@max_pool2d_with_indices.shape
def _(x, **attrs):
    y = x.with_shape(x.shape[:2] + _pooled_hw(x, **attrs))
    return y, y.with_dtype("i64")


@max_pool2d_with_indices.reference
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    best, arg, (oh, ow), _ = _max_argmax(x, kernel_size, stride, padding, dilation, ceil_mode)
    kw = kernel_size[1]
    ph, pw = pads_lo(padding)
    iy = np.arange(oh).reshape(-1, 1) * stride[0] - ph + (arg // kw) * dilation[0]
    ix = np.arange(ow).reshape(1, -1) * stride[1] - pw + (arg % kw) * dilation[1]
    return best, (iy * x.shape[3] + ix).astype(np.int64)


@max_pool2d_with_indices.vjp
def _(g, node, gy, *_):
    # the indices carry no gradient; the values' gradient is max_pool2d's (same first maximum)
    if gy is None:
        return (None,)
    return (g.call("max_pool2d_backward", gy, node.inputs[0], **node.attrs),)


max_unpool2d = Op(
    "max_unpool2d", attrs={"output_size": None},
    doc="zeros of output_size per plane with x[n, c, i] written at the flat index indices[n, c, i] "
    "(an index outside the plane is skipped; a repeated one keeps the last value in row-major order)",
)  # fmt: skip


@max_unpool2d.check
def _(output_size):
    return {"output_size": _check_size("output_size", output_size)}


def _unpool_types(x: TensorType, indices: TensorType, what: str = "input") -> None:
    expect_float(x, what)
    expect_rank(x, 4, f"{what} [N,C,H,W]")
    if indices.dtype != "i64":
        raise DTypeError(f"expected indices of dtype i64 (max_pool2d's), got {indices}")
    if indices.shape != x.shape:
        raise ShapeError(f"expected indices of the {what}'s shape {x}, got {indices}")


@max_unpool2d.shape
def _(x, indices, output_size):
    _unpool_types(x, indices)
    return x.with_shape(x.shape[:2] + tuple(output_size))


@max_unpool2d.reference
def _(x, indices, output_size):
    n, c = x.shape[:2]
    size = output_size[0] * output_size[1]
    y = np.zeros((n * c, size), dtype=x.dtype)
    flat, src = indices.reshape(n * c, -1), x.reshape(n * c, -1)
    rows = np.broadcast_to(np.arange(n * c).reshape(-1, 1), flat.shape)
    inside = (flat >= 0) & (flat < size)
    # fancy assignment keeps the last of repeated indices, in row-major order
    y[rows[inside], flat[inside]] = src[inside]
    return y.reshape(n, c, *output_size)


@max_unpool2d.vjp
def _(g, node, gy):
    return (g.call("max_unpool2d_backward", gy, node.inputs[1]), None)


max_unpool2d_backward = Op(
    "max_unpool2d_backward", doc="gx[n, c, i] = gy[n, c].flat[indices[n, c, i]] (0 for an index outside)"
)


@max_unpool2d_backward.shape
def _(gy, indices):
    expect_float(gy, "gradient")
    expect_rank(gy, 4, "gradient [N,C,H,W]")
    _unpool_types(gy.with_shape(indices.shape), indices, "gradient")
    if gy.shape[:2] != indices.shape[:2]:
        raise ShapeError(
            f"expected gradient and indices of one batch and channel count, got {gy} and {indices}"
        )
    return gy.with_shape(indices.shape)


@max_unpool2d_backward.reference
def _(gy, indices):
    n, c = gy.shape[:2]
    plane = gy.reshape(n * c, -1)
    flat = indices.reshape(n * c, -1)
    inside = (flat >= 0) & (flat < plane.shape[1])
    gx = np.take_along_axis(plane, np.where(inside, flat, 0), axis=1)
    return np.where(inside, gx, 0).reshape(indices.shape).astype(gy.dtype)
