"""The op registry: one :class:`Op` per IR op, declared in its family's file.

An op family file says everything about what an op *means*::

    relu = Op("relu", fusion=FusionKind.ELEMENTWISE)

    @relu.shape
    def _(x: TensorType) -> TensorType:
        return x

    @relu.reference
    def _(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    @relu.vjp
    def _(g: Graph, node: Node, gy: Value) -> tuple[Value | None, ...]:
        return (g.call("relu_backward", gy, node.output),)

Backends say how to *run* it, in files that mirror the family files.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from convforge.errors import (
    AttributeValueError,
    ConvforgeError,
    UnknownOpError,
    VerificationError,
    wrap_error,
)
from convforge.ir.attrs import Attrs
from convforge.ir.types import TensorType, check_elements

#: attribute integers must fit int64: kernels receive them as int64 arguments
INT_ATTR_RANGE = (-(2**63), 2**63 - 1)


class FusionKind(enum.Enum):
    """How an op may take part in fusion (TVM's op patterns)."""

    ELEMENTWISE = "elementwise"  # out[i] = f(in[i]): relu, sigmoid, add
    BROADCAST = "broadcast"  # elementwise with a per-channel operand: bias, BN affine
    INJECTIVE = "injective"  # a relayout: reshape, flatten, concat
    REDUCE = "reduce"  # a reduction: sum, losses
    POOL = "pool"  # a windowed reduction that can close a fused conv chain
    OUT_FUSABLE = "out-fusable"  # conv, linear: an elementwise epilogue fuses onto the output
    OPAQUE = "opaque"  # never fused


ShapeFn = Callable[..., "TensorType | tuple[TensorType, ...]"]
ReferenceFn = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]
VjpFn = Callable[..., "Sequence[Any]"]
WorkspaceFn = Callable[..., "Mapping[str, Sequence[int]]"]


class Op:
    """Everything an op means: attributes, shape/dtype rule, NumPy reference, VJP, and the
    facts passes and backends ask about it.

    Facts (keyword arguments):

    * ``fusion``: the :class:`FusionKind` the fuse pass reads.
    * ``scalar``: for an elementwise op, its value as a Python scalar expression that Numba
      CPU and Numba CUDA both compile: ``{x}`` is the input, ``{name}`` an attribute
      (``"max({x}, 0.0)"``). For an activation's backward op, an expression of the incoming
      gradient ``{g}`` and the saved forward value ``{s}``. Backends build their epilogue
      and activation-gradient code from these (``convforge.ir.scalar``).
    * ``backward``: the name of the op the VJP emits, ``backward(gy, saved, **attrs)``;
      ``saves``: which forward value it reads, ``"output"`` or ``"input"``.
    * ``monotone``: non-decreasing, so its derivative at a max-pool window's maximum is a
      function of the pooled output (the fuse pass's argmax rewrite relies on it).
    * ``labels``: ``{input index of class labels: input index of the logits}``; the labels
      must lie in ``[0, logits.shape[1])`` and are checked before any kernel.
    * ``positive``: input indices that must be positive (a variance): what a test feeds them.
    * ``region``: the node holds a region graph (``fusion``); its types come from it. Its
      attributes are free-form notes about the region (declared ones still get defaults).
    * ``batch_stats``: input indices whose per-channel statistics are taken over the batch
      (and spatial) dimensions (``batch_norm_train``): every backend refuses, before any
      kernel, an input with a single value per channel (``Executable.check``), as PyTorch does.
    * ``collective``: the op exchanges data between ranks (``all_reduce``) through the
      executable's communicator, a run-time object (``ir/ops/collective.py``): its reference
      takes it as the keyword ``communicator``, and backends lower it to a host call.

    Sizes: every input and output type of a node, and every scratch buffer the op's
    :meth:`workspace` rule declares, holds at most ``ir.types.MAX_ELEMENTS`` elements (``N`` counted
    as 1); :meth:`infer_types` raises a ShapeError naming the node otherwise.
    """

    def __init__(
        self,
        name: str,
        *,
        fusion: FusionKind = FusionKind.OPAQUE,
        outputs: Sequence[str] = ("",),
        attrs: Mapping[str, Any] | None = None,
        doc: str = "",
        scalar: str | None = None,
        backward: str | None = None,
        saves: str = "output",
        monotone: bool = False,
        labels: Mapping[int, int] | None = None,
        positive: Sequence[int] = (),
        region: bool = False,
        batch_stats: Sequence[int] = (),
        collective: bool = False,
    ):
        if saves not in ("output", "input"):
            raise ValueError(f"op {name}: saves must be 'output' or 'input', got {saves!r}")
        self.name = name
        self.fusion = fusion
        #: names of extra outputs: output i > 0 of node %3 is called %3.<outputs[i]>
        self.output_names = tuple(outputs)
        #: attribute defaults; an attribute not listed here is rejected
        self.defaults = dict(attrs or {})
        self.doc = doc
        self.scalar = scalar
        self.backward = backward
        self.saves = saves
        self.monotone = monotone
        self.labels: dict[int, int] = dict(labels or {})
        self.positive = tuple(positive)
        self.region = region
        self.batch_stats = tuple(batch_stats)
        self.collective = collective
        #: the family file that declares the op (``conv`` for ``ir/ops/conv.py``); backends
        #: lower it in their mirrored ``kernels/<family>.py``
        self.family = sys._getframe(1).f_globals.get("__name__", "").rpartition(".")[2]
        self._shape: ShapeFn | None = None
        self._reference: ReferenceFn | None = None
        self._vjp: VjpFn | None = None
        self._check: Callable[..., dict | None] | None = None
        self._workspace: WorkspaceFn | None = None
        register(self)

    # -- declaration decorators ----------------------------------------------------------
    def shape(self, fn: ShapeFn) -> ShapeFn:
        """``fn(*input_types, **attrs) -> TensorType | tuple``; raises ShapeError/DTypeError."""
        self._shape = fn
        return fn

    def reference(self, fn: ReferenceFn) -> ReferenceFn:
        """``fn(*arrays, **attrs) -> ndarray | tuple``: the NumPy meaning of the op."""
        self._reference = fn
        return fn

    def vjp(self, fn: VjpFn) -> VjpFn:
        """``fn(graph, node, *output_grads) -> one Value | None per input``, emitted as IR."""
        self._vjp = fn
        return fn

    def check(self, fn: Callable[..., dict | None]) -> Callable[..., dict | None]:
        """``fn(**attrs) -> dict | None``: validate attributes, optionally canonicalise them."""
        self._check = fn
        return fn

    def workspace(self, fn: WorkspaceFn) -> WorkspaceFn:
        """``fn(*input_types, **attrs) -> {buffer name: shape}``: the largest scratch buffers
        (per batch item) a lowering of the op may allocate besides its inputs and outputs
        (a convolution's padded image and im2col columns); each is bounded like a tensor."""
        self._workspace = fn
        return fn

    # -- use ---------------------------------------------------------------------------
    @property
    def has_vjp(self) -> bool:
        return self._vjp is not None or self.backward is not None

    def normalize(self, attrs: Mapping[str, Any], where: str | None = None):
        """Fill defaults, reject unknown attributes (a region op takes any), run the op's check."""
        where = where or self.name
        unknown = [] if self.region else sorted(set(attrs) - set(self.defaults))
        if unknown:
            raise AttributeValueError(
                f"{where}: unknown attribute(s) {', '.join(unknown)}; "
                f"{self.name} takes {', '.join(self.defaults) or 'no attributes'}"
            )
        full = dict(Attrs({**self.defaults, **attrs}))  # NumPy scalars as Python numbers
        for key, value in attrs.items():
            _check_int_range(key, value, where)
        if self._check is not None:
            try:
                changed = self._check(**full)
            except ConvforgeError as exc:
                raise wrap_error(exc, where) from None
            if changed:
                full.update(changed)
        for key, value in full.items():
            _check_attr_value(key, value, where)
        return Attrs(full)

    def infer_types(self, inputs: Sequence[TensorType], attrs: Mapping[str, Any], where: str | None = None):
        if self._shape is None:
            raise UnknownOpError(f"op {self.name} has no shape rule")
        try:
            for i, t in enumerate(inputs):
                check_elements(t.shape, f"input {i} {t.dtype}")
            out = self._shape(*inputs, **attrs)
            outs = tuple(out) if isinstance(out, tuple) else (out,)
            for i, t in enumerate(outs):
                check_elements(t.shape, f"output {t.dtype}" if len(outs) == 1 else f"output {i} {t.dtype}")
            if self._workspace is not None:
                for name, shape in self._workspace(*inputs, **attrs).items():
                    check_elements(shape, f"scratch buffer ({name})")
        except ConvforgeError as exc:
            raise wrap_error(exc, where or self.name) from None
        except TypeError as exc:  # wrong number of inputs
            raise ConvforgeError(
                f"{where or self.name}: wrong inputs for {self.name} "
                f"(given {len(inputs)}: {', '.join(map(str, inputs))}): {exc}"
            ) from None
        return outs

    def result_types(
        self,
        inputs: Sequence[TensorType],
        attrs: Mapping[str, Any],
        region: Any = None,
        where: str | None = None,
    ) -> tuple[TensorType, ...]:
        """The output types of a node of this op: a region op's are its region's output types,
        any other op's come from its shape rule."""
        if not self.region:
            return self.infer_types(inputs, attrs, where)
        if region is None:
            raise VerificationError(f"{where or self.name}: {self.name} node without a region")
        return tuple(v.type for v in region.outputs)

    def run_reference(self, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        if self._reference is None:
            raise UnknownOpError(f"op {self.name} has no NumPy reference")
        out = self._reference(*inputs, **attrs)
        return tuple(out) if isinstance(out, tuple) else (out,)

    def run_vjp(self, graph: Any, node: Any, grads: Sequence[Any]) -> tuple[Any, ...]:
        if self._vjp is None and self.backward is not None:
            # the declared backward op: backward(gy, saved, **attrs)
            saved = node.output if self.saves == "output" else node.inputs[0]
            return (graph.call(self.backward, grads[0], saved, **node.attrs),)
        if self._vjp is None:
            raise UnknownOpError(f"op {self.name} has no gradient rule (at {node.describe()})")
        return tuple(self._vjp(graph, node, *grads))

    def __repr__(self) -> str:
        return f"<Op {self.name}>"


def _check_int_range(key: str, value: Any, where: str) -> None:
    """Integers anywhere in an attribute value must fit int64 (checked before the op's own
    check, so no check converts a 5,000-digit int)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            _check_int_range(key, item, where)
    elif isinstance(value, int) and not isinstance(value, bool):
        lo, hi = INT_ATTR_RANGE
        if not lo <= value <= hi:
            shown = repr(value) if abs(value) < 10**30 else f"an int of {len(str(abs(value)))} digits"
            raise AttributeValueError(f"{where}: {key} must fit in int64 (|{key}| < 2**63), got {shown}")


_ATTR_SCALARS = (bool, int, float, str, type(None), np.integer, np.floating, np.bool_)


def _check_attr_value(key: str, value: Any, where: str) -> None:
    """An attribute value is a number, bool, string, None, or a tuple/list of those: hashable,
    printable, and what the IR text form can hold."""
    if isinstance(value, (tuple, list)):
        for item in value:
            _check_attr_value(key, item, where)
    elif not isinstance(value, _ATTR_SCALARS):
        raise AttributeValueError(
            f"{where}: {key} must be a number, bool, string, None or a tuple of those, "
            f"got {type(value).__name__} {value!r}"
        )


_OPS: dict[str, Op] = {}


def register(op: Op) -> None:
    if op.name in _OPS:
        raise ValueError(f"op {op.name} registered twice")
    _OPS[op.name] = op


# Importing this module runs ``convforge/ir/ops/__init__.py`` first, which imports every
# family file; so by the time ``get`` or ``all_ops`` can be called, every op is registered.


def get(name: str) -> Op:
    """The op called ``name``; raises UnknownOpError naming the known ops otherwise."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}; known ops: {', '.join(sorted(_OPS))}") from None


def all_ops() -> dict[str, Op]:
    return dict(_OPS)


def families() -> tuple[str, ...]:
    """The op families (``ir/ops/<family>.py`` files that declare ops), sorted: what each
    backend's ``kernels/<family>.py`` mirrors."""
    return tuple(sorted({op.family for op in _OPS.values()}))
