"""Tracing: run a model's ``forward`` on symbolic tensors and record the IR it calls.

While a :class:`Tracer` is active, ``convforge.functional`` emits graph nodes instead of
computing, parameters resolve to graph inputs named by their ``state_dict`` key, and
every node records the layer it came from (``features.3 (Conv2d)``) and the user's
source line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from convforge.errors import ConvforgeError
from convforge.ir.graph import Graph, Value
from convforge.ir.types import TensorType, dtype_name

if TYPE_CHECKING:
    from convforge.frontend.nn import Module

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ACTIVE: list[Tracer] = []


class SymbolicTensor:
    """A stand-in for a tensor during tracing: it has a type but no values.

    Supports what ``forward`` code usually does: ``.shape``, ``.dtype``, ``x + y``,
    ``x * y``, ``x.flatten(1)``, ``x.reshape(...)``, ``x.view(...)``.
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

    def __add__(self, other: Any) -> SymbolicTensor:
        from convforge.frontend import functional as F

        return F.add(self, other)

    __radd__ = __add__

    def __mul__(self, other: Any) -> SymbolicTensor:
        from convforge.frontend import functional as F

        return F.mul(self, other)

    __rmul__ = __mul__

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> SymbolicTensor:
        from convforge.frontend import functional as F

        return F.flatten(self, start_dim, end_dim)

    def reshape(self, *shape: Any) -> SymbolicTensor:
        from convforge.frontend import functional as F

        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    view = reshape

    def relu(self) -> SymbolicTensor:
        from convforge.frontend import functional as F

        return F.relu(self)

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
