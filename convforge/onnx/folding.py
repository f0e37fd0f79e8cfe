"""Constant folding at import: ONNX nodes whose inputs are all known are evaluated with NumPy.

Exporters wrap shape arithmetic around the network (``Shape -> Gather -> Unsqueeze ->
Concat -> Reshape`` for ``x.view(x.size(0), -1)``), and some files build their weights with
``ConstantOfShape``. Those subgraphs are evaluated here, once, so the convforge graph holds
only the tensor computation.

A shape read from a tensor whose batch is symbolic holds a :class:`BatchDim` (``k * N``)
where the batch is; it passes through ``Gather``, ``Concat``, ``Unsqueeze``, ``Slice``,
``Cast``, ``Mul`` by an int and exact ``Div``, and a ``Reshape`` target entry equal to ``N``
becomes the IR's batch symbol. Anything else done to it (``N + 1``, ``ConstantOfShape``
of it) cannot be resolved and is refused by the caller.

>>> fold("Gather", [shape_of(("N", 3, 8, 8)), np.array(0)], {}, opset=13)
[array(N, dtype=object)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convforge.onnx.reader import UnsupportedError


class BatchDim:
    """``k * N``: a shape entry proportional to the symbolic batch."""

    __slots__ = ("k",)

    def __init__(self, k: int = 1):
        self.k = int(k)

    def __mul__(self, other: Any) -> BatchDim:
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            return BatchDim(self.k * int(other))
        raise _unresolved(f"{self} * {other}")

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> BatchDim:
        if isinstance(other, (int, np.integer)) and other and self.k % int(other) == 0:
            return BatchDim(self.k // int(other))
        raise _unresolved(f"{self} / {other}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchDim) and other.k == self.k

    def __hash__(self) -> int:
        return hash(("N", self.k))

    def __int__(self) -> int:
        raise _unresolved(f"{self} used as a number")

    __index__ = __int__

    def _refuse(self, *_: Any) -> Any:
        raise _unresolved(f"arithmetic on {self}")

    __add__ = __radd__ = __sub__ = __rsub__ = __truediv__ = __rtruediv__ = __mod__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __neg__ = _refuse

    def __repr__(self) -> str:
        return "N" if self.k == 1 else f"{self.k}*N"


class Unresolved(UnsupportedError):
    """A shape computation that depends on the batch size in a way the IR cannot express."""


def _unresolved(what: str) -> Unresolved:
    return Unresolved(
        f"the dynamic batch dimension cannot be resolved ({what}); "
        "load the model with a fixed batch, e.g. input_shape=(1, ...)"
    )


def is_symbolic(arr: np.ndarray) -> bool:
    return arr.dtype == object


def shape_of(shape: Sequence[Any]) -> np.ndarray:
    """The int64 array ONNX ``Shape`` gives, with a :class:`BatchDim` where the IR has ``N``."""
    if any(d == "N" for d in shape):
        return np.array([BatchDim() if d == "N" else int(d) for d in shape], dtype=object)
    return np.array(shape, dtype=np.int64)


# =========================================================================================
# Folders: ONNX op -> fn(inputs, attrs, opset) -> outputs
# =========================================================================================
Folder = Callable[[list, dict, int], list]
FOLDERS: dict[str, Folder] = {}


def folder(*names: str) -> Callable[[Folder], Folder]:
    def register(fn: Folder) -> Folder:
        for name in names:
            FOLDERS[name] = fn
        return fn

    return register


def can_fold(op_type: str) -> bool:
    return op_type in FOLDERS


def fold(op_type: str, inputs: list, attrs: dict, opset: int) -> list:
    """Evaluate ``op_type`` on known inputs (``None`` for an omitted optional input)."""
    return FOLDERS[op_type](inputs, attrs, opset)


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise UnsupportedError(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


@folder("Constant")
def _(inputs, attrs, opset):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attrs:
            value = attrs[key]
            if key in ("value_float", "value_floats"):
                return [np.array(value, dtype=np.float32)]
            if key in ("value_int", "value_ints"):
                return [np.array(value, dtype=np.int64)]
            return [np.asarray(value)]
    raise UnsupportedError(
        f"Constant with attribute(s) {', '.join(attrs) or 'none'}; supported: value, value_float(s), "
        "value_int(s) (not strings or sparse tensors)"
    )


@folder("ConstantOfShape")
def _(inputs, attrs, opset):
    (shape,) = inputs
    if is_symbolic(shape):
        raise _unresolved("ConstantOfShape of a shape holding the batch")
    value = attrs.get("value", np.zeros(1, np.float32))
    fill = np.asarray(value).reshape(-1)
    return [np.full(tuple(int(d) for d in shape), fill[0], dtype=fill.dtype)]


@folder("Identity", "Dropout")
def _(inputs, attrs, opset):
    outs = [inputs[0]]
    return outs + [np.ones(np.shape(inputs[0]), dtype=bool)]


@folder("Cast")
def _(inputs, attrs, opset):
    from onnx import helper

    (x,) = inputs
    to = int(attrs["to"])
    np_dtype = helper.tensor_dtype_to_np_dtype(to)
    if is_symbolic(x):
        if np_dtype.kind not in "iu":
            raise _unresolved(f"Cast of the batch to {np_dtype}")
        return [x.copy()]
    if np_dtype.kind not in "fiub":
        raise UnsupportedError(f"Cast to {np_dtype} is not supported")
    return [np.asarray(x).astype(np_dtype)]


@folder("Shape")
def _(inputs, attrs, opset):
    # the caller folds Shape of a runtime tensor itself (it knows the type); here the input is known
    shape = shape_of(np.shape(inputs[0]))
    return [shape_slice(shape, attrs)]


def shape_slice(shape: np.ndarray, attrs: dict) -> np.ndarray:
    rank = len(shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return shape[start:end]


@folder("Size")
def _(inputs, attrs, opset):
    return [np.array(np.size(inputs[0]), dtype=np.int64)]


@folder("Gather")
def _(inputs, attrs, opset):
    data, indices = inputs
    axis = _axis(attrs.get("axis", 0), np.ndim(data))
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise UnsupportedError(f"Gather indices of dtype {idx.dtype}")
    size = np.shape(data)[axis]
    if ((idx < -size) | (idx >= size)).any():
        raise UnsupportedError(f"Gather index out of range [-{size}, {size})")
    return [np.take(data, np.where(idx < 0, idx + size, idx), axis=axis)]


def _axes_arg(inputs: list, attrs: dict, opset: int, since_input: int) -> list[int] | None:
    if opset >= since_input:
        if len(inputs) > 1 and inputs[1] is not None:
            return [int(a) for a in np.asarray(inputs[1]).reshape(-1)]
        return None
    return attrs.get("axes")


@folder("Unsqueeze")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    axes = _axes_arg(inputs, attrs, opset, 13) or []
    rank = x.ndim + len(axes)
    out = x
    for a in sorted(_axis(a, rank) for a in axes):
        out = np.expand_dims(out, a)
    return [out]


@folder("Squeeze")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    axes = _axes_arg(inputs, attrs, opset, 13)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in axes))]


@folder("Concat")
def _(inputs, attrs, opset):
    arrays = [np.asarray(x) for x in inputs]
    axis = _axis(attrs["axis"], np.ndim(arrays[0]))
    if any(is_symbolic(a) for a in arrays):
        arrays = [a.astype(object) for a in arrays]
    return [np.concatenate(arrays, axis=axis)]


@folder("Reshape")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    target = inputs[1] if opset >= 5 else np.asarray(attrs["shape"])
    if is_symbolic(target):
        raise _unresolved("Reshape of a constant to a batch-sized shape")
    shape = [int(d) for d in np.asarray(target).reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@folder("Flatten")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    axis = _axis(attrs.get("axis", 1), x.ndim + 1)
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(rows, -1)]


@folder("Transpose")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    perm = attrs.get("perm")
    return [np.transpose(x, perm)]


@folder("Slice")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    if opset >= 10:
        starts, ends = (np.asarray(v).reshape(-1) for v in inputs[1:3])
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", range(len(starts)))
        steps = [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    axes = np.asarray(list(axes)).reshape(-1)
    steps = np.asarray(list(steps)).reshape(-1)
    for s, e, a, st in zip(starts, ends, axes, steps):
        # int() of a BatchDim raises: bounds that hold the batch cannot be folded
        index[_axis(int(a), x.ndim)] = slice(int(s), int(e), int(st))
    return [x[tuple(index)]]


@folder("Range")
def _(inputs, attrs, opset):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    if any(is_symbolic(np.asarray(v)) for v in (start, limit, delta)):
        raise _unresolved("Range over the batch")
    return [np.arange(start, limit, delta).astype(np.result_type(start, limit, delta))]


def _binary(fn: Callable[[Any, Any], Any]) -> Folder:
    def run(inputs, attrs, opset):
        a, b = (np.asarray(v) for v in inputs)
        if opset < 7 and attrs.get("broadcast", 0):
            b = _legacy_broadcast(b, a.ndim, attrs.get("axis"))
        if is_symbolic(a) or is_symbolic(b):
            return [np.asarray(fn(a.astype(object), b.astype(object)), dtype=object)]
        return [np.asarray(fn(a, b))]

    return run


def _legacy_broadcast(b: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Opset < 7 ``broadcast=1``: ``b``'s dims line up with ``a``'s from ``axis`` (default: the end)."""
    if axis is None:
        return b
    axis = axis + rank if axis < 0 else axis
    return b.reshape(b.shape + (1,) * (rank - axis - b.ndim))


FOLDERS["Add"] = _binary(lambda a, b: a + b)
FOLDERS["Sub"] = _binary(lambda a, b: a - b)
FOLDERS["Mul"] = _binary(lambda a, b: a * b)
FOLDERS["Equal"] = _binary(lambda a, b: a == b)


@folder("Div")
def _(inputs, attrs, opset):
    a, b = (np.asarray(v) for v in inputs)
    if is_symbolic(a) or is_symbolic(b):
        return [np.asarray(a.astype(object) // b.astype(object), dtype=object)]
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return [np.trunc(a / b).astype(np.result_type(a, b))]  # ONNX integer division truncates
    return [np.asarray(a / b)]


@folder("Neg")
def _(inputs, attrs, opset):
    return [np.negative(np.asarray(inputs[0]))]


@folder("Sqrt")
def _(inputs, attrs, opset):
    return [np.sqrt(np.asarray(inputs[0]))]


@folder("Where")
def _(inputs, attrs, opset):
    cond, a, b = (np.asarray(v) for v in inputs)
    if is_symbolic(a) or is_symbolic(b):
        if is_symbolic(cond):
            raise _unresolved("Where on the batch")
        return [np.where(cond, a.astype(object), b.astype(object))]
    return [np.where(cond, a, b)]


@folder("Expand")
def _(inputs, attrs, opset):
    x, shape = inputs
    if is_symbolic(np.asarray(shape)):
        raise _unresolved("Expand to a batch-sized shape")
    target = np.broadcast_shapes(np.shape(x), tuple(int(d) for d in np.asarray(shape).reshape(-1)))
    return [np.broadcast_to(x, target).copy()]


@folder("ReduceProd")
def _(inputs, attrs, opset):
    x = np.asarray(inputs[0])
    axes = _axes_arg(inputs, attrs, opset, 18)
    keep = bool(attrs.get("keepdims", 1))
    return [np.prod(x, axis=None if not axes else tuple(axes), keepdims=keep)]
