"""ONNX op -> IR ops: one converter per ONNX op type (or family of them).

A converter reads its node through a :class:`~convforge.onnx.importer.NodeContext`:
attributes (``cx.attr``), the schema version in force (``cx.since``), inputs as runtime
values or constants (``cx.value``, ``cx.const``), and appends IR ops with ``cx.emit``. An
attribute value outside what the IR computes exactly is refused with ``cx.fail`` /
``cx.unsupported_attr``, naming the attribute and what is supported. Where ONNX has no
single IR op the converter writes the exact composition (``Gemm`` = ``linear`` or
``matmul``, then ``scale`` and ``add``; ``PRelu`` = ``relu(x) + slope * (x - relu(x))``;
opset < 13 ``Softmax`` = ``reshape`` + ``softmax`` + ``reshape``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convforge.ir.types import BATCH, TensorType
from convforge.onnx import folding
from convforge.onnx.importer import NodeContext, Ref, converts

INT64_MAX = 2**63 - 1


# =========================================================================================
# Helpers
# =========================================================================================
def _out(cx: NodeContext, ref: Ref) -> None:
    cx.alias(0, ref)


def _emit1(cx: NodeContext, op: str, inputs: Sequence[Ref], attrs: dict | None = None) -> Ref:
    return cx.emit(op, inputs, attrs)[0]


def _reshape(cx: NodeContext, ref: Ref, shape: Sequence[Any]) -> Ref:
    return _emit1(cx, "reshape", [ref], {"shape": tuple(shape)})


def _type_of(cx: NodeContext, ref: Ref):
    return cx.conv.operand(ref).type


def _axis(cx: NodeContext, axis: int, rank: int, name: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise cx.unsupported_attr(name, axis, f"an axis in [{-rank}, {rank - 1}] for a rank-{rank} input")
    return axis + rank if axis < 0 else axis


def _numel(dims: Sequence[Any]) -> int:
    return int(np.prod([d for d in dims if d != BATCH], dtype=np.int64))


def _spatial_pads(
    cx: NodeContext, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:  # fmt: skip
    """(begin pads, end pads) per spatial dim from ``pads`` or ``auto_pad``."""
    nd = len(spatial)
    auto = cx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = cx.ints("pads", [0] * (2 * nd))
        if len(pads) != 2 * nd or any(p < 0 for p in pads):
            raise cx.unsupported_attr("pads", pads, f"{2 * nd} non-negative ints")
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise cx.unsupported_attr("auto_pad", auto, "NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    lo, hi = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        lo.append(small if auto == "SAME_UPPER" else big)
        hi.append(big if auto == "SAME_UPPER" else small)
    return lo, hi


def _padding_attr(lo: Sequence[int], hi: Sequence[int]) -> tuple[int, ...]:
    return tuple(lo) if list(lo) == list(hi) else tuple(lo) + tuple(hi)


def _window_attrs(cx: NodeContext, nd: int, kernel: Sequence[int]) -> tuple[list[int], list[int]]:
    strides = cx.ints("strides", [1] * nd)
    dilations = cx.ints("dilations", [1] * nd)
    if len(strides) != nd or any(s < 1 for s in strides):
        raise cx.unsupported_attr("strides", strides, f"{nd} positive ints")
    if len(dilations) != nd or any(d < 1 for d in dilations):
        raise cx.unsupported_attr("dilations", dilations, f"{nd} positive ints")
    if len(kernel) != nd:
        raise cx.unsupported_attr("kernel_shape", list(kernel), f"{nd} ints")
    return strides, dilations


# =========================================================================================
# Convolution
# =========================================================================================
@converts("Conv")
def _(cx: NodeContext) -> None:
    x, nd, kernel, strides, dilations = _conv_window(cx, "convolution")
    lo, hi = _spatial_pads(cx, x.shape[2:], kernel, strides, dilations)
    attrs = {
        "stride": tuple(strides),
        "padding": _padding_attr(lo, hi),
        "dilation": tuple(dilations),
        "groups": int(cx.attr("group", 1)),
    }
    inputs = [cx.value(0), cx.value(1)] + ([cx.value(2)] if cx.has(2) else [])
    _out(cx, _emit1(cx, f"conv{nd}d", inputs, attrs))


@converts("ConvTranspose")
def _(cx: NodeContext) -> None:
    x, nd, kernel, strides, dilations = _conv_window(cx, "transposed convolution")
    w = cx.type(1)
    out_pad = cx.ints("output_padding", [0] * nd)
    if len(out_pad) != nd:
        raise cx.unsupported_attr("output_padding", out_pad, f"{nd} ints")
    lo, hi, out_pad = _transpose_pads(cx, x.shape[2:], kernel, strides, dilations, out_pad)
    src, weight, bias = cx.value(0), cx.value(1), cx.value(2) if cx.has(2) else None
    if nd == 1:  # as 2-D over [N, C, 1, L]
        src = _reshape(cx, src, (x.shape[0], x.shape[1], 1, x.shape[2]))
        weight = _reshape(cx, weight, (w.shape[0], w.shape[1], 1, w.shape[2]))
        kernel, strides, dilations = ([1] + list(v) for v in (kernel, strides, dilations))
        lo, hi, out_pad = [0] + lo, [0] + hi, [0] + list(out_pad)
    attrs = {
        "stride": tuple(strides),
        "padding": _padding_attr(lo, hi),
        "output_padding": tuple(out_pad),
        "dilation": tuple(dilations),
        "groups": int(cx.attr("group", 1)),
    }
    y = _emit1(cx, "conv_transpose2d", [src, weight] + ([bias] if bias is not None else []), attrs)
    if nd == 1:
        n, c, _, length = _type_of(cx, y).shape
        y = _reshape(cx, y, (n, c, length))
    _out(cx, y)


def _conv_window(cx: NodeContext, what: str) -> tuple[TensorType, int, list[int], list[int], list[int]]:
    """(input type, spatial rank, kernel, strides, dilations) of a Conv / ConvTranspose node;
    only 1-D and 2-D, and a ``kernel_shape`` must agree with the weight."""
    x, w = cx.type(0), cx.type(1)
    nd = x.rank - 2
    if nd not in (1, 2):
        raise cx.fail(f"{nd}-D {what} (input {x}) is not supported; convforge has {what} 1-D and 2-D")
    kernel = list(w.shape[2:])
    if cx.attr("kernel_shape") is not None and cx.ints("kernel_shape") != kernel:
        raise cx.unsupported_attr("kernel_shape", cx.ints("kernel_shape"), f"the weight's {kernel}")
    strides, dilations = _window_attrs(cx, nd, kernel)
    return x, nd, kernel, strides, dilations


def _transpose_pads(
    cx: NodeContext, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int], out_pad: list[int],
) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
    """(begin pads, end pads, output_padding) of a ConvTranspose from ``pads``, ``auto_pad``
    or ``output_shape`` (ONNX: total padding = stride * (in - 1) + output_padding +
    ((kernel - 1) * dilation + 1) - out, split half and half, the odd one at the end for
    SAME_UPPER and at the beginning otherwise)."""
    nd = len(spatial)
    auto = cx.attr("auto_pad", "NOTSET")
    target = cx.ints("output_shape")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * s for size, s in zip(spatial, strides)]
    if target is None:
        if auto == "VALID":
            return [0] * nd, [0] * nd, out_pad
        if auto not in ("NOTSET", ""):
            raise cx.unsupported_attr("auto_pad", auto, "NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        pads = cx.ints("pads", [0] * (2 * nd))
        if len(pads) != 2 * nd or any(p < 0 for p in pads):
            raise cx.unsupported_attr("pads", pads, f"{2 * nd} non-negative ints")
        return pads[:nd], pads[nd:], out_pad
    target = list(target)[-nd:]
    lo, hi, extra = [], [], []
    for size, k, s, d, op, want in zip(spatial, kernel, strides, dilations, out_pad, target):
        total = s * (size - 1) + op + (k - 1) * d + 1 - want
        grow = max(-total, 0)  # the output is larger than the kernel reaches: output_padding
        total = max(total, 0)
        small, big = total // 2, total - total // 2
        lo.append(small if auto == "SAME_UPPER" else big)
        hi.append(big if auto == "SAME_UPPER" else small)
        extra.append(op + grow)
    return lo, hi, extra


# =========================================================================================
# Pooling
# =========================================================================================
def _as_2d(cx: NodeContext) -> tuple[Ref, bool]:
    """The pooled input as NCHW: a 1-D (NCL) input is viewed as [N, C, 1, L]."""
    x = cx.type(0)
    if x.rank not in (3, 4):
        raise cx.fail(f"{x.rank - 2}-D pooling (input {x}) is not supported; convforge pools 1-D and 2-D")
    if x.rank == 4:
        return cx.value(0), False
    n, c, length = x.shape
    return _reshape(cx, cx.value(0), (n, c, 1, length)), True


def _pool(cx: NodeContext, kind: str) -> None:
    cx.only_first_output("the max-pool Indices output")
    x = cx.type(0)
    nd = x.rank - 2
    kernel = cx.ints("kernel_shape")
    if kernel is None:
        raise cx.fail("attribute kernel_shape is required")
    strides, dilations = _window_attrs(cx, nd, kernel)
    lo, hi = _spatial_pads(cx, x.shape[2:], kernel, strides, dilations)
    ceil = bool(cx.attr("ceil_mode", 0))
    count_pad = kind == "avg_pool2d" and bool(cx.attr("count_include_pad", 0))
    src, one_d = _as_2d(cx)
    if one_d:
        kernel, strides, dilations = ([1] + list(v) for v in (kernel, strides, dilations))
        lo, hi = [0] + list(lo), [0] + list(hi)
    if kind == "avg_pool2d" and any(d != 1 for d in dilations):
        raise cx.unsupported_attr("dilations", cx.ints("dilations"), "1 (convforge's avg_pool2d has none)")
    if any(p > k // 2 for p, k in zip(lo + hi, kernel + kernel)):
        src, lo, hi = _explicit_padding(cx, src, kind, count_pad, lo, hi)
    attrs: dict[str, Any] = {
        "kernel_size": tuple(kernel),
        "stride": tuple(strides),
        "padding": _padding_attr(lo, hi),
        "ceil_mode": ceil,
    }
    if kind == "max_pool2d":
        attrs["dilation"] = tuple(dilations)
    else:
        attrs["count_include_pad"] = count_pad
    y = _emit1(cx, kind, [src], attrs)
    if one_d:
        n, c, _, length = _type_of(cx, y).shape
        y = _reshape(cx, y, (n, c, length))
    _out(cx, y)


def _explicit_padding(
    cx: NodeContext, src: Ref, kind: str, count_pad: bool, lo: list[int], hi: list[int]
) -> tuple[Ref, list[int], list[int]]:
    """Pads wider than half the kernel as a ``pad`` op before the pool: -inf for a max pool
    (padding never wins), zeros for an average that counts the padding. An average over
    the input alone with such pads has no exact rewrite."""
    if kind == "avg_pool2d" and not count_pad:
        raise cx.unsupported_attr(
            "pads", cx.ints("pads") or cx.attr("auto_pad"),
            "at most half the kernel on each side when count_include_pad=0",
        )  # fmt: skip
    value = -math.inf if kind == "max_pool2d" else 0.0
    pads = (0, 0, *lo, 0, 0, *hi)
    padded = _emit1(cx, "pad", [src], {"pads": pads, "mode": "constant", "value": value})
    return padded, [0, 0], [0, 0]


@converts("MaxPool")
def _(cx: NodeContext) -> None:
    _pool(cx, "max_pool2d")


@converts("AveragePool")
def _(cx: NodeContext) -> None:
    _pool(cx, "avg_pool2d")


@converts("GlobalAveragePool", "GlobalMaxPool")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    if x.rank < 3:
        raise cx.fail(f"expects an input of rank >= 3 (N, C, spatial...), got {x}")
    if cx.op_type == "GlobalAveragePool" and x.rank == 4:
        _out(cx, _emit1(cx, "adaptive_avg_pool2d", [cx.value(0)], {"output_size": (1, 1)}))
        return
    if cx.op_type == "GlobalMaxPool" and x.rank == 4:
        plane = tuple(x.shape[2:])
        _out(cx, _emit1(cx, "max_pool2d", [cx.value(0)], {"kernel_size": plane, "stride": plane}))
        return
    op = "reduce_mean" if cx.op_type == "GlobalAveragePool" else "reduce_max"
    dims = tuple(range(2, x.rank))
    _out(cx, _emit1(cx, op, [cx.value(0)], {"dims": dims, "keepdim": True}))


# =========================================================================================
# Normalisation and dropout
# =========================================================================================
@converts("BatchNormalization")
def _(cx: NodeContext) -> None:
    if not cx.attr("spatial", 1):
        raise cx.unsupported_attr("spatial", 0, "1 (statistics per channel)")
    if cx.attr("training_mode", 0):
        raise cx.unsupported_attr("training_mode", 1, "0 (inference: the running statistics)")
    cx.only_first_output("the training-mode statistics")
    x = cx.type(0)
    if x.rank not in (2, 3, 4):
        raise cx.fail(f"expects an input of rank 2, 3 or 4 ([N,C], [N,C,L], [N,C,H,W]), got {x}")
    eps = float(cx.attr("epsilon", 1e-5))
    momentum = float(cx.attr("momentum", 0.9))
    inputs = [cx.value(0), cx.value(1), cx.value(2), cx.value(3, "buffer"), cx.value(4, "buffer")]
    attrs = {"eps": eps, "momentum": 1.0 - momentum}  # ONNX keeps `momentum` of the old statistics
    _out(cx, cx.emit("batch_norm", inputs, attrs, kind="batch_norm")[0])


@converts("LRN")
def _(cx: NodeContext) -> None:
    size = cx.attr("size")
    if size is None or int(size) < 1:
        raise cx.unsupported_attr("size", size, "a positive int")
    size = int(size)
    attrs = {
        "size": size,
        "alpha": float(cx.attr("alpha", 1e-4)),
        "beta": float(cx.attr("beta", 0.75)),
        "k": float(cx.attr("bias", 1.0)),
        "before": (size - 1) // 2,  # ONNX: channels [c - floor((size-1)/2), c + ceil((size-1)/2)]
    }
    _out(cx, _emit1(cx, "local_response_norm", [cx.value(0)], attrs))


@converts("LayerNormalization")
def _(cx: NodeContext) -> None:
    cx.only_first_output("the mean and inverse standard deviation outputs")
    x = cx.type(0)
    axis = _axis(cx, int(cx.attr("axis", -1)), x.rank)
    if x.shape[0] == BATCH and axis == 0:
        raise cx.fail("axis=0 normalises over the batch; convforge's layer_norm normalises each sample")
    attrs = {"normalized_shape": tuple(x.shape[axis:]), "eps": float(cx.attr("epsilon", 1e-5))}
    inputs = [cx.value(0), cx.value(1)] + ([cx.value(2)] if cx.has(2) else [])
    _out(cx, _emit1(cx, "layer_norm", inputs, attrs))


@converts("GroupNormalization", "InstanceNormalization")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    if x.rank < 3:
        raise cx.fail(f"expects an input [N, C, ...] of rank >= 3, got {x}")
    channels = x.shape[1]
    groups = channels if cx.op_type == "InstanceNormalization" else int(cx.attr("num_groups", 0))
    if cx.op_type == "GroupNormalization" and cx.since < 21 and groups != channels:
        raise cx.fail(
            f"GroupNormalization-{cx.since} scales per group (scale of shape [{groups}]); convforge's "
            "group_norm scales per channel as opset 21 does (supported here: num_groups == channels)"
        )
    attrs = {"num_groups": groups, "eps": float(cx.attr("epsilon", 1e-5))}
    _out(cx, _emit1(cx, "group_norm", [cx.value(0), cx.value(1), cx.value(2)], attrs))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@converts("Pad")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    mode = cx.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise cx.unsupported_attr("mode", mode, ", ".join(_PAD_MODES))
    if cx.since >= 11:
        pads = cx.const_ints(1, "pads")
        value = float(np.asarray(cx.const(2, "constant_value")).reshape(())) if cx.has(2) else 0.0
        axes = cx.const_ints(3, "axes") if cx.has(3) else list(range(x.rank))
    else:
        pads = cx.ints("pads") if cx.attr("pads") is not None else cx.ints("paddings")
        value = float(cx.attr("value", 0.0))
        axes = list(range(x.rank))
    axes = [_axis(cx, int(a), x.rank, "axes") for a in axes]
    if pads is None or len(pads) != 2 * len(axes):
        raise cx.unsupported_attr("pads", pads, f"{2 * len(axes)} ints (befores, then afters)")
    full = [0] * (2 * x.rank)
    for i, a in enumerate(axes):
        full[a], full[a + x.rank] = pads[i], pads[i + len(axes)]
    if x.shape and x.shape[0] == BATCH and (full[0] or full[x.rank]):
        raise cx.fail("padding the dynamic batch dimension is not supported")
    if not any(full):
        _out(cx, cx.value(0))
        return
    attrs = {"pads": tuple(full), "mode": _PAD_MODES[mode], "value": value}
    _out(cx, _emit1(cx, "pad", [cx.value(0)], attrs))


@converts("Dropout")
def _(cx: NodeContext) -> None:
    cx.only_first_output("the dropout mask")
    if cx.since >= 12:
        ratio = float(np.asarray(cx.const(1, "ratio")).reshape(())) if cx.has(1) else 0.5
        if cx.has(2) and bool(np.asarray(cx.const(2, "training_mode")).reshape(())):
            raise cx.fail("training_mode=True draws a random mask at inference; convforge imports inference")
    else:
        ratio = float(cx.attr("ratio", 0.5))
    if not 0.0 <= ratio < 1.0:
        raise cx.unsupported_attr("ratio", ratio, "0 <= ratio < 1")
    _out(cx, cx.emit("dropout", [cx.value(0)], {"p": ratio}, kind="dropout")[0])


@converts("Identity")
def _(cx: NodeContext) -> None:
    _out(cx, cx.value(0))


# =========================================================================================
# Activations
# =========================================================================================
_UNARY = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Neg": "neg",
    "Reciprocal": "reciprocal",
    "HardSwish": "hardswish",
    "Mish": "mish",
}


@converts(*_UNARY)
def _(cx: NodeContext) -> None:
    _out(cx, _emit1(cx, _UNARY[cx.op_type], [cx.value(0)]))


@converts("LeakyRelu")
def _(cx: NodeContext) -> None:
    _out(cx, _emit1(cx, "leaky_relu", [cx.value(0)], {"negative_slope": float(cx.attr("alpha", 0.01))}))


@converts("Elu")
def _(cx: NodeContext) -> None:
    _out(cx, _emit1(cx, "elu", [cx.value(0)], {"alpha": float(cx.attr("alpha", 1.0))}))


@converts("Selu")
def _(cx: NodeContext) -> None:
    alpha = float(cx.attr("alpha", 1.67326319217681884765625))
    gamma = float(cx.attr("gamma", 1.05070102214813232421875))
    y = _emit1(cx, "elu", [cx.value(0)], {"alpha": alpha})
    _out(cx, _emit1(cx, "scale", [y], {"factor": gamma}))


@converts("HardSigmoid")
def _(cx: NodeContext) -> None:
    attrs = {"alpha": float(cx.attr("alpha", 0.2)), "beta": float(cx.attr("beta", 0.5))}
    _out(cx, _emit1(cx, "hardsigmoid", [cx.value(0)], attrs))


@converts("Softplus")
def _(cx: NodeContext) -> None:
    _out(cx, _emit1(cx, "softplus", [cx.value(0)]))


@converts("Gelu")
def _(cx: NodeContext) -> None:
    approximate = cx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise cx.unsupported_attr("approximate", approximate, "'none', 'tanh'")
    _out(cx, _emit1(cx, "gelu" if approximate == "none" else "gelu_tanh", [cx.value(0)]))


@converts("Clip")
def _(cx: NodeContext) -> None:
    if cx.since >= 11:
        lo = float(np.asarray(cx.const(1, "min")).reshape(())) if cx.has(1) else -math.inf
        hi = float(np.asarray(cx.const(2, "max")).reshape(())) if cx.has(2) else math.inf
    else:
        lo = float(cx.attr("min", -math.inf))
        hi = float(cx.attr("max", math.inf))
    if math.isnan(lo) or math.isnan(hi):
        raise cx.unsupported_attr("min/max", (lo, hi), "numbers")
    if lo > hi:  # ONNX: every element becomes max
        lo = hi
    if lo == 0.0 and hi == 6.0:
        y = _emit1(cx, "relu6", [cx.value(0)])
    elif lo == 0.0 and hi == math.inf:
        y = _emit1(cx, "relu", [cx.value(0)])
    else:
        y = _emit1(cx, "hardtanh", [cx.value(0)], {"min_val": lo, "max_val": hi})
    _out(cx, y)


@converts("PRelu")
def _(cx: NodeContext) -> None:
    x = cx.value(0)
    slope = cx.value(1)
    xt, st = cx.type(0), cx.type(1)
    if cx.since < 7 and st.rank == 1 and xt.rank > 2 and st.shape[0] == xt.shape[1] != 1:
        slope = _reshape(cx, slope, (st.shape[0],) + (1,) * (xt.rank - 2))  # PRelu-6: one slope per channel
    positive = _emit1(cx, "relu", [x])
    negative = _emit1(cx, "sub", [x, positive])  # min(x, 0), exactly
    scaled = _emit1(cx, "mul", [slope, negative])  # slope broadcasts to x (unidirectionally)
    _out(cx, _emit1(cx, "add", [positive, scaled]))


@converts("Softmax", "LogSoftmax")
def _(cx: NodeContext) -> None:
    op = "softmax" if cx.op_type == "Softmax" else "log_softmax"
    x = cx.type(0)
    if cx.since >= 13:
        axis = _axis(cx, int(cx.attr("axis", -1)), x.rank)
        _out(cx, _emit1(cx, op, [cx.value(0)], {"dim": axis}))
        return
    # opset < 13: softmax over the dims from `axis` on, flattened into one
    axis = _axis(cx, int(cx.attr("axis", 1)), x.rank)
    if axis == x.rank - 1:
        _out(cx, _emit1(cx, op, [cx.value(0)], {"dim": axis}))
        return
    if axis == 0 and x.shape and x.shape[0] == BATCH:
        raise folding.Unresolved(f"{cx.label}: axis=0 spans the dynamic batch; load with a fixed batch")
    flat = _reshape(cx, cx.value(0), tuple(x.shape[:axis]) + (_numel(x.shape[axis:]),))
    y = _emit1(cx, op, [flat], {"dim": axis})
    _out(cx, _reshape(cx, y, x.shape))


# =========================================================================================
# Linear algebra
# =========================================================================================
@converts("Gemm")
def _(cx: NodeContext) -> None:
    alpha, beta = float(cx.attr("alpha", 1.0)), float(cx.attr("beta", 1.0))
    trans_a, trans_b = bool(cx.attr("transA", 0)), bool(cx.attr("transB", 0))
    a, b = cx.type(0), cx.type(1)
    if a.rank != 2 or b.rank != 2:
        raise cx.fail(f"expects 2-D A and B, got {a} and {b}")
    has_c = cx.has(2) and beta != 0.0
    c_type = cx.type(2) if has_c else None
    out_features = b.shape[0] if trans_b else b.shape[1]
    bias_ok = has_c and beta == 1.0 and alpha == 1.0 and c_type.shape == (out_features,)
    if trans_b and not trans_a:
        inputs = [cx.value(0), cx.value(1)] + ([cx.value(2)] if bias_ok else [])
        y = _emit1(cx, "linear", inputs)
    else:
        y = _emit1(cx, "matmul", [cx.value(0), cx.value(1)], {"transpose_a": trans_a, "transpose_b": trans_b})
        if bias_ok:
            y = _emit1(cx, "add", [y, cx.value(2)])
    if alpha != 1.0:
        y = _emit1(cx, "scale", [y], {"factor": alpha})
    if has_c and not bias_ok:
        c = cx.value(2)
        if beta != 1.0:
            c = _emit1(cx, "scale", [c], {"factor": beta})
        y = _emit1(cx, "add", [y, c])
    _out(cx, y)


@converts("MatMul")
def _(cx: NodeContext) -> None:
    a, b = cx.type(0), cx.type(1)
    if b.rank > 2:
        raise cx.fail(f"batched MatMul ({a} @ {b}) is not supported; convforge multiplies by a 2-D matrix")
    lhs, rhs = cx.value(0), cx.value(1)
    if b.rank == 1:
        rhs = _reshape(cx, rhs, (b.shape[0], 1))
    if a.rank == 1:
        lhs = _reshape(cx, lhs, (1, a.shape[0]))
    elif a.rank > 2:
        if a.shape[0] == BATCH and _numel(a.shape[1:-1]) != 1:
            raise folding.Unresolved(
                f"{cx.label}: MatMul of {a} folds the dynamic batch into rows; load with a fixed batch"
            )
        rows = BATCH if a.shape[0] == BATCH else _numel(a.shape[:-1])
        lhs = _reshape(cx, lhs, (rows, a.shape[-1]))
    y = _emit1(cx, "matmul", [lhs, rhs])
    cols = () if b.rank == 1 else (b.shape[-1],)
    final = tuple(a.shape[:-1]) + cols
    if tuple(_type_of(cx, y).shape) != final:
        y = _reshape(cx, y, final)
    _out(cx, y)


# =========================================================================================
# Elementwise arithmetic
# =========================================================================================
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


@converts(*_BINARY)
def _(cx: NodeContext) -> None:
    a, b = cx.value(0), cx.value(1)
    if cx.since < 7 and cx.attr("broadcast", 0):
        b = _legacy_broadcast(cx, b, cx.type(0).rank, cx.type(1).shape)
    scalar = _scalar_operand(cx)
    if scalar is not None:
        index, value = scalar
        other = cx.value(1 - index)
        if cx.op_type == "Mul":
            _out(cx, _emit1(cx, "scale", [other], {"factor": value}))
            return
        if cx.op_type == "Add":
            _out(cx, _emit1(cx, "add_scalar", [other], {"value": value}))
            return
        if cx.op_type == "Sub" and index == 1:
            _out(cx, _emit1(cx, "add_scalar", [other], {"value": -value}))
            return
    _out(cx, _emit1(cx, _BINARY[cx.op_type], [a, b]))


def _scalar_operand(cx: NodeContext) -> tuple[int, float] | None:
    """(index, value) of an operand that is a one-element constant made in the graph (not an
    initializer, which is a parameter) and does not change the other operand's shape."""
    for index in (1, 0):
        if not cx.is_const(index) or cx.is_const(1 - index) or cx.inputs[index] in cx.conv.initializers:
            continue
        arr = np.asarray(cx.const(index))
        other = cx.type(1 - index)
        if arr.dtype.kind == "f" and arr.size == 1 and arr.ndim <= other.rank:
            return index, float(arr.reshape(()))
    return None


def _legacy_broadcast(cx: NodeContext, b: Ref, rank: int, b_shape: Sequence[Any]) -> Ref:
    """Opset < 7 ``broadcast=1, axis=k``: b's dims line up with a's from dim k."""
    axis = cx.attr("axis")
    if axis is None:
        return b
    axis = _axis(cx, int(axis), rank)
    trailing = rank - axis - len(b_shape)
    if trailing < 0:
        raise cx.unsupported_attr("axis", axis, f"an axis leaving room for B's {len(b_shape)} dims")
    return _reshape(cx, b, tuple(b_shape) + (1,) * trailing) if trailing else b


@converts("Sum")
def _(cx: NodeContext) -> None:
    refs = [cx.value(i) for i in range(len(cx.inputs)) if cx.has(i)]
    _out(cx, refs[0] if len(refs) == 1 else _emit1(cx, "add_n", refs))


# =========================================================================================
# Shapes
# =========================================================================================
@converts("Shape")
def _(cx: NodeContext) -> None:
    shape = folding.shape_of(cx.shape(0))
    cx.set_const(0, folding.shape_slice(shape, cx.attrs))


@converts("Size")
def _(cx: NodeContext) -> None:
    shape = cx.shape(0)
    if BATCH in shape:
        raise folding.Unresolved(f"{cx.label}: the size of {cx.type(0)} depends on the dynamic batch")
    cx.set_const(0, np.array(_numel(shape), dtype=np.int64))


@converts("Cast", "CastLike")
def _(cx: NodeContext) -> None:
    from convforge.onnx.reader import RUNTIME_DTYPES, dtype_label

    if cx.op_type == "CastLike":
        to = cx.type(1).dtype
    else:
        elem = int(cx.attr("to"))
        if elem not in RUNTIME_DTYPES:
            raise cx.unsupported_attr("to", dtype_label(elem), "FLOAT, DOUBLE for run-time tensors")
        to = RUNTIME_DTYPES[elem]
    if to == cx.type(0).dtype:
        _out(cx, cx.value(0))
    else:
        _out(cx, _emit1(cx, "cast", [cx.value(0)], {"dtype": to}))


@converts("Flatten")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    axis = int(cx.attr("axis", 1))
    if not -x.rank <= axis <= x.rank:
        raise cx.unsupported_attr("axis", axis, f"an axis in [{-x.rank}, {x.rank}]")
    axis = axis + x.rank if axis < 0 else axis
    if axis == 1 and x.rank > 2:
        _out(cx, _emit1(cx, "flatten", [cx.value(0)], {"start_dim": 1, "end_dim": -1}))
        return
    if axis == 1 and x.rank == 2:
        _out(cx, cx.value(0))
        return
    head, tail = x.shape[:axis], _numel(x.shape[axis:])
    if BATCH in head:
        if _numel(head) != 1:
            raise folding.Unresolved(f"{cx.label}: axis={axis} folds the dynamic batch into rows")
        rows: Any = BATCH
    elif x.shape and x.shape[0] == BATCH:
        raise folding.Unresolved(f"{cx.label}: axis=0 folds the dynamic batch into columns")
    else:
        rows = _numel(head)
    _out(cx, _reshape(cx, cx.value(0), (rows, tail)))


@converts("Reshape")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    target = cx.const_ints(1, "shape") if cx.since >= 5 else list(cx.ints("shape"))
    allowzero = bool(cx.attr("allowzero", 0))
    _out(cx, _reshape(cx, cx.value(0), reshape_target(cx, x.shape, target, allowzero)))


def reshape_target(cx: NodeContext, src: Sequence[Any], target: Sequence[Any], allowzero: bool) -> tuple:
    """An ONNX Reshape target (0 = copy, -1 = infer, a BatchDim) as the IR's shape attribute.

    When the batch is symbolic but the file fixed it (``data_0: [1, 3, 224, 224]`` with a
    ``Reshape`` to ``[1, 9216]``), a leading entry equal to the file's batch size is the batch.
    """
    dims: list[Any] = []
    for i, d in enumerate(target):
        if isinstance(d, folding.BatchDim):
            if d.k != 1:
                raise folding.Unresolved(f"{cx.label}: shape entry {i} is {d}; only N itself can be a dim")
            dims.append(BATCH)
        elif d == 0 and not allowzero:
            if i >= len(src):
                raise cx.fail(f"shape entry {i} is 0 (copy) but the input {list(src)} has no dim {i}")
            dims.append(src[i])
        elif d < -1:
            raise cx.fail(f"shape entry {i} is {d}; entries must be >= -1")
        else:
            dims.append(int(d))
    if src and src[0] == BATCH and BATCH not in dims:
        fb = cx.conv.file_batch
        if dims and fb is not None and dims[0] in (fb, -1):
            dims[0] = BATCH
            cx.conv.batch_reshapes.append((cx.index, [int(d) for d in target]))
        else:
            raise folding.Unresolved(
                f"{cx.label}: target shape {list(target)} of input {list(src)} does not keep the batch "
                "as its first dim; load with a fixed batch, e.g. input_shape=(1, ...)"
            )
    if dims.count(-1) > 1:
        raise cx.fail(f"target shape {list(target)} has more than one -1")
    if -1 in dims:
        known = _numel([d for d in dims if d != -1])
        total = _numel(src)
        if known == 0 or total % known:
            raise cx.fail(f"cannot reshape {list(src)} to {list(target)}")
        dims[dims.index(-1)] = total // known
    return tuple(dims)


@converts("Squeeze")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    if cx.since >= 13:
        axes = cx.const_ints(1, "axes") if cx.has(1) else None
    else:
        axes = cx.ints("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({_axis(cx, int(a), x.rank, "axes") for a in axes})
    for a in axes:
        if x.shape[a] != 1:
            raise cx.fail(f"cannot squeeze dim {a} of size {x.shape[a]} in {x}")
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    _out(cx, _reshape(cx, cx.value(0), shape) if axes else cx.value(0))


@converts("Unsqueeze")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    axes = cx.const_ints(1, "axes") if cx.since >= 13 else cx.ints("axes")
    rank = x.rank + len(axes)
    axes = sorted(_axis(cx, int(a), rank, "axes") for a in axes)
    if len(set(axes)) != len(axes):
        raise cx.unsupported_attr("axes", axes, "distinct axes")
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    _out(cx, _reshape(cx, cx.value(0), shape))


@converts("Transpose")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    perm = cx.ints("perm") or list(range(x.rank))[::-1]
    if sorted(perm) != list(range(x.rank)):
        raise cx.unsupported_attr("perm", perm, f"a permutation of 0..{x.rank - 1}")
    if perm == list(range(x.rank)):
        _out(cx, cx.value(0))
    else:
        _out(cx, _emit1(cx, "transpose", [cx.value(0)], {"perm": tuple(perm)}))


@converts("Concat")
def _(cx: NodeContext) -> None:
    refs = [cx.value(i) for i in range(len(cx.inputs)) if cx.has(i)]
    rank = cx.type(0).rank
    axis = _axis(cx, int(cx.attr("axis", 1)), rank)
    _out(cx, refs[0] if len(refs) == 1 else _emit1(cx, "concat", refs, {"dim": axis}))


def _slice_bounds(cx: NodeContext, size: Any, start: int, end: int, step: int) -> tuple[int, int]:
    if step < 1:
        raise cx.unsupported_attr("steps", step, "positive steps")
    if size == BATCH:
        if start == 0 and end >= INT64_MAX // 2:
            return 0, -1  # the whole batch
        raise cx.fail("slicing the dynamic batch dimension is not supported")
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    start, end = min(max(start, 0), size), min(max(end, 0), size)
    if end <= start:
        empty = f"the slice [{start}:{end}] of a dim of size {size} is empty"
        raise cx.fail(f"{empty}; empty tensors are not supported")
    return start, end


@converts("Slice")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    if cx.since >= 10:
        starts = cx.const_ints(1, "starts")
        ends = cx.const_ints(2, "ends")
        axes = cx.const_ints(3, "axes") if cx.has(3) else list(range(len(starts)))
        steps = cx.const_ints(4, "steps") if cx.has(4) else [1] * len(starts)
    else:
        starts, ends = cx.ints("starts"), cx.ints("ends")
        axes = cx.ints("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise cx.fail("starts, ends, axes and steps must have one entry per sliced axis")
    y = cx.value(0)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(cx, int(axis), x.rank, "axes")
        lo, hi = _slice_bounds(cx, x.shape[axis], int(start), int(end), int(step))
        if hi == -1 or (lo == 0 and hi == x.shape[axis] and step == 1):
            continue
        y = _emit1(cx, "slice", [y], {"dim": axis, "start": lo, "stop": hi, "step": int(step)})
    _out(cx, y)


@converts("Split")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    axis = _axis(cx, int(cx.attr("axis", 0)), x.rank)
    size = x.shape[axis]
    if size == BATCH:
        raise cx.fail("splitting the dynamic batch dimension is not supported")
    n = len(cx.outputs)
    if cx.since >= 13 and cx.has(1):
        sizes = cx.const_ints(1, "split")
    elif cx.since < 13 and cx.attr("split") is not None:
        sizes = cx.ints("split")
    elif cx.attr("num_outputs") is not None:
        chunk = -(-size // int(cx.attr("num_outputs")))
        sizes = [min(chunk, size - i * chunk) for i in range(int(cx.attr("num_outputs")))]
    else:
        if size % n:
            raise cx.fail(f"dim {axis} of size {size} does not split into {n} equal parts")
        sizes = [size // n] * n
    if sum(sizes) != size or any(s < 1 for s in sizes) or len(sizes) != n:
        raise cx.unsupported_attr("split", sizes, f"{n} positive sizes summing to {size}")
    start = 0
    for i, s in enumerate(sizes):
        ref = _emit1(cx, "slice", [cx.value(0)], {"dim": axis, "start": start, "stop": start + s, "step": 1})
        cx.alias(i, ref)
        start += s


_REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}


@converts(*_REDUCE)
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    axes_as_input = 13 if cx.op_type == "ReduceSum" else 18
    if cx.since >= axes_as_input:
        axes = cx.const_ints(1, "axes") if cx.has(1) else []
        noop = bool(cx.attr("noop_with_empty_axes", 0))
    else:
        axes = cx.ints("axes") or []
        noop = False
    keep = bool(cx.attr("keepdims", 1))
    if not axes:
        if noop:
            _out(cx, cx.value(0))
            return
        axes = list(range(x.rank))
    dims = tuple(sorted({_axis(cx, int(a), x.rank, "axes") for a in axes}))
    _out(cx, _emit1(cx, _REDUCE[cx.op_type], [cx.value(0)], {"dims": dims, "keepdim": keep}))


# =========================================================================================
# Resizing
# =========================================================================================
@converts("Resize", "Upsample")
def _(cx: NodeContext) -> None:
    x = cx.type(0)
    if x.rank != 4:
        raise cx.fail(f"expects a 4-D input [N, C, H, W], got {x}; convforge resizes 2-D images")
    scales, sizes = _resize_scales(cx, x.shape)
    if cx.op_type == "Upsample":
        ctm, nearest = "asymmetric", "floor"
    else:
        ctm = cx.attr("coordinate_transformation_mode", "half_pixel")
        nearest = cx.attr("nearest_mode", "round_prefer_floor")
        for name, ok in (("antialias", 0), ("exclude_outside", 0)):
            if cx.attr(name, 0) != ok:
                raise cx.unsupported_attr(name, cx.attr(name), str(ok))
        if cx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            policy = cx.attr("keep_aspect_ratio_policy")
            raise cx.unsupported_attr("keep_aspect_ratio_policy", policy, "stretch")
    mode = cx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise cx.unsupported_attr("mode", mode, "nearest, linear")
    if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        raise cx.unsupported_attr(
            "coordinate_transformation_mode", ctm, "half_pixel, pytorch_half_pixel, align_corners, asymmetric"
        )
    if mode == "nearest" and nearest not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        supported = "round_prefer_floor, round_prefer_ceil, floor, ceil"
        raise cx.unsupported_attr("nearest_mode", nearest, supported)
    if sizes[:2] != list(x.shape[:2]):
        raise cx.fail(
            f"resizes the batch or channel dims ({list(x.shape)} -> {sizes}); convforge resizes H and W"
        )
    attrs = _matching_interpolation(cx, x.shape[2:], sizes[2:], scales[2:], mode, ctm, nearest, x.dtype)
    _out(cx, _emit1(cx, "interpolate", [cx.value(0)], attrs))


def _resize_scales(cx: NodeContext, shape: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """(scales, output sizes) for all dims of a Resize / Upsample."""
    rank = len(shape)
    scales = sizes = None
    if cx.op_type == "Upsample" and cx.since < 9:
        scales = cx.attr("scales")
    elif cx.op_type == "Upsample" or cx.since == 10:
        scales = cx.const(1, "scales")
    else:
        if cx.has(3):
            sizes = cx.const_ints(3, "sizes")
        elif cx.has(2) and np.size(cx.const(2, "scales")):
            scales = cx.const(2, "scales")
        else:
            raise cx.fail("needs constant scales or sizes")
    axes = cx.ints("axes") if cx.op_type == "Resize" and cx.attr("axes") is not None else list(range(rank))
    full_scales, full_sizes = [1.0] * rank, list(shape)
    for i, a in enumerate(axes):
        a = _axis(cx, a, rank, "axes")
        if sizes is not None:
            full_sizes[a] = int(sizes[i])
            full_scales[a] = int(sizes[i]) / shape[a] if shape[a] != BATCH else 1.0
        else:
            s = float(np.asarray(scales, dtype=np.float64).reshape(-1)[i])
            if not s > 0:
                raise cx.unsupported_attr("scales", list(np.asarray(scales).reshape(-1)), "positive scales")
            full_scales[a] = s
            full_sizes[a] = shape[a] if shape[a] == BATCH or s == 1.0 else int(math.floor(shape[a] * s))
    return full_scales, full_sizes


def _onnx_matrix(n_in: int, n_out: int, scale: float, mode: str, ctm: str, nearest: str) -> np.ndarray:
    """The [n_out, n_in] interpolation matrix ONNX's Resize describes along one axis."""
    o = np.arange(n_out, dtype=np.float64)
    resized = n_in * scale  # ONNX's length_resized: the real-valued output length
    if ctm == "align_corners":
        src = o * (n_in - 1) / (resized - 1) if resized != 1 else np.zeros(n_out)
    elif ctm == "asymmetric":
        src = o / scale
    elif ctm == "pytorch_half_pixel" and resized <= 1:
        src = np.zeros(n_out)
    else:
        src = (o + 0.5) / scale - 0.5
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        frac = src - np.floor(src)
        if nearest == "floor":
            idx = np.floor(src)
        elif nearest == "ceil":
            idx = np.ceil(src)
        elif nearest == "round_prefer_floor":
            idx = np.where(frac == 0.5, np.floor(src), np.round(src))
        else:
            idx = np.where(frac == 0.5, np.ceil(src), np.round(src))
        m[rows, np.clip(idx, 0, n_in - 1).astype(np.int64)] = 1.0
        return m
    lo = np.floor(src)
    ratio = src - lo
    np.add.at(m, (rows, np.clip(lo, 0, n_in - 1).astype(np.int64)), 1.0 - ratio)
    np.add.at(m, (rows, np.clip(lo + 1, 0, n_in - 1).astype(np.int64)), ratio)
    return m


def _matching_interpolation(
    cx: NodeContext, in_hw: Sequence[int], out_hw: Sequence[int], scales: Sequence[float],
    mode: str, ctm: str, nearest: str, dtype: str,
) -> dict:  # fmt: skip
    """The interpolate attributes whose taps equal ONNX's on this input size, or an error.

    The IR computes PyTorch's coordinates; an ONNX mode matches one of them on a given size
    when every output reads the same inputs with the same weights, which is checked here.
    """
    from convforge.ir.ops.resize import taps

    np_dtype = np.float64 if dtype == "f64" else np.float32
    if mode == "nearest":
        candidates = [("nearest", False), ("nearest-exact", False)]
    else:
        candidates = [("bilinear", False), ("bilinear", True)]
    kind = "nearest" if mode == "nearest" else "linear"
    for ir_mode, corners in candidates:
        for ir_scales in (tuple(scales), None):
            ok = True
            for n_in, n_out, s in zip(in_hw, out_hw, scales):
                want = _onnx_matrix(n_in, n_out, s, kind, ctm, nearest)
                i0, i1, lam = taps(n_in, n_out, ir_mode, corners, None if ir_scales is None else s, np_dtype)
                got = np.zeros_like(want)
                np.add.at(got, (np.arange(n_out), i0), 1.0 - lam.astype(np.float64))
                np.add.at(got, (np.arange(n_out), i1), lam.astype(np.float64))
                ok = ok and np.allclose(got, want, rtol=0, atol=1e-6)
            if ok:
                return {"size": tuple(out_hw), "mode": ir_mode, "align_corners": corners, "scales": ir_scales}
    raise cx.fail(
        f"mode={mode!r} with coordinate_transformation_mode={ctm!r}"
        + (f", nearest_mode={nearest!r}" if mode == "nearest" else "")
        + f" from {list(in_hw)} to {list(out_hw)} reads other pixels than PyTorch's nearest, "
        "nearest-exact or bilinear interpolation, which is what convforge computes"
    )
