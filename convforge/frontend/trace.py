"""Tracing: run a model's ``forward`` on symbolic tensors and record the IR it calls.

While a :class:`Tracer` is active, ``convforge.functional`` emits graph nodes instead of
computing (through :meth:`Tracer.call`), parameters resolve to graph inputs named by their
``state_dict`` key, and every node records the layer it came from (``features.3 (Conv2d)``)
and the user's source line. This module does not import ``convforge.functional``: a
symbolic tensor's methods (``x + y``, ``x.flatten(1)``) emit their ops the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from convforge.errors import ConvforgeError, ShapeError
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH, TensorType, dtype_name

if TYPE_CHECKING:
    from convforge.frontend.nn import Module

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ACTIVE: list[Tracer] = []


class SymbolicTensor:
    """A stand-in for a tensor during tracing: it has a type but no values.

    Supports what ``forward`` code usually does, with PyTorch's meaning: ``.shape``,
    ``.dtype``, ``.dim()``, ``.size(i)``; ``+ - * /`` between tensors (broadcasting) and with
    Python numbers on either side, unary ``-``; ``.sum``, ``.mean``, ``.amax`` over dims
    with ``keepdim``; ``.reshape`` / ``.view`` (``-1`` inferred), ``.flatten``, ``.permute``,
    ``.transpose``, ``.squeeze``, ``.unsqueeze``, ``.split``; basic indexing ``x[:, :8]``,
    ``x[..., 1:]``, ``x[:, 2]``, ``x[:, None]`` (ints, slices with a positive step,
    ``...``, ``None``; the batch dimension is not indexed).
    """

    __array_priority__ = 1000  # so ``ndarray + SymbolicTensor`` defers to us

    def __init__(self, value: Value, tracer: Tracer):
        self.value = value
        self.tracer = tracer

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple:
        return self.value.type.shape

    @property
    def ndim(self) -> int:
        return self.value.type.rank

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    # the methods are ``convforge.functional``'s ops of the same names, traced
    def __add__(self, other: Any) -> SymbolicTensor:
        return arithmetic("add", self, other, _emit)

    def __radd__(self, other: Any) -> SymbolicTensor:
        return arithmetic("add", other, self, _emit)

    def __sub__(self, other: Any) -> SymbolicTensor:
        return arithmetic("sub", self, other, _emit)

    def __rsub__(self, other: Any) -> SymbolicTensor:
        return arithmetic("sub", other, self, _emit)

    def __mul__(self, other: Any) -> SymbolicTensor:
        return arithmetic("mul", self, other, _emit)

    def __rmul__(self, other: Any) -> SymbolicTensor:
        return arithmetic("mul", other, self, _emit)

    def __truediv__(self, other: Any) -> SymbolicTensor:
        return arithmetic("div", self, other, _emit)

    def __rtruediv__(self, other: Any) -> SymbolicTensor:
        return arithmetic("div", other, self, _emit)

    def __neg__(self) -> SymbolicTensor:
        return _emit("neg", [self], {})

    def __pos__(self) -> SymbolicTensor:
        return self

    def __getitem__(self, key: Any) -> SymbolicTensor:
        return index(self, key, _emit)

    def sum(self, dim: Any = None, keepdim: bool = False) -> SymbolicTensor:
        return _emit("reduce_sum", [self], reduction(self.shape, dim, keepdim, "sum"))

    def mean(self, dim: Any = None, keepdim: bool = False) -> SymbolicTensor:
        return _emit("reduce_mean", [self], reduction(self.shape, dim, keepdim, "mean"))

    def amax(self, dim: Any = (), keepdim: bool = False) -> SymbolicTensor:
        return _emit("reduce_max", [self], reduction(self.shape, dim, keepdim, "amax"))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> SymbolicTensor:
        return _emit("flatten", [self], {"start_dim": start_dim, "end_dim": end_dim})

    def reshape(self, *shape: Any) -> SymbolicTensor:
        target = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _emit("reshape", [self], {"shape": reshape_target(self.shape, target)})

    view = reshape

    def squeeze(self, dim: Any = None) -> SymbolicTensor:
        return _reshaped(self, squeezed(self.shape, dim))

    def unsqueeze(self, dim: int) -> SymbolicTensor:
        return _reshaped(self, unsqueezed(self.shape, dim))

    def permute(self, *dims: Any) -> SymbolicTensor:
        perm = permutation(
            self.ndim, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        )
        return self if perm == tuple(range(self.ndim)) else _emit("transpose", [self], {"perm": perm})

    def transpose(self, dim0: int, dim1: int) -> SymbolicTensor:
        return self.permute(swapped(self.ndim, dim0, dim1))

    def split(self, split_size_or_sections: Any, dim: int = 0) -> tuple[SymbolicTensor, ...]:
        return split(self, split_size_or_sections, dim, _emit)

    def contiguous(self) -> SymbolicTensor:
        """Every traced tensor is contiguous (a transpose copies): ``self``."""
        return self

    def relu(self) -> SymbolicTensor:
        return _emit("relu", [self], {})

    def __repr__(self) -> str:
        return f"SymbolicTensor(%{self.value.name}: {self.value.type})"

    def __array__(self, *args: Any, **kwargs: Any):
        raise ConvforgeError(
            f"cannot turn the symbolic tensor %{self.value.name} ({self.value.type}) into a NumPy array "
            "while tracing: forward() must use convforge.functional ops, not NumPy, on its inputs"
        )

    def __bool__(self) -> bool:
        raise ConvforgeError(
            "a symbolic tensor has no truth value while tracing: data-dependent control flow "
            "cannot be compiled"
        )


class Tracer:
    """Records one graph; parameters and buffers become named graph inputs on first use."""

    def __init__(self, graph: Graph, names: dict[int, str], training: bool, dtype: str = "f32"):
        self.graph = graph
        self.names = names  # id(array) -> state_dict key
        self.training = training
        self.dtype = dtype
        self.params: dict[str, Value] = {}
        self.module_stack: list[tuple[str, str, str | None]] = []  # (path, type name, loc)
        self.builtin: list[bool] = []  # whether each module on the stack is a convforge layer
        #: state updates produced while tracing: buffer key -> value holding its new contents
        self.state_updates: dict[str, Value] = {}
        self.layer_counter = 0
        #: id(module) -> its path in the model ("features.3"), filled by the frontend
        self.module_paths: dict[int, str] = {}
        self._step: Value | None = None

    # -- values -----------------------------------------------------------------------
    def wrap(self, value: Value) -> SymbolicTensor:
        return SymbolicTensor(value, self)

    def lift(self, obj: Any, what: str) -> Value:
        """The graph value for a symbolic tensor, parameter or buffer."""
        if isinstance(obj, SymbolicTensor):
            if obj.tracer is not self:
                raise ConvforgeError(f"{self.where()}: {what} comes from another trace")
            return obj.value
        if isinstance(obj, np.ndarray) and id(obj) in self.names:
            key = self.names[id(obj)]
            if key not in self.params:
                dt = self.dtype if obj.dtype.kind == "f" else dtype_name(obj.dtype)
                self.params[key] = self.graph.add_input(key, TensorType(dt, tuple(obj.shape)))
            return self.params[key]
        given = type(obj).__name__ + (f" of shape {obj.shape}" if isinstance(obj, np.ndarray) else "")
        raise ConvforgeError(
            f"{self.where()}: {what} must be a traced tensor or a registered parameter/buffer, "
            f"got a {given}; "
            "register constant tensors on the module (nn.Parameter or register_buffer)"
        )

    def call(self, op: str, tensors: Sequence[Any], attrs: dict, names: Sequence[str] = ("input",)) -> Any:
        """Emit ``op(tensors) {attrs}`` into the graph and return its output(s) as symbolic
        tensors; tensor ``i`` is called ``names[i]`` in errors (the last name repeats)."""
        values = [self.lift(t, names[min(i, len(names) - 1)]) for i, t in enumerate(tensors)]
        node = self.graph.create_node(op, values, attrs, self.node_meta())
        outs = tuple(self.wrap(v) for v in node.outputs)
        return outs[0] if len(outs) == 1 else outs

    def step_input(self) -> Value:
        """The ``step`` counter (i64 scalar) that dropout and the optimizers read."""
        if self._step is None:
            self._step = self.graph.add_input("step", TensorType("i64", ()))
        return self._step

    # -- provenance -------------------------------------------------------------------
    @contextlib.contextmanager
    def module_scope(self, path: str, module: Module) -> Iterator[None]:
        self.module_stack.append((path, type(module).__name__, getattr(module, "_cf_loc", None)))
        self.builtin.append(type(module).__module__.startswith("convforge."))
        try:
            yield
        finally:
            self.module_stack.pop()
            self.builtin.pop()

    def where(self) -> str:
        if not self.module_stack:
            return "model"
        path, kind, _ = self.module_stack[-1]
        return f"{path or '<root>'} ({kind})"

    def node_meta(self) -> dict[str, str]:
        """Layer path and source line: a built-in layer points at where the user built it,
        a custom ``forward`` at the line that called the op."""
        meta: dict[str, str] = {}
        loc = None
        if self.module_stack:
            meta["layer"] = self.where()
            path, kind, built_at = self.module_stack[-1]
            loc = built_at if self.builtin[-1] else None
        loc = loc or user_location()
        if loc:
            meta["loc"] = loc
        return meta


def active() -> Tracer | None:
    return _ACTIVE[-1] if _ACTIVE else None


def not_traced_error(op: str, name: str) -> ConvforgeError:
    """The error for a symbolic tensor given to ``op`` (as its ``name``) with no trace active."""
    return ConvforgeError(f"F.{op}: {name} is a symbolic tensor but no trace is active")


def _emit(op: str, tensors: Sequence[Any], attrs: dict, names: Sequence[str] = ("input",)) -> Any:
    """``op`` on the active trace, as ``convforge.functional`` emits it (its first tensor is
    symbolic, so without a trace it cannot run)."""
    tracer = active()
    if tracer is None:
        raise not_traced_error(op, names[0])
    return tracer.call(op, tensors, attrs, names)


def reshape_target(src: Sequence[Any], shape: Sequence[Any]) -> tuple:
    """The ``reshape`` attribute for a tensor of shape ``src``: while tracing a leading -1 or
    ``"N"`` stays the batch symbol; one other -1 is inferred from the element count."""
    target = list(shape)
    if active() is not None and src and src[0] == "N" and target and target[0] in (-1, "N"):
        target[0] = "N"
    if target.count(-1) == 1:
        known = int(np.prod([d for d in target if d not in (-1, "N")]))
        total = int(np.prod([d for d in src if d != "N"]))
        if known == 0 or total % known:
            raise ShapeError(f"cannot reshape {list(src)} to {list(shape)}")
        target[target.index(-1)] = total // known
    return tuple(target)


# -- tensor arithmetic and relayouts, shared with ``convforge.functional`` -------------------
#: ``emit(op, tensors, attrs, names)``: how an op is emitted, traced (``_emit``) or eagerly
#: (``functional._call``); the helpers below only decide which ops.
Emit = Callable[..., Any]


def is_number(obj: Any) -> bool:
    """A Python (or NumPy) scalar, which arithmetic folds into the op's attributes."""
    return isinstance(obj, (int, float, np.integer, np.floating)) and not isinstance(obj, np.ndarray)


def arithmetic(op: str, input: Any, other: Any, emit: Emit) -> Any:
    """``input op other`` for ``op`` in add, sub, mul, div, either side a Python number:
    ``x + 1.0`` is ``add_scalar``, ``x * 0.5`` and ``x / 2`` are ``scale``, ``1.0 - x`` is
    ``add_scalar(neg(x), 1.0)``, ``2 / x`` is ``scale(reciprocal(x), 2.0)``; two tensors
    broadcast (``add``, ``sub``, ``mul``, ``div``)."""
    left, right = is_number(input), is_number(other)
    if left and right:
        raise ConvforgeError(f"{op} of two numbers ({input!r}, {other!r}) has no tensor to act on")
    if not left and not right:
        return emit(op, [input, other], {}, ("input", "other"))
    tensor, number = (other, float(input)) if left else (input, float(other))
    if op == "add":
        return emit("add_scalar", [tensor], {"value": number})
    if op == "mul":
        return emit("scale", [tensor], {"factor": number})
    if op == "sub":
        if right:
            return emit("add_scalar", [tensor], {"value": -number})
        return emit("add_scalar", [emit("neg", [tensor], {})], {"value": number})
    if op == "div":
        if right:
            factor = 1.0 / number if number != 0 else math.copysign(math.inf, number)
            return emit("scale", [tensor], {"factor": factor})
        inverse = emit("reciprocal", [tensor], {})
        return inverse if number == 1.0 else emit("scale", [inverse], {"factor": number})
    raise ConvforgeError(f"unknown arithmetic op {op!r}")


def _dim(dim: Any, rank: int, what: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise _error(f"{what} must be an int, got {dim!r}")
    if not -rank <= dim < max(rank, 1):
        raise _error(f"{what} {dim} is out of range for rank {rank} (expected [{-rank}, {rank - 1}])")
    return int(dim) % max(rank, 1)


def reduction(shape: Sequence[Any], dim: Any, keepdim: bool, what: str) -> dict:
    """The attributes of a reduction over ``dim`` (None or ``()``: every dim, as torch's
    ``sum`` / ``mean`` / ``amax``; an int or a sequence of ints)."""
    rank = len(shape)
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        dims = tuple(range(rank))
    else:
        items = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        dims = tuple(_dim(d, rank) for d in items)
        if len(set(dims)) != len(dims):
            raise _error(f"{what}: dim {tuple(items)} names a dimension twice")
    return {"dims": dims, "keepdim": bool(keepdim)}


def squeezed(shape: Sequence[Any], dim: Any = None) -> tuple:
    """``shape`` without its size-1 dims (only those of ``dim``, an int or a tuple, if given;
    a named dim of another size stays, as in torch). The batch ``N`` is never squeezed."""
    rank = len(shape)
    if dim is None:
        drop = {i for i, d in enumerate(shape) if d == 1}
    else:
        items = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        drop = {i for i in (_dim(d, rank) for d in items) if shape[i] == 1}
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def unsqueezed(shape: Sequence[Any], dim: int) -> tuple:
    """``shape`` with a size-1 dim inserted at ``dim`` (``-1``: at the end, as in torch)."""
    at = _dim(dim, len(shape) + 1)
    return tuple(shape[:at]) + (1,) + tuple(shape[at:])


def permutation(rank: int, dims: Sequence[Any]) -> tuple[int, ...]:
    """``dims`` (negative ones allowed) as a permutation of ``0..rank-1``."""
    perm = tuple(_dim(d, rank) for d in dims)
    if sorted(perm) != list(range(rank)):
        raise _error(f"permute dims {tuple(dims)} are not a permutation of the {rank} dims")
    return perm


def swapped(rank: int, dim0: Any, dim1: Any) -> tuple[int, ...]:
    """The permutation exchanging ``dim0`` and ``dim1``."""
    perm = list(range(rank))
    a, b = _dim(dim0, rank, "dim0"), _dim(dim1, rank, "dim1")
    perm[a], perm[b] = b, a
    return tuple(perm)


def split_bounds(size: Any, split_size_or_sections: Any, dim: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each piece of torch.split: pieces of ``split_size_or_sections``
    (the last may be smaller), or the listed sizes (which must add up to ``size``)."""
    if size == BATCH:
        raise _error("split along the batch dimension N is not supported")
    if isinstance(split_size_or_sections, (tuple, list)):
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != size or any(s < 0 for s in sizes):
            raise _error(f"split sections {sizes} do not add up to {size}, the size of dim {dim}")
    else:
        step = split_size_or_sections
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
            raise _error(f"split_size must be a positive int, got {step!r}")
        sizes = [min(step, size - start) for start in range(0, size, step)] or [0]
    bounds, start = [], 0
    for n in sizes:
        bounds.append((start, start + n))
        start += n
    return bounds


def split(x: Any, split_size_or_sections: Any, dim: int, emit: Emit) -> tuple:
    shape = x.shape
    axis = _dim(dim, len(shape))
    return tuple(
        emit("slice", [x], {"dim": axis, "start": a, "stop": b, "step": 1})
        for a, b in split_bounds(shape[axis], split_size_or_sections, dim)
    )


def index(x: Any, key: Any, emit: Emit) -> Any:
    """``x[key]`` with basic indexing: ints, slices (positive steps), ``...`` and ``None``.
    Each sliced dim is one ``slice`` node; dropped (int) and new (None) dims are one final
    ``reshape``. The batch dimension can only be taken whole (``:``)."""
    items = key if isinstance(key, tuple) else (key,)
    for item in items:
        if not (item is None or item is Ellipsis or isinstance(item, slice) or _is_int(item)):
            raise _error(
                f"indexing with {type(item).__name__} is not supported: use ints, slices, ... and None"
            )
    if sum(item is Ellipsis for item in items) > 1:
        raise _error("an index can only have a single ellipsis ('...')")
    shape = tuple(x.shape)
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if used > len(shape):
        raise _error(f"too many indices for a tensor of rank {len(shape)}: {used} given")
    at = items.index(Ellipsis) if Ellipsis in items else len(items)
    items = items[:at] + (slice(None),) * (len(shape) - used) + items[at + 1 :]
    out, dim, result = [], 0, x
    for item in items:
        if item is None:
            out.append(1)
            continue
        size = shape[dim]
        if _is_int(item):
            if size == BATCH:
                raise _error("indexing the batch dimension N is not supported")
            i = int(item) + size if item < 0 else int(item)
            if not 0 <= i < size:
                raise _error(f"index {item} is out of range for dim {dim} of size {size}")
            result = emit("slice", [result], {"dim": dim, "start": i, "stop": i + 1, "step": 1})
        else:
            if item == slice(None):
                out.append(size)
                dim += 1
                continue
            if size == BATCH:
                raise _error("slicing the batch dimension N is not supported: take it whole (:)")
            if not all(b is None or _is_int(b) for b in (item.start, item.stop, item.step)):
                raise _error(f"slice bounds must be ints or None, got {item}")
            if item.step is not None and item.step < 1:
                raise _error(f"slice step must be greater than zero, got {item.step}")
            start, stop, step = item.indices(size)
            stop = max(stop, start)
            if (start, stop, step) != (0, size, 1):
                result = emit("slice", [result], {"dim": dim, "start": start, "stop": stop, "step": step})
            out.append(len(range(start, stop, step)))
        dim += 1
    return result if tuple(out) == tuple(result.shape) else emit("reshape", [result], {"shape": tuple(out)})


def _error(message: str) -> ShapeError:
    """A ShapeError naming the layer being traced (``features.3 (Block): ...``), if any."""
    tracer = active()
    return ShapeError(f"{tracer.where()}: {message}" if tracer is not None else message)


def _is_int(obj: Any) -> bool:
    return isinstance(obj, (int, np.integer)) and not isinstance(obj, bool)


def _reshaped(x: SymbolicTensor, shape: tuple) -> SymbolicTensor:
    return x if shape == tuple(x.shape) else _emit("reshape", [x], {"shape": shape})


@contextlib.contextmanager
def tracing(tracer: Tracer) -> Iterator[Tracer]:
    _ACTIVE.append(tracer)
    try:
        yield tracer
    finally:
        _ACTIVE.pop()


def user_location() -> str | None:
    """``file.py:line`` of the innermost caller outside the convforge package."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_PACKAGE_DIR) and not frame.f_code.co_filename.startswith("<frozen"):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return None
