"""``convforge.functional``: PyTorch's ``torch.nn.functional`` names, arguments and defaults.

Inside a traced ``forward`` each call emits one IR node. Outside, it runs eagerly on
NumPy arrays as a one-op graph, compiled once per signature (op, attributes, input types,
backend) and cached::

    y = F.conv2d(x, w, b, stride=1, padding="same", backend="reference")
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convforge.errors import AttributeValueError, ConvforgeError, DTypeError, ShapeError, wrap_error
from convforge.frontend import trace
from convforge.ir.graph import Graph
from convforge.ir.ops.common import int_tuple, number
from convforge.ir.ops.loss import check_reduction
from convforge.ir.types import TensorType, dtype_name

Tensor = Any  # np.ndarray, or a SymbolicTensor while tracing

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "add",
    "add_n",
    "amax",
    "avg_pool2d",
    "batch_norm",
    "cat",
    "concat",
    "conv1d",
    "conv2d",
    "conv_transpose2d",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "div",
    "dropout",
    "elu",
    "flatten",
    "gelu",
    "group_norm",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "huber_loss",
    "interpolate",
    "l1_loss",
    "layer_norm",
    "leaky_relu",
    "linear",
    "local_response_norm",
    "log_softmax",
    "max_pool2d",
    "max_unpool2d",
    "mean",
    "mish",
    "mse_loss",
    "mul",
    "neg",
    "nll_loss",
    "pad",
    "permute",
    "reduce_sum",
    "relu",
    "relu6",
    "reshape",
    "sigmoid",
    "silu",
    "smooth_l1_loss",
    "softmax",
    "softplus",
    "split",
    "squeeze",
    "stack",
    "sub",
    "tanh",
    "transpose",
    "unsqueeze",
    "upsample",
]


# -- convolution --------------------------------------------------------------------------
def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> Tensor:
    """2-D cross-correlation over NCHW input; ``padding`` may be an int, a pair, "same" or "valid"."""
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, backend)


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> Tensor:
    """1-D cross-correlation over NCL input."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, backend)


def _conv(
    op: str,
    dims: int,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    backend: str | None,
) -> Tensor:
    if len(_shape_of(input)) == dims + 1:
        return _unbatched(
            input, lambda x: _conv(op, dims, x, weight, bias, stride, padding, dilation, groups, backend)
        )
    kernel = tuple(_shape_of(weight))[2:]
    where = _where(op)
    pad = resolve_padding(
        padding,
        kernel,
        int_tuple("dilation", dilation, dims, minimum=None, where=where),
        int_tuple("stride", stride, dims, minimum=None, where=where),
        where,
    )
    attrs = {"stride": stride, "padding": pad, "dilation": dilation, "groups": groups}
    tensors = [input, weight] + ([bias] if bias is not None else [])
    return _call(op, tensors, attrs, backend, ("input", "weight", "bias"))


def resolve_padding(
    padding: Any, kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int], op: str
) -> Any:
    """Turn ``"same"`` / ``"valid"`` into explicit pads (PyTorch puts the odd pixel at the end)."""
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return (0,) * len(kernel)
    if padding != "same":
        raise AttributeValueError(
            f"{op}: padding must be 'same', 'valid', an int or a tuple, got {padding!r}"
        )
    if any(s != 1 for s in stride):
        raise AttributeValueError(
            f"{op}: padding='same' requires stride 1 (as PyTorch), got stride {tuple(stride)}"
        )
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    lo = tuple(t // 2 for t in totals)
    hi = tuple(t - t // 2 for t in totals)
    return lo if lo == hi else lo + hi


# -- pooling ------------------------------------------------------------------------------
def max_pool2d(
    input: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """Max pooling; with ``return_indices`` also each window's maximum as a flat index into its
    input plane (int64), which ``max_unpool2d`` takes. A [C, H, W] input is one unbatched image."""
    if len(_shape_of(input)) == 3:
        return _unbatched(
            input,
            lambda x: max_pool2d(
                x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend=backend
            ),
        )
    attrs = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "ceil_mode": ceil_mode,
    }
    return _call("max_pool2d_with_indices" if return_indices else "max_pool2d", [input], attrs, backend)


def avg_pool2d(
    input: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    if len(_shape_of(input)) == 3:
        return _unbatched(
            input,
            lambda x: avg_pool2d(
                x,
                kernel_size,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
                divisor_override,
                backend=backend,
            ),
        )
    attrs = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "ceil_mode": ceil_mode,
        "count_include_pad": count_include_pad,
        "divisor_override": divisor_override,
    }
    return _call("avg_pool2d", [input], attrs, backend)


def adaptive_avg_pool2d(input: Tensor, output_size: Any, *, backend: str | None = None) -> Tensor:
    if len(_shape_of(input)) == 3:
        return _unbatched(input, lambda x: adaptive_avg_pool2d(x, output_size, backend=backend))
    return _call("adaptive_avg_pool2d", [input], {"output_size": output_size}, backend)


# -- normalisation and dropout ------------------------------------------------------------
def batch_norm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Batch normalisation; in training the running statistics are updated (in place when eager)."""
    tracer = trace.active()
    channels = _shape_of(input)[1] if len(_shape_of(input)) > 1 else None
    if weight is None or bias is None:
        if tracer is not None:
            raise ConvforgeError(
                f"{tracer.where()}: batch_norm without weight and bias cannot be traced; "
                "use an affine BatchNorm layer"
            )
        weight = np.ones(channels, np.asarray(input).dtype) if weight is None else weight
        bias = np.zeros(channels, np.asarray(input).dtype) if bias is None else bias
    names = ("input", "weight", "bias", "running_mean", "running_var")
    tensors = [input, weight, bias, running_mean, running_var]
    if not training:
        return _call("batch_norm", tensors, {"eps": eps}, backend, names)
    outs = _call("batch_norm_train", tensors, {"eps": eps, "momentum": momentum}, backend, names)
    y, _mean, _invstd, new_mean, new_var = outs
    if tracer is not None:
        for buf, new in ((running_mean, new_mean), (running_var, new_var)):
            key = tracer.names.get(id(buf))
            if key is not None:
                tracer.state_updates[key] = new.value
    else:
        for buf, new in ((running_mean, new_mean), (running_var, new_var)):
            if isinstance(buf, np.ndarray) and buf.flags.writeable:
                np.copyto(buf, new, casting="same_kind")
    return y


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: int | None = None,
    step: int = 0,
    backend: str | None = None,
) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    The mask comes from a counter-based RNG keyed by (seed, step, element index), so
    every backend draws the same mask for the same seed and step.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise AttributeValueError(
            f"{_where('dropout')}: dropout probability has to be between 0 and 1, but got {p!r}"
        )
    if not training or p == 0.0:
        return input
    tracer = trace.active()
    if tracer is not None:
        if seed is None:
            seed = tracer.layer_counter
            tracer.layer_counter += 1
        x = tracer.lift(input, "input")
        node = tracer.graph.create_node(
            "dropout", [x, tracer.step_input()], {"p": float(p), "seed": seed}, tracer.node_meta()
        )
        return tracer.wrap(node.output)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31))
    step_arr = np.asarray(step, dtype=np.int64)
    return _call("dropout", [input, step_arr], {"p": float(p), "seed": seed}, backend, ("input", "step"))


# -- linear and activations ---------------------------------------------------------------
def linear(
    input: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """``input @ weight.T + bias`` over the last dim of an input [in], [N, in] or [N, *, in]."""
    shape = _shape_of(input)
    if len(shape) == 1:
        return _unbatched(input, lambda x: linear(x, weight, bias, backend=backend))
    if len(shape) > 2:
        return _linear_nd(input, weight, bias, backend)
    return _call(
        "linear",
        [input, weight] + ([bias] if bias is not None else []),
        {},
        backend,
        ("input", "weight", "bias"),
    )


def _linear_nd(input: Tensor, weight: Tensor, bias: Tensor | None, backend: str | None) -> Tensor:
    """``linear`` of an input [N, *, in]: on the rows of a [rows, in] reshape when every dim
    is known; with the symbolic batch N (which a reshape must keep leading) as a 1x1
    ``conv1d`` over [N, in, rows], the middle dims flattened into rows."""
    shape = _shape_of(input)
    features, wshape = shape[-1], _shape_of(weight)
    if len(wshape) != 2:
        raise ShapeError(f"{_where('linear')}: expected a weight [out, in], got shape {list(wshape)}")
    out_features = wshape[0]
    if shape[0] != "N":
        rows = linear(reshape(input, (-1, features), backend=backend), weight, bias, backend=backend)
        return reshape(rows, (*shape[:-1], out_features), backend=backend)
    middle = math.prod(shape[1:-1])
    x = permute(reshape(input, (-1, middle, features), backend=backend), (0, 2, 1), backend=backend)
    kernel = reshape(weight, (out_features, features, 1), backend=backend)
    y = permute(conv1d(x, kernel, bias, backend=backend), (0, 2, 1), backend=backend)
    return reshape(y, (-1, *shape[1:-1], out_features), backend=backend)


def relu(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("relu", [input], {}, backend)


def relu6(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("relu6", [input], {}, backend)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, *, backend: str | None = None) -> Tensor:
    return _call("leaky_relu", [input], {"negative_slope": negative_slope}, backend)


def sigmoid(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("sigmoid", [input], {}, backend)


def tanh(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("tanh", [input], {}, backend)


def softmax(input: Tensor, dim: int = 1, *, backend: str | None = None) -> Tensor:
    return _call("softmax", [input], {"dim": dim}, backend)


def log_softmax(input: Tensor, dim: int = 1, *, backend: str | None = None) -> Tensor:
    return _call("log_softmax", [input], {"dim": dim}, backend)


# -- losses -------------------------------------------------------------------------------
# torch's names, arguments and formulas (``ir/ops/loss.py``). ``size_average`` / ``reduce``
# are torch's deprecated spelling of ``reduction`` and mean what they mean there. Inside a
# traced loss function a weight must be a traced tensor or a registered buffer (a loss
# module's ``weight``); eagerly it is any array.
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.cross_entropy`` of ``(N, C)`` logits: integer class labels ``(N,)`` (with
    ``weight``, ``ignore_index``, ``label_smoothing``) or class probabilities of the logits'
    shape (a float target; ``ignore_index`` does not apply), decided by the target's dtype.

    >>> F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="sum")
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if _is_float(target):
        return _cross_entropy_probabilities(input, target, weight, reduction, label_smoothing, backend)
    attrs = {"reduction": reduction, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
    return _class_loss("cross_entropy", input, target, weight, attrs, backend)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.nll_loss``: ``-weight[t] * input[n, t]`` of log-probabilities ``(N, C)``."""
    attrs = {"reduction": _legacy_reduction(size_average, reduce, reduction), "ignore_index": ignore_index}
    return _class_loss("nll_loss", input, target, weight, attrs, backend)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.mse_loss``: ``(input - target)^2``, reduced."""
    return _pointwise_loss(
        "mse_loss", input, target, _legacy_reduction(size_average, reduce, reduction), {}, backend
    )


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.l1_loss``: ``|input - target|``, reduced."""
    return _pointwise_loss(
        "l1_loss", input, target, _legacy_reduction(size_average, reduce, reduction), {}, backend
    )


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.smooth_l1_loss``: ``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2``."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _pointwise_loss("smooth_l1_loss", input, target, reduction, {"beta": beta}, backend)


def huber_loss(
    input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0, *, backend: str | None = None
) -> Tensor:
    """torch's ``F.huber_loss``: ``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``."""
    return _pointwise_loss("huber_loss", input, target, reduction, {"delta": delta}, backend)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """torch's ``F.binary_cross_entropy_with_logits``, the stable form. Traced, ``weight`` and
    ``pos_weight`` have a shape ending the input's (``pos_weight``: one per class, the last dim)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    tracing = trace.active() is not None
    if not tracing:
        input, target = _float_pair(input, target, "binary_cross_entropy_with_logits")
    weights = []
    for name, w in (("weight", weight), ("pos_weight", pos_weight)):
        if w is None and (name == "pos_weight" or pos_weight is None):
            continue
        if w is None:  # a pos_weight alone: the weight is the identity
            w = np.ones(1, dtype=np.asarray(input).dtype)
        elif not tracing:
            w = _suffix_weight(w, np.shape(input), name, np.asarray(input).dtype)
        weights.append(w)
    tensors = [input, target, *weights]
    names = ("input", "target", "weight", "pos_weight")
    return _call("binary_cross_entropy_with_logits", tensors, {"reduction": reduction}, backend, names)


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's ``_Reduction.legacy_get_string``: either deprecated flag given overrides ``reduction``."""
    if size_average is None and reduce is None:
        return reduction
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _is_float(obj: Any) -> bool:
    if isinstance(obj, trace.SymbolicTensor):
        return obj.type.is_float
    return as_numeric(obj, "target").dtype.kind == "f"


def _class_loss(
    op: str, input: Tensor, target: Tensor, weight: Tensor | None, attrs: dict, backend
) -> Tensor:
    if trace.active() is None:
        input = _as_array(input, "input", op)
        target = _labels(target, _shape_of(input), op, attrs["ignore_index"])
        if weight is not None:
            weight = _as_array(weight, "weight", op).astype(input.dtype)
    tensors = [input, target] + ([] if weight is None else [weight])
    return _call(op, tensors, attrs, backend, ("input", "target", "weight"))


def _cross_entropy_probabilities(
    input, target, weight, reduction: str, label_smoothing: float, backend
) -> Tensor:
    """Class-probability targets, composed exactly as torch computes them:
    ``-sum_c weight[c] * target[n, c] * log_softmax(input)[n, c]``, the mean over ``n``."""
    where = _where("cross_entropy")
    try:
        check_reduction(reduction)
        smoothing = number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    except ConvforgeError as exc:
        raise wrap_error(exc, where) from None
    if trace.active() is None:
        input, target = _float_pair(input, target, "cross_entropy")
    if _shape_of(input) != _shape_of(target) or len(_shape_of(input)) != 2:
        raise ShapeError(
            f"{where}: class-probability targets must have the (N, C) shape of the logits "
            f"{list(_shape_of(input))}, got {list(_shape_of(target))}"
        )
    if smoothing > 0:
        classes = _shape_of(input)[1]
        target = _call("scale", [target], {"factor": 1.0 - smoothing}, backend)
        target = _call("add_scalar", [target], {"value": smoothing / classes}, backend)
    picked = _call("mul", [_call("log_softmax", [input], {"dim": 1}, backend), target], {}, backend)
    if weight is not None:
        if trace.active() is None:
            weight = _as_array(weight, "weight", "cross_entropy").astype(np.asarray(input).dtype)
        picked = _call("mul", [picked, weight], {}, backend, ("input", "weight"))
    rows = _call("neg", [_call("reduce_sum", [picked], {"dims": (1,)}, backend)], {}, backend)
    if reduction == "none":
        return rows
    op = "reduce_mean" if reduction == "mean" else "reduce_sum"
    return _call(op, [rows], {"dims": (0,)}, backend)


def _pointwise_loss(op: str, input: Tensor, target: Tensor, reduction: str, attrs: dict, backend) -> Tensor:
    if trace.active() is None:
        input, target = _float_pair(input, target, op)
    return _call(op, [input, target], {"reduction": reduction, **attrs}, backend, ("input", "target"))


def _float_pair(input: Tensor, target: Tensor, op: str) -> tuple[np.ndarray, np.ndarray]:
    """Eager ``input`` and ``target`` as arrays of one float dtype (torch's type promotion)."""
    x = _as_array(input, "input", op)
    t = _as_array(target, "target", op)
    dtype = np.result_type(x.dtype, t.dtype) if t.dtype.kind == "f" else x.dtype
    dtype = dtype if dtype in (np.float32, np.float64) else np.float32
    return x.astype(dtype, copy=False), t.astype(dtype, copy=False)


def _suffix_weight(weight: Tensor, shape: tuple, name: str, dtype) -> np.ndarray:
    """An eager weight of a shape ending ``shape`` as it is, any other broadcastable one
    broadcast to ``shape`` (the op reads element ``i`` of a weight at ``i % weight.size``)."""
    w = _as_array(weight, name, "binary_cross_entropy_with_logits").astype(dtype)
    trimmed = (
        w.reshape(w.shape[next((i for i, d in enumerate(w.shape) if d != 1), w.ndim) :]) if w.ndim else w
    )
    if trimmed.ndim and tuple(trimmed.shape) == tuple(shape[len(shape) - trimmed.ndim :]):
        return np.ascontiguousarray(trimmed)
    try:
        return np.ascontiguousarray(np.broadcast_to(w, shape))
    except ValueError:
        raise ShapeError(
            f"F.binary_cross_entropy_with_logits: {name} of shape {list(w.shape)} does not "
            f"broadcast to the input's {list(shape)}"
        ) from None


# -- structure: arithmetic, reductions, relayouts ---------------------------------------
# PyTorch's tensor functions (``torch.add``, ``torch.cat``, ...; ``convforge`` exports them
# under torch's top-level names), emitted exactly as a traced tensor's operators and
# methods are (``frontend/trace.py``): ``F.sub(x, 1.0)`` is ``x - 1.0``.
def add(input: Tensor, other: Tensor, *, alpha: float = 1, backend: str | None = None) -> Tensor:
    """``input + alpha * other`` with broadcasting; either may be a Python number (a residual
    connection is ``add(x, f(x))``)."""
    return trace.arithmetic("add", input, _times(other, alpha, backend), _emitter(backend))


def sub(input: Tensor, other: Tensor, *, alpha: float = 1, backend: str | None = None) -> Tensor:
    """``input - alpha * other`` with broadcasting; either may be a Python number."""
    return trace.arithmetic("sub", input, _times(other, alpha, backend), _emitter(backend))


def mul(input: Tensor, other: Tensor, *, backend: str | None = None) -> Tensor:
    """``input * other`` with broadcasting; either may be a Python number."""
    return trace.arithmetic("mul", input, other, _emitter(backend))


def div(input: Tensor, other: Tensor, *, backend: str | None = None) -> Tensor:
    """``input / other`` (true division) with broadcasting; either may be a Python number."""
    return trace.arithmetic("div", input, other, _emitter(backend))


def neg(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("neg", [input], {}, backend)


def add_n(tensors: Sequence[Tensor], *, backend: str | None = None) -> Tensor:
    """The sum of n tensors, broadcast together, in one kernel (ONNX ``Sum``)."""
    tensors = _tensor_list(tensors, "add_n")
    return _call("add_n", tensors, {}, backend, tuple(f"tensors[{i}]" for i in range(len(tensors))))


def reduce_sum(
    input: Tensor, dim: Any = None, keepdim: bool = False, *, backend: str | None = None
) -> Tensor:
    """``torch.sum``: the sum over ``dim`` (an int or a tuple; None: every dim); exported as
    ``convforge.sum`` (this module keeps the builtin ``sum``)."""
    return _call("reduce_sum", [input], trace.reduction(_shape_of(input), dim, keepdim, "sum"), backend)


def mean(input: Tensor, dim: Any = None, keepdim: bool = False, *, backend: str | None = None) -> Tensor:
    """``torch.mean`` over ``dim`` (an int or a tuple; None: every dim)."""
    return _call("reduce_mean", [input], trace.reduction(_shape_of(input), dim, keepdim, "mean"), backend)


def amax(input: Tensor, dim: Any = (), keepdim: bool = False, *, backend: str | None = None) -> Tensor:
    """``torch.amax``: the maximum over ``dim`` (``()``: every dim); its gradient is shared
    evenly by tied maxima."""
    return _call("reduce_max", [input], trace.reduction(_shape_of(input), dim, keepdim, "amax"), backend)


def concat(tensors: Sequence[Tensor], dim: int = 1, *, backend: str | None = None) -> Tensor:
    """Join tensors along ``dim`` (default 1, the channels; :func:`cat` is ``torch.cat``)."""
    tensors = _tensor_list(tensors, "concat")
    return _call(
        "concat", tensors, {"dim": dim}, backend, tuple(f"tensors[{i}]" for i in range(len(tensors)))
    )


def cat(tensors: Sequence[Tensor], dim: int = 0, *, backend: str | None = None) -> Tensor:
    """``torch.cat``: join tensors along ``dim`` (default 0, as torch)."""
    return concat(tensors, dim, backend=backend)


def stack(tensors: Sequence[Tensor], dim: int = 0, *, backend: str | None = None) -> Tensor:
    """``torch.stack``: join tensors of one shape along a new dim ``dim`` (each unsqueezed, then
    concatenated)."""
    tensors = _tensor_list(tensors, "stack")
    return concat([unsqueeze(t, dim, backend=backend) for t in tensors], dim, backend=backend)


def split(tensor: Tensor, split_size_or_sections: Any, dim: int = 0, *, backend: str | None = None) -> tuple:
    """``torch.split``: pieces of ``split_size_or_sections`` along ``dim`` (the last may be
    smaller), or pieces of the listed sizes (ONNX ``Split``); each piece is a ``slice``."""
    if not isinstance(tensor, (trace.SymbolicTensor, np.ndarray)):
        tensor = np.asarray(tensor)
    return trace.split(tensor, split_size_or_sections, dim, _emitter(backend))


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1, *, backend: str | None = None) -> Tensor:
    return _call("flatten", [input], {"start_dim": start_dim, "end_dim": end_dim}, backend)


def reshape(input: Tensor, shape: Sequence[Any], *, backend: str | None = None) -> Tensor:
    """Reshape; one dim may be -1 (inferred); while tracing the leading dimension may be
    written -1 or "N" for the batch."""
    dims_ok = isinstance(shape, (tuple, list)) and all(
        d == "N" if isinstance(d, str) else isinstance(d, (int, np.integer)) and not isinstance(d, bool)
        for d in shape
    )
    if not dims_ok:
        raise AttributeValueError(
            f"{_where('reshape')}: shape must be a tuple of ints (one may be -1), got {shape!r}"
        )
    try:
        target = trace.reshape_target(_shape_of(input), shape)
    except ConvforgeError as exc:
        raise wrap_error(exc, _where("reshape")) from None
    return _call("reshape", [input], {"shape": target}, backend)


def squeeze(input: Tensor, dim: Any = None, *, backend: str | None = None) -> Tensor:
    """``torch.squeeze``: drop size-1 dims (those of ``dim`` only, if given)."""
    return _reshape_to(input, trace.squeezed(_shape_of(input), dim), backend)


def unsqueeze(input: Tensor, dim: int, *, backend: str | None = None) -> Tensor:
    """``torch.unsqueeze``: a size-1 dim inserted at ``dim``."""
    return _reshape_to(input, trace.unsqueezed(_shape_of(input), dim), backend)


def permute(input: Tensor, dims: Sequence[int], *, backend: str | None = None) -> Tensor:
    """``torch.permute``: ``out.shape[i] = input.shape[dims[i]]`` (a ``transpose`` node)."""
    perm = trace.permutation(len(_shape_of(input)), dims)
    if perm == tuple(range(len(perm))):
        return input
    return _call("transpose", [input], {"perm": perm}, backend)


def transpose(input: Tensor, dim0: int, dim1: int, *, backend: str | None = None) -> Tensor:
    """``torch.transpose``: ``dim0`` and ``dim1`` exchanged."""
    return permute(input, trace.swapped(len(_shape_of(input)), dim0, dim1), backend=backend)


def _emitter(backend: str | None):
    def emit(op: str, tensors: list, attrs: dict, names: Sequence[str] = ("input",)) -> Tensor:
        return _call(op, tensors, attrs, backend, names)

    return emit


def _times(other: Tensor, alpha: float, backend: str | None) -> Tensor:
    if alpha == 1:
        return other
    if trace.is_number(other):
        return other * alpha
    return _call("scale", [other], {"factor": alpha}, backend)


def _tensor_list(tensors: Any, op: str) -> list:
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ConvforgeError(f"{op} expects a non-empty list of tensors, got {tensors!r}")
    return list(tensors)


def _reshape_to(input: Tensor, shape: tuple, backend: str | None) -> Tensor:
    if shape == tuple(_shape_of(input)):
        return input
    return _call("reshape", [input], {"shape": shape}, backend)


def _unbatched(input: Tensor, fn: Any) -> Any:
    """``fn`` of an unbatched input, as PyTorch runs one: on a batch of one, whose batch dim
    is then dropped from the result (each result, for a tuple)."""
    if trace.active() is None:
        out = fn(np.expand_dims(np.asarray(input), 0))
        return tuple(o[0] for o in out) if isinstance(out, tuple) else out[0]
    out = fn(unsqueeze(input, 0))
    return tuple(squeeze(o, 0) for o in out) if isinstance(out, tuple) else squeeze(out, 0)


# -- machinery ----------------------------------------------------------------------------
def _call(op: str, tensors: list, attrs: dict, backend: str | None, names: Sequence[str] = ("input",)):
    tracer = trace.active()
    if tracer is not None:
        return tracer.call(op, tensors, attrs, names)
    arrays = [_as_array(t, names[min(i, len(names) - 1)], op) for i, t in enumerate(tensors)]
    from convforge.backends import resolve

    types = tuple(TensorType(dtype_name(a.dtype), a.shape) for a in arrays)
    key = _hashable(attrs)
    try:
        hash(key)
    except TypeError:  # an unhashable attribute value ({} for a size): the op's check names it
        program = _eager_program.__wrapped__(op, key, types, resolve(backend))
    else:
        program = _eager_program(op, key, types, resolve(backend))
    outs = program.run({f"in{i}": a for i, a in enumerate(arrays)})
    return outs[0] if len(outs) == 1 else tuple(outs)


def _where(op: str) -> str:
    """How an error names this call: the layer being traced, or ``F.<op>`` when eager."""
    tracer = trace.active()
    return tracer.where() if tracer is not None else f"F.{op}"


@functools.lru_cache(maxsize=256)
def _eager_program(op: str, attrs: tuple, types: tuple[TensorType, ...], backend: str):
    from convforge.backends import get_backend

    graph = Graph(op)
    inputs = [graph.add_input(f"in{i}", t) for i, t in enumerate(types)]
    node = graph.create_node(op, inputs, dict(attrs), {"layer": f"F.{op}"})
    graph.set_outputs(node.outputs)
    return get_backend(backend).compile_graph(graph)


def _hashable(attrs: dict) -> tuple:
    """The attributes as a cache key: lists (nested too) become tuples; any other value is
    kept as given, so an unhashable one reaches the op's own check (see ``_call``)."""
    return tuple((k, _frozen(v)) for k, v in attrs.items())


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_array(obj: Any, name: str, op: str) -> np.ndarray:
    if isinstance(obj, trace.SymbolicTensor):
        raise trace.not_traced_error(op, name)
    arr = as_numeric(obj, f"F.{op}: {name}")
    if arr.dtype.kind in "iub" and name not in ("target", "step", "indices"):
        refuse_integers(arr, f"F.{op}: {name}")
    elif arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    return np.asarray(arr, order="C")


def as_numeric(obj: Any, what: str) -> np.ndarray:
    """``obj`` (an array, a nested list, a torch tensor) as a NumPy array of numbers, or a
    DTypeError naming ``what``."""
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a torch tensor
        obj = obj.detach().cpu().numpy()
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot convert is a user mistake
        raise DTypeError(f"{what} must be a numeric array, got {type(obj).__name__} ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    return arr


def refuse_integers(arr: np.ndarray, what: str) -> None:
    """Refuse a bool or integer array where float data belongs: casting a 0..255 image
    silently would feed the model values 255 times too large."""
    if arr.dtype.kind not in "iub":
        return
    seen = f" holding {arr.min()}..{arr.max()}" if arr.size and arr.dtype.kind != "b" else ""
    raise DTypeError(
        f"{what} is {arr.dtype}{seen}, but convforge computes in float and does not cast "
        "silently: scale it first, e.g. x.astype(np.float32) / 255 for 0..255 images "
        "(cf.data's transforms do this), or x.astype(np.float32) if the values are meant as they are"
    )


def _labels(target: Any, input_shape: Sequence[Any], op: str, ignore_index: int = -100) -> np.ndarray:
    arr = np.asarray(target)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"F.{op}: target must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if len(input_shape) == 2:
        bad = arr[((arr < 0) | (arr >= input_shape[1])) & (arr != ignore_index)]
        if bad.size:
            raise ShapeError(
                f"F.{op}: class labels must lie in [0, {input_shape[1]}) (or be the ignore_index "
                f"{ignore_index}), got {int(bad[0])}"
            )
    return arr


def _shape_of(obj: Any) -> tuple:
    if isinstance(obj, trace.SymbolicTensor):
        return obj.shape
    return tuple(np.shape(obj))


# -- more activations (PyTorch's names and defaults) ----------------------------------------
# ``inplace=True`` is accepted as PyTorch's: eagerly the result is also written into
# ``input`` (a writable float array) and returned; while tracing every op makes a new value.
def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    return _activation("elu", input, {"alpha": alpha}, inplace, backend)


def gelu(input: Tensor, approximate: str = "none", *, backend: str | None = None) -> Tensor:
    """``x * Phi(x)``; ``approximate="tanh"`` uses PyTorch's tanh approximation (op ``gelu_tanh``)."""
    ops = {"none": "gelu", "tanh": "gelu_tanh"}
    if approximate not in ops:
        raise AttributeValueError(f"F.gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _activation(ops[approximate], input, {}, False, backend)


def silu(input: Tensor, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``x * sigmoid(x)`` (swish)."""
    return _activation("silu", input, {}, inplace, backend)


def hardswish(input: Tensor, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``x * relu6(x + 3) / 6``."""
    return _activation("hardswish", input, {}, inplace, backend)


def hardsigmoid(input: Tensor, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``relu6(x + 3) / 6``."""
    return _activation("hardsigmoid", input, {}, inplace, backend)


def mish(input: Tensor, inplace: bool = False, *, backend: str | None = None) -> Tensor:
    """``x * tanh(softplus(x))``."""
    return _activation("mish", input, {}, inplace, backend)


def hardtanh(
    input: Tensor,
    min_val: float = -1.0,
    max_val: float = 1.0,
    inplace: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """``clamp(x, min_val, max_val)``; its gradient is zero at and beyond the bounds, as PyTorch's."""
    return _activation("hardtanh", input, {"min_val": min_val, "max_val": max_val}, inplace, backend)


def softplus(
    input: Tensor, beta: float = 1.0, threshold: float = 20.0, *, backend: str | None = None
) -> Tensor:
    """``log(1 + exp(beta * x)) / beta``, linear where ``beta * x > threshold``."""
    return _activation("softplus", input, {"beta": beta, "threshold": threshold}, False, backend)


def _activation(op: str, input: Tensor, attrs: dict, inplace: bool, backend: str | None) -> Tensor:
    out = _call(op, [input], attrs, backend)
    if inplace and trace.active() is None and isinstance(input, np.ndarray) and input.flags.writeable:
        if input.dtype == out.dtype:
            np.copyto(input, out)
            return input
    return out


# -- local response normalisation -----------------------------------------------------------
def local_response_norm(
    input: Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    *,
    backend: str | None = None,
) -> Tensor:
    """``x / (k + alpha / size * sum of x^2 over size neighbouring channels)^beta`` (AlexNet's LRN)."""
    return _call(
        "local_response_norm", [input], {"size": size, "alpha": alpha, "beta": beta, "k": k}, backend
    )


# -- adaptive max pooling (global max pooling) ------------------------------------------------
def adaptive_max_pool2d(
    input: Tensor, output_size: Any, return_indices: bool = False, *, backend: str | None = None
) -> Tensor:
    """Max pooling to ``output_size``; ``1`` is global max pooling (ONNX ``GlobalMaxPool``).

    Runs as ``max_pool2d`` with kernel = stride = input size / output size, so each output
    size must divide the input size (PyTorch's windows for other sizes overlap unevenly; they
    are refused with an error saying so).
    """
    if return_indices:
        raise AttributeValueError("F.adaptive_max_pool2d: return_indices=True is not supported")
    shape = _shape_of(input)
    if len(shape) == 3:
        return _unbatched(input, lambda x: adaptive_max_pool2d(x, output_size, backend=backend))
    if len(shape) != 4:
        raise ShapeError(f"F.adaptive_max_pool2d: expected input [N,C,H,W], got shape {list(shape)}")
    sizes = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    if len(sizes) != 2:
        raise AttributeValueError(
            f"F.adaptive_max_pool2d: output_size must be an int or a pair, got {output_size!r}"
        )
    kernel = []
    for size, out in zip(shape[2:], sizes):
        out = size if out is None else out
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise AttributeValueError(
                f"F.adaptive_max_pool2d: output_size must be positive ints, got {output_size!r}"
            )
        if size % out:
            raise ShapeError(
                f"F.adaptive_max_pool2d: output size {out} must divide the input size {size} "
                f"(input {list(shape)}, output_size {output_size!r}); other sizes are not supported"
            )
        kernel.append(size // out)
    return max_pool2d(input, tuple(kernel), tuple(kernel), backend=backend)


# -- transposed convolution -------------------------------------------------------------------
def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    backend: str | None = None,
) -> Tensor:
    """The transposed 2-D convolution ("deconvolution"); ``weight`` is ``[Cin, Cout/groups, kh, kw]``.

    The output size is ``(in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``;
    a [C, H, W] input is one unbatched image.
    """
    if len(_shape_of(input)) == 3:
        return _unbatched(
            input,
            lambda x: conv_transpose2d(
                x, weight, bias, stride, padding, output_padding, groups, dilation, backend=backend
            ),
        )
    attrs = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
        "groups": groups,
    }
    tensors = [input, weight] + ([bias] if bias is not None else [])
    return _call("conv_transpose2d", tensors, attrs, backend, ("input", "weight", "bias"))


# -- padding ----------------------------------------------------------------------------------
def pad(
    input: Tensor,
    pad: Sequence[int],
    mode: str = "constant",
    value: float | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """``torch.nn.functional.pad``: ``pad`` holds (before, after) pairs from the last dim
    backwards, ``(left, right, top, bottom, ...)``; modes ``constant`` (``value``, default 0),
    ``reflect``, ``replicate``, ``circular``. Negative pads crop (constant mode)."""
    shape = _shape_of(input)
    rank = len(shape)
    if not isinstance(pad, (tuple, list)) or len(pad) % 2 or len(pad) // 2 > rank:
        raise AttributeValueError(
            f"F.pad: pad must hold (before, after) pairs for at most {rank} dims of input "
            f"{list(shape)}, got {pad!r}"
        )
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise AttributeValueError(
            f"F.pad: mode must be 'constant', 'reflect', 'replicate' or 'circular', got {mode!r}"
        )
    if value is not None and mode != "constant":
        raise AttributeValueError(f"F.pad: value applies to mode 'constant' only, got mode {mode!r}")
    befores, afters = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        befores[rank - 1 - k], afters[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    attrs = {"pads": tuple(befores + afters), "mode": mode, "value": 0.0 if value is None else value}
    return _call("pad", [input], attrs, backend)


# -- layer norm and group norm ----------------------------------------------------------------
def layer_norm(
    input: Tensor,
    normalized_shape: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims, then ``* weight + bias``."""
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else normalized_shape
    params = _affine("layer_norm", weight, bias, shape, input)
    attrs = {"normalized_shape": shape, "eps": eps}
    return _call("layer_norm", [input, *params], attrs, backend, ("input", "weight", "bias"))


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> Tensor:
    """Normalise each group of ``C / num_groups`` channels of a sample, then ``* weight[c] + bias[c]``."""
    shape = _shape_of(input)
    channels = (shape[1],) if len(shape) > 1 else ()
    params = _affine("group_norm", weight, bias, channels, input)
    attrs = {"num_groups": num_groups, "eps": eps}
    return _call("group_norm", [input, *params], attrs, backend, ("input", "weight", "bias"))


def _affine(op: str, weight: Tensor | None, bias: Tensor | None, shape: Any, input: Tensor) -> list:
    """The affine inputs of a normalisation op: none, the weight, or both (a bias without a
    weight is given the weight 1, eagerly; while tracing it needs a module parameter)."""
    if bias is None:
        return [] if weight is None else [weight]
    if weight is None:
        tracer = trace.active()
        if tracer is not None:
            raise ConvforgeError(f"{tracer.where()}: F.{op} with a bias but no weight cannot be traced")
        weight = np.ones(shape, np.asarray(input).dtype)
    return [weight, bias]


# -- interpolation -----------------------------------------------------------------------------
def interpolate(
    input: Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """Resize NCHW input to ``size`` or by ``scale_factor`` (``nearest``, ``nearest-exact``,
    ``bilinear``), with PyTorch's coordinates and output size ``floor(in * scale_factor)``."""
    where = "F.interpolate"
    shape = _shape_of(input)
    check_resize(where, size, scale_factor, mode, align_corners)
    if len(shape) != 4:
        raise ShapeError(f"{where}: expected input [N,C,H,W] of rank 4, got shape {list(shape)}")
    if antialias:
        raise AttributeValueError(f"{where}: antialias=True is not supported")
    scales = None
    if size is not None:
        out = int_tuple("size", size, 2, where=where)
    else:
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if len(factors) != 2 or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 for f in factors
        ):
            raise AttributeValueError(
                f"{where}: scale_factor must be a positive number or a pair, got {scale_factor!r}"
            )
        out = tuple(int(math.floor(float(n) * float(f))) for n, f in zip(shape[2:], factors))
        if min(out) < 1:
            raise ShapeError(
                f"{where}: scale_factor {scale_factor!r} gives an empty output {list(out)} "
                f"for input {list(shape)}"
            )
        scales = None if recompute_scale_factor else tuple(float(f) for f in factors)
    attrs = {"size": out, "mode": mode, "align_corners": bool(align_corners), "scales": scales}
    return _call("interpolate", [input], attrs, backend)


def check_resize(where: str, size: Any, scale_factor: Any, mode: str, align_corners: bool | None) -> None:
    """Refuse a resize mode convforge does not run, both or neither of ``size`` and
    ``scale_factor``, and ``align_corners`` outside mode ``bilinear`` (as PyTorch)."""
    if mode not in ("nearest", "nearest-exact", "bilinear"):
        raise AttributeValueError(
            f"{where}: mode must be 'nearest', 'nearest-exact' or 'bilinear' (the modes convforge "
            f"runs), got {mode!r}"
        )
    if align_corners is not None and mode != "bilinear":
        raise AttributeValueError(
            f"{where}: align_corners applies to mode 'bilinear' only (as PyTorch), got mode {mode!r}"
        )
    if (size is None) == (scale_factor is None):
        raise AttributeValueError(f"{where}: give exactly one of size and scale_factor")


def upsample(
    input: Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """The deprecated name of :func:`interpolate`, as in PyTorch."""
    return interpolate(input, size, scale_factor, mode, align_corners, backend=backend)


# -- max unpooling ----------------------------------------------------------------------------
def max_unpool2d(
    input: Tensor,
    indices: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """The partial inverse of ``max_pool2d(return_indices=True)``: zeros with each value written
    at its index. The output size is ``(in - 1) * stride - 2 * padding + kernel_size``, or
    ``output_size`` (its last two entries), which must lie within ``stride`` of it, as PyTorch."""
    where = "F.max_unpool2d"
    shape = _shape_of(input)
    if len(shape) != 4:
        raise ShapeError(f"{where}: expected input [N,C,H,W] of rank 4, got shape {list(shape)}")
    kernel = int_tuple("kernel_size", kernel_size, 2, where=where)
    strides = kernel if stride is None else int_tuple("stride", stride, 2, where=where)
    pads = int_tuple("padding", padding, 2, minimum=0, where=where)
    default = tuple((n - 1) * s - 2 * p + k for n, s, p, k in zip(shape[2:], strides, pads, kernel))
    size = default
    if output_size is not None:
        size = int_tuple("output_size", tuple(output_size)[-2:], 2, where=where)
        for got, d, s in zip(size, default, strides):
            if not d - s < got < d + s:
                raise ShapeError(
                    f"{where}: output_size {list(size)} must lie strictly within stride {list(strides)} "
                    f"of the default size {list(default)}"
                )
    if trace.active() is None:
        flat = np.asarray(indices)
        if flat.size and (flat.min() < 0 or flat.max() >= size[0] * size[1]):
            raise ShapeError(
                f"{where}: indices must lie in [0, {size[0] * size[1]}) (planes of {list(size)}), "
                f"got values in [{int(flat.min())}, {int(flat.max())}]"
            )
    return _call("max_unpool2d", [input, indices], {"output_size": size}, backend, ("input", "indices"))
