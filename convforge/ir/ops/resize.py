"""Ops that change a tensor's spatial extent: pad (constant, reflect, replicate, circular) and
interpolate (nearest, nearest-exact, bilinear; ``F.interpolate`` / ``nn.Upsample``).

``pads`` holds, for every dim of the input, how much to add before it and then how much
after it, all the befores first: ``(b0, b1, ..., e0, e1, ...)`` (ONNX ``Pad``'s order; a
negative amount crops, in constant mode). ``F.pad``'s last-dim-first pairs are converted by
the frontend. Output element ``o`` along a dim of input size ``n`` with ``b`` before reads
input index :func:`index_expression` ``(mode, o, b, n)``:

* ``constant``: ``o - b``, or ``value`` outside ``[0, n)``;
* ``reflect``: mirrored about the edges, the edge not repeated (``b, e < n``; ONNX ``reflect``);
* ``replicate``: clamped to ``[0, n - 1]`` (ONNX ``edge``);
* ``circular``: ``(o - b) mod n`` (``b, e <= n``; ONNX ``wrap``).

The backward op sums each output gradient into the input element it read: the centre, plus,
along each padded dim, the outputs of the two pad regions that map onto it. Both Numba
backends generate their pad kernels from :func:`index_expression`.

``interpolate`` resizes the two spatial dims of NCHW input to ``size`` with PyTorch's
coordinate rules, computed in the input's dtype as PyTorch does (:func:`taps`): output ``o``
reads source coordinate ``src = o * scale`` (``nearest``), ``floor((o + 0.5) * scale)``
(``nearest-exact``), or ``(o + 0.5) * scale - 0.5`` clamped at 0 (``bilinear``), or
``o * (in - 1) / (out - 1)`` with ``align_corners``; ``scale`` is ``1 / scales`` when the
caller gave a scale factor, else ``in / out``. Bilinear blends input rows/columns
``floor(src)`` and the next one (clamped to the edge) by ``src - floor(src)``.
"""

from __future__ import annotations

import numpy as np

from convforge.errors import AttributeValueError, ShapeError
from convforge.ir.ops.common import expect_float, int_tuple
from convforge.ir.ops.registry import FusionKind, Op
from convforge.ir.types import BATCH, TensorType

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def index_expression(mode: str, o: str, b: str, n: str) -> str:
    """The input index output index ``o`` reads along a dim (``b`` padded before, size ``n``), as
    a Python expression both Numba backends compile; in constant mode it is ``-1`` outside."""
    j = f"({o} - {b})"
    if mode == "constant":
        return f"({j} if 0 <= {j} < {n} else -1)"
    if mode == "replicate":
        return f"min(max({j}, 0), {n} - 1)"
    if mode == "reflect":
        return f"(abs({j}) if {j} < {n} else 2 * ({n} - 1) - {j})"
    if mode == "circular":
        return f"(({j}) % {n})"
    raise ValueError(f"unknown pad mode {mode!r}")


def _check_pad(pads, mode, value) -> dict:
    if mode not in PAD_MODES:
        raise AttributeValueError(f"mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    if not isinstance(pads, (tuple, list)) or not pads or len(pads) % 2:
        raise AttributeValueError(f"pads must be 2 * rank ints (all befores, then all afters), got {pads!r}")
    if any(isinstance(p, bool) or not isinstance(p, int) for p in pads):
        raise AttributeValueError(f"pads must be ints, got {pads!r}")
    if mode != "constant" and min(pads) < 0:
        raise AttributeValueError(
            f"negative pads (cropping) need mode 'constant', got {pads!r} in mode {mode!r}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeValueError(f"value must be a number, got {value!r}")
    return {"pads": tuple(int(p) for p in pads), "value": float(value)}


def _pad_shape(x: TensorType, pads, mode) -> TensorType:
    expect_float(x)
    rank = x.rank
    if len(pads) != 2 * rank:
        raise ShapeError(
            f"expected {2 * rank} pads for input {x} of rank {rank}, got {len(pads)}: {list(pads)}"
        )
    shape = []
    for d, size in enumerate(x.shape):
        b, e = pads[d], pads[d + rank]
        if size == BATCH:
            if b or e:
                raise ShapeError(f"cannot pad the batch dimension N (dim {d}) of input {x}")
            shape.append(size)
            continue
        limit = {"reflect": size - 1, "circular": size}.get(mode)
        if limit is not None and max(b, e) > limit:
            raise ShapeError(
                f"{mode} padding of dim {d} must be at most {limit} (input size {size} - "
                f"{1 if mode == 'reflect' else 0}), got ({b}, {e}) for input {x}"
            )
        if mode == "replicate" and size == 0 and (b or e):
            raise ShapeError(f"cannot replicate-pad the empty dim {d} of input {x}")
        if size + b + e < 0:
            raise ShapeError(f"pads ({b}, {e}) crop more than dim {d} of input {x} holds")
        shape.append(size + b + e)
    return x.with_shape(tuple(shape))


pad = Op(
    "pad", fusion=FusionKind.INJECTIVE, attrs={"pads": None, "mode": "constant", "value": 0.0},
    doc="x padded by pads (befores, then afters, per dim): constant (value), reflect, replicate, circular",
)  # fmt: skip
pad.check(_check_pad)


@pad.shape
def _(x, pads, mode, value):
    return _pad_shape(x, pads, mode)


@pad.reference
def _(x, pads, mode, value):
    rank = x.ndim
    index = tuple(_source_index(mode, x.shape[d], pads[d], pads[d + rank]) for d in range(rank))
    grid = np.ix_(*(np.maximum(i, 0) for i in index))
    y = x[grid]
    if mode == "constant":
        outside = np.zeros(y.shape, dtype=bool)
        for d, i in enumerate(index):
            shape = [1] * rank
            shape[d] = -1
            outside |= (i < 0).reshape(shape)
        y = np.where(outside, x.dtype.type(value), y)
    return y.astype(x.dtype)


def _source_index(mode: str, n: int, b: int, e: int) -> np.ndarray:
    """The input index every output position reads along one dim (``-1``: constant fill)."""
    o = np.arange(n + b + e)
    j = o - b
    if mode == "constant":
        return np.where((j >= 0) & (j < n), j, -1)
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "reflect":
        return np.where(j < n, np.abs(j), 2 * (n - 1) - j)
    return j % n


@pad.vjp
def _(g, node, gy):
    return (g.call("pad_backward", gy, **{k: node.attrs[k] for k in ("pads", "mode")}),)


pad_backward = Op(
    "pad_backward", attrs={"pads": None, "mode": "constant"},
    doc="gy summed into the input element each output read (the gradient of pad)",
)  # fmt: skip


@pad_backward.check
def _(pads, mode):
    out = _check_pad(pads, mode, 0.0)
    del out["value"]
    return out


def _unpadded(gy: TensorType, pads) -> TensorType:
    rank = gy.rank
    if len(pads) != 2 * rank:
        raise ShapeError(f"expected {2 * rank} pads for gradient {gy} of rank {rank}, got {len(pads)}")
    shape = []
    for d, size in enumerate(gy.shape):
        b, e = pads[d], pads[d + rank]
        if size == BATCH and (b or e):
            raise ShapeError(f"cannot pad the batch dimension N (dim {d}) of gradient {gy}")
        n = size if size == BATCH else size - b - e
        if n != BATCH and n < 0:
            raise ShapeError(f"gradient {gy} is smaller along dim {d} than its pads ({b}, {e})")
        shape.append(n)
    return gy.with_shape(tuple(shape))


@pad_backward.shape
def _(gy, pads, mode):
    x = _unpadded(gy, pads)
    _pad_shape(x, pads, mode)  # the forward's checks: the gradient of a valid pad
    return x


@pad_backward.reference
def _(gy, pads, mode):
    rank = gy.ndim
    gx = gy
    for d in range(rank):
        b, e = pads[d], pads[d + rank]
        if b == 0 and e == 0:
            continue
        n = gx.shape[d] - b - e
        index = _source_index(mode, n, b, e)
        moved = np.moveaxis(gx, d, 0)
        out = np.zeros((n, *moved.shape[1:]), dtype=gy.dtype)
        keep = index >= 0
        np.add.at(out, index[keep], moved[keep])
        gx = np.moveaxis(out, 0, d)
    return np.ascontiguousarray(gx)


# -- interpolate ------------------------------------------------------------------------------
INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear")


def taps(
    in_size: int, out_size: int, mode: str, align_corners: bool, scale: float | None, dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, for every output index: the two input indices it reads and the weight
    of the second (``(i0, i1, lam)``; nearest modes read one, ``i1 = i0``, ``lam = 0``)."""
    t = np.dtype(dtype).type
    o = np.arange(out_size).astype(dtype)
    if mode == "bilinear" and align_corners:
        step = t(in_size - 1) / t(out_size - 1) if out_size > 1 else t(0)
    elif scale is not None and scale > 0:
        step = t(1.0 / scale)
    else:
        step = t(in_size) / t(out_size)
    if mode == "nearest":
        i0 = np.minimum(np.floor(o * step).astype(np.int64), in_size - 1)
        return i0, i0, np.zeros(out_size, dtype)
    if mode == "nearest-exact":
        i0 = np.minimum(np.floor((o + t(0.5)) * step).astype(np.int64), in_size - 1)
        return i0, i0, np.zeros(out_size, dtype)
    src = o * step if align_corners else np.maximum(step * (o + t(0.5)) - t(0.5), t(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0.astype(dtype)).astype(dtype)


def axis_taps(attrs, in_hw, dtype) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """:func:`taps` for the height and the width of an interpolate node's input."""
    scales = attrs["scales"] or (None, None)
    return tuple(
        taps(in_hw[a], attrs["size"][a], attrs["mode"], attrs["align_corners"], scales[a], dtype)
        for a in (0, 1)
    )


def transposed_taps(
    i0: np.ndarray, i1: np.ndarray, lam: np.ndarray, in_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The taps read backwards, for gathering gradients: input index ``i`` receives from the
    outputs ``index[start[i]:start[i + 1]]`` with ``weight[...]`` (``(start, index, weight)``)."""
    outputs = np.concatenate([np.arange(len(i0)), np.arange(len(i1))])
    inputs = np.concatenate([i0, i1])
    weights = np.concatenate([lam.dtype.type(1) - lam, lam])
    keep = weights != 0
    outputs, inputs, weights = outputs[keep], inputs[keep], weights[keep]
    order = np.lexsort((outputs, inputs))
    start = np.searchsorted(inputs[order], np.arange(in_size + 1))
    return start.astype(np.int64), outputs[order].astype(np.int64), weights[order]


def _check_interpolate(size, mode, align_corners, scales) -> dict:
    if mode not in INTERPOLATE_MODES:
        raise AttributeValueError(
            f"mode must be one of {', '.join(map(repr, INTERPOLATE_MODES))}, got {mode!r}"
        )
    if not isinstance(align_corners, (bool, np.bool_)):
        raise AttributeValueError(f"align_corners must be a bool, got {align_corners!r}")
    if align_corners and mode != "bilinear":
        raise AttributeValueError(f"align_corners=True applies to mode 'bilinear' only, got mode {mode!r}")
    if size is None:
        raise AttributeValueError("size is required (the output height and width), got None")
    out = {"size": int_tuple("size", size, 2, minimum=1), "align_corners": bool(align_corners)}
    if scales is not None:
        if not isinstance(scales, (tuple, list)) or len(scales) != 2:
            raise AttributeValueError(f"scales must be None or 2 positive numbers, got {scales!r}")
        for v in scales:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise AttributeValueError(f"scales must be None or 2 positive numbers, got {scales!r}")
        out["scales"] = tuple(float(v) for v in scales)
    return out


_INTERPOLATE_ATTRS = {"size": None, "mode": "nearest", "align_corners": False, "scales": None}


def _spatial_input(x: TensorType, what: str = "input") -> None:
    expect_float(x, what)
    if x.rank != 4:
        raise ShapeError(f"expected {what} [N,C,H,W] of rank 4, got {x}")
    if any(not isinstance(d, int) or d < 1 for d in x.shape[2:]):
        raise ShapeError(f"expected {what} with non-empty spatial dims, got {x}")


interpolate = Op(
    "interpolate", attrs=_INTERPOLATE_ATTRS,
    doc="x[N,C,H,W] resized to size (nearest, nearest-exact, bilinear), PyTorch's coordinates",
)  # fmt: skip
interpolate.check(_check_interpolate)


@interpolate.shape
def _(x, size, mode, align_corners, scales):
    _spatial_input(x)
    return x.with_shape((*x.shape[:2], *size))


@interpolate.reference
def _(x, **attrs):
    (h0, h1, lh), (w0, w1, lw) = axis_taps(attrs, x.shape[2:], x.dtype)
    lh, lw = lh.reshape(-1, 1), lw.reshape(1, -1)
    one = x.dtype.type(1)
    top = x[:, :, h0][:, :, :, w0] * (one - lw) + x[:, :, h0][:, :, :, w1] * lw
    bottom = x[:, :, h1][:, :, :, w0] * (one - lw) + x[:, :, h1][:, :, :, w1] * lw
    return (top * (one - lh) + bottom * lh).astype(x.dtype)


@interpolate.vjp
def _(g, node, gy):
    x = node.inputs[0]
    return (g.call("interpolate_backward", gy, input_size=tuple(x.shape[2:]), **node.attrs),)


interpolate_backward = Op(
    "interpolate_backward", attrs={**_INTERPOLATE_ATTRS, "input_size": None},
    doc="gy spread back to the input pixels each output read, by the same weights",
)  # fmt: skip


@interpolate_backward.check
def _(input_size, **attrs):
    return {**_check_interpolate(**attrs), "input_size": int_tuple("input_size", input_size, 2, minimum=1)}


@interpolate_backward.shape
def _(gy, size, mode, align_corners, scales, input_size):
    _spatial_input(gy, "gradient")
    if tuple(gy.shape[2:]) != tuple(size):
        raise ShapeError(f"expected gradient of spatial size {list(size)}, got {gy}")
    return gy.with_shape((*gy.shape[:2], *input_size))


@interpolate_backward.reference
def _(gy, input_size, **attrs):
    (h0, h1, lh), (w0, w1, lw) = axis_taps(attrs, input_size, gy.dtype)
    rows = _spread(np.moveaxis(gy, 2, 0), h0, h1, lh, input_size[0])  # [H, N, C, Wo]
    cols = _spread(np.moveaxis(rows, 3, 0), w0, w1, lw, input_size[1])  # [W, H, N, C]
    return np.ascontiguousarray(np.transpose(cols, (2, 3, 1, 0)))


def _spread(g: np.ndarray, i0: np.ndarray, i1: np.ndarray, lam: np.ndarray, size: int) -> np.ndarray:
    """The adjoint of blending along axis 0: ``out[i0[o]] += (1 - lam) g[o]``, ``out[i1[o]] += lam g[o]``."""
    w = lam.reshape((-1,) + (1,) * (g.ndim - 1))
    out = np.zeros((size, *g.shape[1:]), dtype=g.dtype)
    np.add.at(out, i0, g * (g.dtype.type(1) - w))
    np.add.at(out, i1, g * w)
    return out
