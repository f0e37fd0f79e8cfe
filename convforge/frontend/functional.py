"""``convforge.functional``: PyTorch's ``torch.nn.functional`` names, arguments and defaults.

Inside a traced ``forward`` each call emits one IR node. Outside, it runs eagerly on
NumPy arrays as a one-op graph, compiled once per signature (op, attributes, input types,
backend) and cached::

    y = F.conv2d(x, w, b, stride=1, padding="same", backend="reference")
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from convforge.errors import AttributeValueError, ConvforgeError, DTypeError, ShapeError
from convforge.frontend import trace
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType, dtype_name

Tensor = Any  # np.ndarray, or a SymbolicTensor while tracing

__all__ = [
    "adaptive_avg_pool2d",
    "add",
    "avg_pool2d",
    "batch_norm",
    "concat",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "dropout",
    "flatten",
    "leaky_relu",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "mul",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "tanh",
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
    kernel = tuple(_shape_of(weight))[2:]
    pad = resolve_padding(
        padding, kernel, _pair(dilation, "dilation", dims), _pair(stride, "stride", dims), op
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
            f"{op}: padding must be an int, a tuple, 'same' or 'valid', got {padding!r}"
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
    *,
    backend: str | None = None,
) -> Tensor:
    attrs = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "ceil_mode": ceil_mode,
    }
    return _call("max_pool2d", [input], attrs, backend)


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
        raise AttributeValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
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
    """``input @ weight.T + bias``."""
    return _call(
        "linear",
        [input, weight] + ([bias] if bias is not None else []),
        {},
        backend,
        ("input", "weight", "bias"),
    )


def relu(input: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("relu", [input], {}, backend)


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
def cross_entropy(
    input: Tensor, target: Tensor, reduction: str = "mean", *, backend: str | None = None
) -> Tensor:
    """Mean (or sum) of ``-log softmax(input)[target]`` for integer class labels."""
    if trace.active() is None:
        target = _labels(target, _shape_of(input), "cross_entropy")
    return _call("cross_entropy", [input, target], {"reduction": reduction}, backend, ("input", "target"))


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    return _call("mse_loss", [input, target], {"reduction": reduction}, backend, ("input", "target"))


# -- structure ----------------------------------------------------------------------------
def add(input: Tensor, other: Tensor, *, backend: str | None = None) -> Tensor:
    """Elementwise sum of two tensors of one shape (a residual connection)."""
    return _call("add", [input, other], {}, backend, ("input", "other"))


def mul(input: Tensor, other: Tensor, *, backend: str | None = None) -> Tensor:
    return _call("mul", [input, other], {}, backend, ("input", "other"))


def concat(tensors: Sequence[Tensor], dim: int = 1, *, backend: str | None = None) -> Tensor:
    """Join tensors along ``dim`` (``torch.cat``)."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ConvforgeError(f"concat expects a non-empty list of tensors, got {tensors!r}")
    return _call(
        "concat", list(tensors), {"dim": dim}, backend, tuple(f"tensors[{i}]" for i in range(len(tensors)))
    )


cat = concat


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1, *, backend: str | None = None) -> Tensor:
    return _call("flatten", [input], {"start_dim": start_dim, "end_dim": end_dim}, backend)


def reshape(input: Tensor, shape: Sequence[Any], *, backend: str | None = None) -> Tensor:
    """Reshape; while tracing the leading dimension may be written -1 or "N" for the batch."""
    src = _shape_of(input)
    target = list(shape)
    if trace.active() is not None and src and src[0] == "N" and target and target[0] in (-1, "N"):
        target[0] = "N"
    if target.count(-1) == 1:
        known = int(np.prod([d for d in target if d not in (-1, "N")]))
        total = int(np.prod([d for d in src if d != "N"]))
        if known == 0 or total % known:
            raise ShapeError(f"cannot reshape {list(src)} to {list(shape)}")
        target[target.index(-1)] = total // known
    return _call("reshape", [input], {"shape": tuple(target)}, backend)


# -- machinery ----------------------------------------------------------------------------
def _call(op: str, tensors: list, attrs: dict, backend: str | None, names: Sequence[str] = ("input",)):
    tracer = trace.active()
    if tracer is not None:
        values = [tracer.lift(t, names[min(i, len(names) - 1)]) for i, t in enumerate(tensors)]
        node = tracer.graph.create_node(op, values, attrs, tracer.node_meta())
        outs = tuple(tracer.wrap(v) for v in node.outputs)
        return outs[0] if len(outs) == 1 else outs
    arrays = [_as_array(t, names[min(i, len(names) - 1)], op) for i, t in enumerate(tensors)]
    from convforge.backends import resolve

    types = tuple(TensorType(dtype_name(a.dtype), a.shape) for a in arrays)
    program = _eager_program(op, _hashable(attrs), types, resolve(backend))
    outs = program.run({f"in{i}": a for i, a in enumerate(arrays)})
    return outs[0] if len(outs) == 1 else tuple(outs)


@functools.lru_cache(maxsize=256)
def _eager_program(op: str, attrs: tuple, types: tuple[TensorType, ...], backend: str):
    from convforge.backends import get_backend

    graph = Graph(op)
    inputs = [graph.add_input(f"in{i}", t) for i, t in enumerate(types)]
    node = graph.create_node(op, inputs, dict(attrs), {"layer": f"F.{op}"})
    graph.set_outputs(node.outputs)
    return get_backend(backend).compile_graph(graph)


def _hashable(attrs: dict) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items())


def _as_array(obj: Any, name: str, op: str) -> np.ndarray:
    if isinstance(obj, trace.SymbolicTensor):
        raise ConvforgeError(f"F.{op}: {name} is a symbolic tensor but no trace is active")
    try:
        arr = np.asarray(obj)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot convert is a user mistake
        raise DTypeError(f"F.{op}: {name} must be a numeric array, got {type(obj).__name__}: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"F.{op}: {name} must be a numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind in "iub" and name not in ("target", "step"):
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    return np.asarray(arr, order="C")


def _labels(target: Any, input_shape: Sequence[Any], op: str) -> np.ndarray:
    arr = np.asarray(target)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"F.{op}: target must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if len(input_shape) == 2 and arr.size and (arr.min() < 0 or arr.max() >= input_shape[1]):
        raise ShapeError(
            f"F.{op}: class labels must lie in [0, {input_shape[1]}), got {int(arr.max())}"
            if arr.max() >= input_shape[1]
            else f"F.{op}: class labels must lie in [0, {input_shape[1]}), got {int(arr.min())}"
        )
    return arr


def _shape_of(obj: Any) -> tuple:
    if isinstance(obj, trace.SymbolicTensor):
        return obj.shape
    return tuple(np.shape(obj))


def _pair(value: Any, name: str, n: int) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (tuple, list)) and len(value) == n:
        return tuple(value)
    raise AttributeValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
