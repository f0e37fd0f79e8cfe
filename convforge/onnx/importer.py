"""ONNX import: a ModelProto becomes a :class:`Plan` (IR ops in order, checked by building
the IR graph once) and an :class:`OnnxModel`, an ``nn.Module`` that replays the plan.

    model = cf.onnx.load("resnet50.onnx")          # every check runs here
    net = cf.compile(model, input_shape=model.input_shape)

Conversion walks the ONNX nodes in order. A node whose inputs are all known at import
(initializers, ``Constant``, shapes of typed tensors) is folded with NumPy
(``convforge.onnx.folding``); any other node is translated by its converter in
``convforge.onnx.opmap`` into IR ops, each of which is created at once in a graph with
the model's input types, so every attribute and shape rule of the IR runs at load time
and an error names the ONNX node. The module's parameters are the float initializers
(BatchNormalization's mean and variance are buffers); other constants the computation
reads (folded subgraphs, ``Constant`` tensors) are buffers. Both are named after their
ONNX names, made into ``state_dict`` keys by :func:`state_key`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from convforge.errors import ConvforgeError, DTypeError, ShapeError, wrap_error
from convforge.frontend import functional as F
from convforge.frontend import nn, trace
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH, TensorType
from convforge.onnx import folding
from convforge.onnx.reader import (
    RUNTIME_DTYPES,
    OnnxError,
    UnsupportedError,
    attributes,
    dtype_label,
    read_model,
    tensor_array,
    value_dtype,
    value_shape,
)

#: the oldest default-domain opset the importer reads (the newest is onnx's own)
MIN_OPSET = 6
#: initializer element types read as constants: float, uint8, int8, uint16, int16, int32,
#: int64, bool, double, uint32, uint64 (float16, bfloat16, float8, int4, complex and
#: strings are refused where a node reads them)
_READABLE = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13})

#: names a state_dict key may not take: the compiled programs' own inputs and prefixes
_RESERVED_KEYS = frozenset({"x", "target", "step", "input"})
_RESERVED_PREFIXES = ("optim.", "optimizer")


def newest_opset() -> int:
    import onnx

    return int(onnx.defs.onnx_opset_version())


# =========================================================================================
# The plan: IR ops in order
# =========================================================================================
@dataclasses.dataclass(frozen=True)
class Ref:
    """A plan operand: a runtime value (``kind="value"``) or a state entry (``"state"``)."""

    kind: str
    name: str


@dataclasses.dataclass
class Step:
    """One IR op of the plan. ``kind`` is ``"op"``; ``"batch_norm"`` and ``"dropout"``
    depend on the module's mode (training: batch statistics, dropout masks)."""

    op: str
    inputs: tuple[Ref, ...]
    attrs: dict[str, Any]
    outputs: tuple[str, ...]
    label: str
    layer: str
    kind: str = "op"


@dataclasses.dataclass
class StateEntry:
    array: np.ndarray
    kind: str  # "parameter" or "buffer"
    onnx_name: str


@dataclasses.dataclass
class Plan:
    """What :class:`OnnxModel` replays, and the IR graph conversion built from it."""

    name: str
    inputs: list[tuple[str, TensorType]]  # ONNX input name, IR type
    outputs: list[str]  # plan value names (keys of the replay's values), in ONNX output order
    output_names: list[str]  # the ONNX output names
    steps: list[Step]
    state: dict[str, StateEntry]
    graph: Graph
    opset: int
    float_dtype: str
    batch_reshapes: list[tuple[int, list[int]]] = dataclasses.field(default_factory=list)


# =========================================================================================
# Conversion
# =========================================================================================
Converter = Callable[["NodeContext"], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    """Register a converter for ONNX op types (used by ``convforge.onnx.opmap``)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """The ONNX op types the importer translates or folds."""
    _load_opmap()
    return sorted(set(CONVERTERS) | set(folding.FOLDERS))


def _load_opmap() -> None:
    from convforge.onnx import opmap  # noqa: F401 - registers the converters


class NeedsConstant(UnsupportedError):
    """An input the importer must know at import (a shape, bounds, scales) is a run-time value."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class NodeContext:
    """What a converter sees of one ONNX node: attributes, inputs (runtime or constant),
    and ``emit`` to append IR ops."""

    def __init__(self, conv: Conversion, node: Any, index: int):
        self.conv = conv
        self.node = node
        self.index = index
        self.op_type = node.op_type
        name = node.name or f"#{index}"
        self.label = f"ONNX node {name!r} ({node.op_type})"
        self.layer = f"{name} ({node.op_type})"
        self.hint = _name_hint(node.output[0] if node.output else name)
        self.attrs = attributes(node, self.label)
        self.opset = conv.opset
        #: the version of this op's schema in force at the model's opset
        self.since = _since_version(node.op_type, conv.opset, self.label)
        self.inputs = list(node.input)
        self.outputs = list(node.output)

    # -- errors ------------------------------------------------------------------------
    def fail(self, message: str) -> UnsupportedError:
        return UnsupportedError(f"{self.label}: {message}")

    def unsupported_attr(self, name: str, value: Any, supported: str) -> UnsupportedError:
        return self.fail(f"attribute {name}={value!r} is not supported; supported: {supported}")

    # -- attributes --------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        value = self.attrs.get(name, default)
        return None if value is None else [int(v) for v in value]

    # -- inputs ------------------------------------------------------------------------
    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] != ""

    def is_const(self, i: int) -> bool:
        return self.has(i) and self.inputs[i] in self.conv.consts

    def const(self, i: int, what: str = "") -> np.ndarray:
        """Input ``i`` as an array known at import, or an error saying it must be one."""
        if not self.has(i):
            raise self.fail(f"input {i} ({what or 'required'}) is missing")
        name = self.inputs[i]
        if name not in self.conv.consts:
            raise NeedsConstant(
                f"{self.label}: input {i} {what + ' ' if what else ''}({name!r}) must be a constant known "
                "at import (an initializer or a constant subgraph); convforge cannot take it at run time",
                name,
            )
        return self.conv.consts[name]

    def const_ints(self, i: int, what: str) -> list:
        arr = np.asarray(self.const(i, what)).reshape(-1)
        if arr.dtype != object and arr.dtype.kind not in "iu":
            raise self.fail(f"input {i} ({what}) must hold integers, got dtype {arr.dtype}")
        return [d if isinstance(d, folding.BatchDim) else int(d) for d in arr]

    def type(self, i: int) -> TensorType:
        """The IR type of input ``i`` (a constant's as its array would enter the graph)."""
        if self.is_const(i):
            arr = self.conv.consts[self.inputs[i]]
            if folding.is_symbolic(np.asarray(arr)):
                raise folding.Unresolved(f"{self.label}: input {i} holds the dynamic batch size as data")
            return TensorType(self.conv.float_dtype, tuple(np.shape(arr)))
        return self.conv.value_of(self.runtime_name(i), self.label).type

    def shape(self, i: int) -> tuple:
        return self.type(i).shape

    def runtime_name(self, i: int) -> str:
        if not self.has(i):
            raise self.fail(f"input {i} is missing")
        name = self.conv.plan_name(self.inputs[i])
        if name not in self.conv.values:
            raise self.conv.missing(self.inputs[i], self.label)
        return name

    def value(self, i: int, role: str = "") -> Ref:
        """Input ``i`` as a plan operand; a constant becomes a state entry."""
        if self.is_const(i):
            return self.conv.state_ref(self.inputs[i], self.const(i), self.label, role)
        return Ref("value", self.runtime_name(i))

    # -- outputs -----------------------------------------------------------------------
    def emit(
        self, op: str, inputs: Sequence[Ref], attrs: Mapping[str, Any] | None = None, *, kind: str = "op"
    ) -> list[Ref]:
        """Append IR op ``op`` and build its node now (the IR's checks run here)."""
        return self.conv.emit(self, op, list(inputs), dict(attrs or {}), kind=kind)

    def alias(self, i: int, ref: Ref) -> None:
        """ONNX output ``i`` is ``ref``."""
        self.conv.bind(self.outputs[i], ref)

    def set_const(self, i: int, array: np.ndarray) -> None:
        self.conv.consts[self.outputs[i]] = array

    def output_used(self, i: int) -> bool:
        return i < len(self.outputs) and self.outputs[i] != "" and self.outputs[i] in self.conv.used

    def only_first_output(self, what: str = "optional outputs") -> None:
        for i in range(1, len(self.outputs)):
            if self.output_used(i):
                raise self.fail(f"output {i} ({self.outputs[i]!r}) is used; convforge computes only "
                                f"output 0 of {self.op_type} ({what} are not supported)")  # fmt: skip


class Conversion:
    """One pass over an ONNX graph: folds constants, runs converters, builds the IR graph."""

    def __init__(
        self,
        model: Any,
        input_types: Mapping[str, TensorType],
        *,
        file_batch: int | None,
        constants: Mapping[str, np.ndarray] | None = None,
    ):
        _load_opmap()
        self.model = model
        self.onnx_graph = model.graph
        self.opset = _default_opset(model)
        self.file_batch = file_batch
        self.float_dtype = _float_dtype(input_types)
        self.graph = Graph(_graph_name(model))
        self.consts: dict[str, Any] = {}
        self.initializers: set[str] = set()
        self.values: dict[str, Value] = {}
        self.aliases: dict[str, str] = {}
        self.steps: list[Step] = []
        self.state: dict[str, StateEntry] = {}
        self.state_keys: dict[str, str] = {}  # ONNX name -> key
        self.state_values: dict[str, Value] = {}
        #: (index, target) of the Reshape nodes whose fixed batch size was read as the batch
        self.batch_reshapes: list[tuple[int, list[int]]] = []
        self.used = {name for node in self.onnx_graph.node for name in node.input}
        self.used |= {o.name for o in self.onnx_graph.output}
        self.buffer_slots = _batch_norm_statistics(self.onnx_graph)
        self._read_initializers()
        self.consts.update(constants or {})  # graph inputs given as values (the backend adapter)
        self.inputs: list[tuple[str, TensorType]] = []
        for name, t in input_types.items():
            self.values[name] = self.graph.add_input(name, t)
            self.inputs.append((name, t))

    # -- names and values -----------------------------------------------------------------
    def plan_name(self, onnx_name: str) -> str:
        while onnx_name in self.aliases:
            onnx_name = self.aliases[onnx_name]
        return onnx_name

    def value_of(self, name: str, where: str) -> Value:
        try:
            return self.values[self.plan_name(name)]
        except KeyError:
            raise self.missing(name, where) from None

    def missing(self, name: str, where: str) -> OnnxError:
        return OnnxError(f"{where}: input {name!r} is not produced by any earlier node, input or initializer")

    def bind(self, onnx_name: str, ref: Ref) -> None:
        if ref.kind == "value":
            if ref.name != onnx_name:
                self.aliases[onnx_name] = ref.name
        else:
            self.consts[onnx_name] = self.state[ref.name].array

    def state_ref(self, onnx_name: str, array: Any, where: str, role: str = "") -> Ref:
        """The state entry holding constant ``onnx_name`` (created on first use)."""
        if onnx_name in self.state_keys:
            return Ref("state", self.state_keys[onnx_name])
        arr = np.asarray(array)
        if folding.is_symbolic(arr):
            raise folding.Unresolved(f"{where}: {onnx_name!r} holds the dynamic batch size as data")
        if arr.dtype.kind != "f":
            raise UnsupportedError(
                f"{where}: constant {onnx_name!r} of dtype {arr.dtype} would be a run-time operand; "
                "convforge computes with float32/float64 tensors only"
            )
        dtype = np.float64 if self.float_dtype == "f64" else np.float32
        arr = np.ascontiguousarray(arr, dtype=dtype)
        trainable = onnx_name in self.initializers and onnx_name not in self.buffer_slots
        kind = "buffer" if role == "buffer" or not trainable else "parameter"
        key = state_key(onnx_name, set(self.state) | {name for name, _ in self.inputs})
        self.state[key] = StateEntry(arr, kind, onnx_name)
        self.state_keys[onnx_name] = key
        self.state_values[key] = self.graph.add_input(key, TensorType(self.float_dtype, arr.shape))
        return Ref("state", key)

    def operand(self, ref: Ref) -> Value:
        if ref.kind == "state":
            return self.state_values[ref.name]
        return self.values[ref.name]

    # -- emitting ------------------------------------------------------------------------
    def emit(self, cx: NodeContext, op: str, inputs: list[Ref], attrs: dict, kind: str) -> list[Ref]:
        values = [self.operand(r) for r in inputs]
        meta = {"layer": cx.layer}
        if kind == "dropout":  # the identity in inference; the module draws a mask in training
            name = f"{cx.outputs[0]}#dropout"
            self.steps.append(Step(op, tuple(inputs), attrs, (name,), cx.label, cx.layer, kind))
            self.values[name] = values[0]
            return [Ref("value", name)]
        ir_attrs = attrs if kind == "op" else {k: v for k, v in attrs.items() if k != "momentum"}
        try:
            node = self.graph.create_node(op, values, ir_attrs, meta, name=cx.hint)
        except ConvforgeError as exc:
            raise _at_node(exc, cx) from None
        names = tuple(v.name for v in node.outputs)
        for v in node.outputs:
            self.values[v.name] = v
        self.steps.append(Step(op, tuple(inputs), attrs, names, cx.label, cx.layer, kind))
        return [Ref("value", n) for n in names]

    # -- the walk ------------------------------------------------------------------------
    def run(self) -> Plan:
        for index, node in enumerate(self.onnx_graph.node):
            self._node(node, index)
        outputs = []
        for out in self.onnx_graph.output:
            where = f"ONNX output {out.name!r}"
            if out.name in self.consts and self.plan_name(out.name) not in self.values:
                raise UnsupportedError(f"{where} is a constant; convforge models compute their outputs")
            value = self.value_of(out.name, where)
            value_dtype(out, where)
            _check_declared(out, value.type, where)
            outputs.append(value)
        self.graph.set_outputs(outputs)
        return Plan(
            name=self.graph.name,
            inputs=self.inputs,
            outputs=[self.plan_name(o.name) for o in self.onnx_graph.output],
            output_names=[o.name for o in self.onnx_graph.output],
            steps=self.steps,
            state=self.state,
            graph=self.graph,
            opset=self.opset,
            float_dtype=self.float_dtype,
            batch_reshapes=list(self.batch_reshapes),
        )

    def _node(self, node: Any, index: int) -> None:
        if node.domain not in ("", "ai.onnx"):
            label = f"ONNX node {node.name or f'#{index}'!r} ({node.domain}.{node.op_type})"
            raise UnsupportedError(f"{label}: ops of domain {node.domain!r} are not supported (only the "
                                   "default ONNX domain)")  # fmt: skip
        cx = NodeContext(self, node, index)
        known = all(not cx.has(i) or cx.is_const(i) for i in range(len(cx.inputs)))
        float_param = any(cx.has(i) and cx.inputs[i] in self.initializers
                          and np.asarray(self.consts[cx.inputs[i]]).dtype.kind == "f"
                          for i in range(len(cx.inputs)))  # fmt: skip
        try:
            if known and folding.can_fold(node.op_type) and not (float_param and node.op_type in CONVERTERS):
                args = [self.consts[n] if n else None for n in cx.inputs]
                results = folding.fold(node.op_type, args, cx.attrs, cx.since)
                for name, arr in zip(cx.outputs, results):
                    if name:
                        self.consts[name] = arr
                return
            converter = CONVERTERS.get(node.op_type)
            if converter is None:
                raise cx.fail(
                    f"op {node.op_type} is not supported; convforge imports {', '.join(supported_ops())}"
                )
            converter(cx)
        except ConvforgeError as exc:
            raise _at_node(exc, cx) from None
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # a malformed node
            raise OnnxError(f"{cx.label}: cannot be read: {type(exc).__name__}: {exc}") from None
        for i, name in enumerate(cx.outputs):
            computed = name in self.consts or self.plan_name(name) in self.values
            if name and not computed and cx.output_used(i):
                raise cx.fail(f"output {i} ({name!r}) is not computed by convforge")

    def _read_initializers(self) -> None:
        for tensor in self.onnx_graph.initializer:
            if tensor.data_type not in _READABLE:
                if tensor.name in self.used:
                    raise DTypeError(
                        f"ONNX initializer {tensor.name!r}: dtype {dtype_label(tensor.data_type)} is not "
                        "supported; convforge computes in FLOAT/DOUBLE and folds integer and bool constants"
                    )
                continue
            self.consts[tensor.name] = tensor_array(tensor, f"ONNX initializer {tensor.name!r}")
            self.initializers.add(tensor.name)
        for tensor in getattr(self.onnx_graph, "sparse_initializer", []):
            raise UnsupportedError(f"ONNX sparse initializer {tensor.values.name!r} is not supported")


def _at_node(exc: ConvforgeError, cx: NodeContext) -> ConvforgeError:
    """``exc`` with a message that starts by naming the ONNX node."""
    msg = str(exc)
    if msg.startswith(cx.label):
        return exc
    if msg.startswith(cx.layer + ": "):  # an IR error names the node's layer
        msg = msg[len(cx.layer) + 2 :]
    new = type(exc)(f"{cx.label}: {msg}")
    new.__cause__ = exc
    return new


def _since_version(op_type: str, opset: int, where: str) -> int:
    import onnx

    try:
        return int(onnx.defs.get_schema(op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        raise UnsupportedError(f"{where}: op {op_type} does not exist in ONNX opset {opset}") from None


def _default_opset(model: Any) -> int:
    versions = {o.domain: int(o.version) for o in model.opset_import}
    if "" not in versions and "ai.onnx" not in versions:
        raise UnsupportedError("the ONNX model imports no default-domain opset")
    opset = versions.get("", versions.get("ai.onnx"))
    if not MIN_OPSET <= opset <= newest_opset():
        raise UnsupportedError(
            f"the ONNX model uses opset {opset}; convforge imports opsets {MIN_OPSET} to {newest_opset()}"
        )
    return opset


def _float_dtype(input_types: Mapping[str, TensorType]) -> str:
    dtypes = {t.dtype for t in input_types.values()}
    if len(dtypes) > 1:
        raise UnsupportedError(
            f"the ONNX model mixes input dtypes {sorted(dtypes)}; convforge runs one float dtype"
        )
    return dtypes.pop() if dtypes else "f32"


def _batch_norm_statistics(graph: Any) -> set[str]:
    """Names fed to BatchNormalization as mean or variance: buffers, not parameters."""
    names = set()
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            names.update(n for n in list(node.input)[3:5] if n)
    return names


def _check_declared(info: Any, t: TensorType, where: str) -> None:
    declared = value_shape(info)
    if declared is None:
        return
    if len(declared) != t.rank:
        raise OnnxError(f"{where}: the file declares rank {len(declared)}, convforge computes {t}")
    for d, got in zip(declared, t.shape):
        if isinstance(d, int) and got != BATCH and d != got:
            raise OnnxError(f"{where}: the file declares shape {list(declared)}, convforge computes {t}")


def _graph_name(model: Any) -> str:
    raw = model.graph.name or "onnx_model"
    return re.sub(r"[^A-Za-z0-9_]", "_", raw) or "onnx_model"


def _name_hint(name: str) -> str | None:
    hint = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")
    return hint or None


def state_key(onnx_name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The ``state_dict`` key of an ONNX initializer or constant.

    Names made of ASCII letters, digits, ``_`` and ``.`` (``conv1.weight``) are kept;
    every other character becomes ``_`` (``gpu_0/conv1_w_0`` -> ``gpu_0_conv1_w_0``), dots
    are stripped from the ends and doubled dots merged; an empty name, a name starting
    with ``_``, a reserved name (``x``, ``target``, ``step``, ``input``, ``optim.*``,
    ``optimizer*``) or a name of an ``nn.Module`` attribute gets the prefix ``onnx_``; a
    key already taken gets ``_1``, ``_2``, ... . ``model.onnx_names`` maps each key back.
    """
    key = re.sub(r"[^A-Za-z0-9_.]", "_", onnx_name)
    key = re.sub(r"\.{2,}", ".", key).strip(".")
    if (
        not key
        or key.startswith("_")
        or key in _RESERVED_KEYS
        or key.startswith(_RESERVED_PREFIXES)
        or hasattr(OnnxModel, key.split(".")[0])
    ):
        key = f"onnx_{key}"
    base, n = key, 0
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    return key


# =========================================================================================
# Input types
# =========================================================================================
def graph_inputs(model: Any, used_only: bool = True) -> list[Any]:
    """The model's real inputs: graph inputs that no initializer provides (before IR 4,
    initializers were listed among the inputs too) and, with ``used_only``, that some node
    or output reads."""
    init = {t.name for t in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    return [i for i in model.graph.input if i.name not in init and (i.name in used or not used_only)]


def input_type(
    info: Any, input_shape: Sequence[Any] | None, *, batch_free: bool
) -> tuple[TensorType, int | None]:
    """The IR type of a graph input, and the batch size the file fixes (if any).

    The leading dim is the batch: it becomes ``N`` unless ``input_shape`` gives it as an
    int; every other dim must be known (from the file or ``input_shape``).
    """
    where = f"ONNX input {info.name!r}"
    dtype = value_dtype(info, where)
    declared = value_shape(info)
    if declared is None and input_shape is None:
        raise UnsupportedError(f"{where} has no declared shape; pass input_shape=(None, C, H, W)")
    if input_shape is not None:
        given = tuple(input_shape)
        if declared is not None and len(declared) != len(given):
            raise ShapeError(
                f"{where}: input_shape {list(given)} has rank {len(given)}, the file declares "
                f"{_fmt(declared)} (rank {len(declared)})"
            )
        for i, g in enumerate(given):
            if g is None and i == 0:
                continue
            if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1:
                raise ShapeError(f"{where}: input_shape entries must be positive ints (None for the batch), "
                                 f"got {list(given)}")  # fmt: skip
            if declared is not None and i > 0 and isinstance(declared[i], int) and declared[i] != g:
                raise ShapeError(f"{where}: dim {i} is {declared[i]} in the file, input_shape gives {g}")
        dims = list(given)
    else:
        dims = list(declared)
    file_batch = declared[0] if declared and isinstance(declared[0], int) else None
    shape: list[Any] = []
    for i, d in enumerate(dims):
        if i == 0 and batch_free and (d is None or isinstance(d, str) or input_shape is None or
                                      input_shape[0] is None):  # fmt: skip
            shape.append(BATCH)
        elif isinstance(d, (int, np.integer)) and d >= 1:
            shape.append(int(d))
        else:
            example = ", ".join(str(x) if isinstance(x, int) else "?" for x in dims[1:])
            raise folding.Unresolved(
                f"{where}: dim {i} is {d!r} (dynamic) and cannot be resolved; pass input_shape with "
                f"every dim except the batch, e.g. (None, {example})"
            )
    return TensorType(dtype, tuple(shape)), file_batch


def _fmt(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def convert(model: Any, input_shape: Sequence[Any] | None = None, *, batch_free: bool = True) -> Plan:
    """The plan of a checked ModelProto (``read_model``); raises before anything runs."""
    real = graph_inputs(model)
    if not real:
        raise UnsupportedError("the ONNX model has no inputs")
    types: dict[str, TensorType] = {}
    file_batch = None
    for i, info in enumerate(real):
        shape = input_shape if i == 0 else None
        t, fb = input_type(info, shape, batch_free=batch_free)
        types[info.name] = t
        file_batch = fb if i == 0 else file_batch
    return Conversion(model, types, file_batch=file_batch if batch_free else None).run()


# =========================================================================================
# The module
# =========================================================================================
class OnnxModel(nn.Module):
    """An imported ONNX model: its parameters are the float initializers; ``forward``
    replays the ONNX graph as convforge ops (traced by ``cf.compile`` like any model).

    ``onnx_names`` maps each ``state_dict`` key to its ONNX name; ``input_shape`` is the
    shape to compile for (``None`` for the batch); ``input_name``/``output_name`` are the
    ONNX names of the input and output.
    """

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        if len(plan.inputs) != 1 or len(plan.outputs) != 1:
            raise UnsupportedError(
                f"the ONNX model has {len(plan.inputs)} input(s) ({', '.join(n for n, _ in plan.inputs)}) "
                f"and "
                f"{len(plan.outputs)} output(s) ({', '.join(plan.output_names)}); cf.onnx.load makes "
                "models of one input and one output (convforge.onnx.backend runs any graph)"
            )
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "onnx_names", {k: e.onnx_name for k, e in plan.state.items()})
        for key, entry in plan.state.items():
            if entry.kind == "parameter":
                self.register_parameter(key, nn.Parameter(entry.array))
            else:
                self.register_buffer(key, entry.array)
        name, t = plan.inputs[0]
        object.__setattr__(self, "input_name", name)
        object.__setattr__(self, "output_name", plan.output_names[0])
        object.__setattr__(self, "input_type", t)
        object.__setattr__(self, "opset", plan.opset)

    @property
    def input_shape(self) -> tuple:
        """The shape to compile for: ``(None, 3, 224, 224)``."""
        return tuple(None if d == BATCH else d for d in self.input_type.shape)

    @property
    def graph(self) -> Graph:
        """The IR graph built at import (inference, before any pass)."""
        return self._plan.graph

    def forward(self, x: Any) -> Any:
        return replay(self._plan, self, x)

    def extra_repr(self) -> str:
        n = sum(1 for s in self._plan.steps)
        return f"{self.input_name}: {self.input_type} -> {self.output_name}, {n} ops, opset {self.opset}"


def replay(plan: Plan, module: OnnxModel, x: Any) -> Any:
    """Run ``plan`` on ``x`` through ``convforge.functional`` (traced or eager)."""
    tracer = trace.active()
    batch = _check_call_input(plan, x)
    env: dict[str, Any] = {plan.inputs[0][0]: x}
    state = {**module._parameters, **module._buffers}
    for step in plan.steps:
        args = [env[r.name] if r.kind == "value" else state[r.name] for r in step.inputs]
        before = len(tracer.graph.nodes) if tracer is not None else 0
        try:
            outs = _run_step(step, args, batch, module.training)
        except ConvforgeError as exc:
            raise wrap_error(exc, step.label) from None
        if tracer is not None:
            for node in tracer.graph.nodes[before:]:
                node.meta["layer"] = step.layer
                node.meta.pop("loc", None)
        env.update(zip(step.outputs, outs))
    return env[plan.outputs[0]]


def _run_step(step: Step, args: list, batch: Any, training: bool) -> tuple:
    attrs = step.attrs
    if step.kind == "dropout":
        return (F.dropout(args[0], attrs["p"], training),)
    if step.kind == "batch_norm":
        x, weight, bias, mean, var = args
        return (F.batch_norm(x, mean, var, weight, bias, training, attrs["momentum"], attrs["eps"]),)
    if batch != BATCH:
        attrs = {k: _with_batch(v, batch) for k, v in attrs.items()}
    out = F._call(step.op, args, attrs, None, tuple(f"input {i}" for i in range(len(args))) or ("input",))
    return out if isinstance(out, tuple) else (out,)


def _with_batch(value: Any, batch: int) -> Any:
    if isinstance(value, tuple) and BATCH in value:
        return tuple(batch if d == BATCH else d for d in value)
    return value


def _check_call_input(plan: Plan, x: Any) -> Any:
    name, want = plan.inputs[0]
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    ok = len(shape) == want.rank and all(w == BATCH or w == g for w, g in zip(want.shape, shape))
    if not ok:
        given = "[" + ", ".join(str(d) for d in shape) + "]"
        raise ShapeError(f"ONNX input {name!r}: expected shape {_fmt_type(want)}, got {given}")
    return shape[0] if want.shape and want.shape[0] == BATCH else BATCH


def _fmt_type(t: TensorType) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def free_batch(source: Any) -> Any:
    """A copy of an ONNX model that any batch size runs in other runtimes too (onnxruntime):
    the input's leading dim becomes ``N`` and each Reshape target that the importer read as
    keeping the batch (``[1, 9216]`` in a file fixed to batch 1) copies dim 0 instead (``0``).
    """
    import onnx
    from onnx import numpy_helper

    model = read_model(source)
    plan = convert(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first = graph_inputs(out)[0]
    dim = first.type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "N"
    for index, target in plan.batch_reshapes:
        node = out.graph.node[index]
        name = f"{node.input[1]}__batch_free_{index}"
        out.graph.initializer.append(numpy_helper.from_array(np.array([0, *target[1:]], np.int64), name))
        node.input[1] = name
    for info in out.graph.output:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    del out.graph.value_info[:]
    return out


# =========================================================================================
# Entry point
# =========================================================================================
def load(source: Any, input_shape: Sequence[Any] | None = None) -> OnnxModel:
    """Import an ONNX model (a path, bytes or a ModelProto) as an ``nn.Module``.

    ``input_shape`` fixes the input's shape where the file leaves it open (``None`` for
    the batch, which becomes the IR's ``N``). Every op, attribute, dtype and shape is
    checked here; an unsupported one raises a ``ConvforgeError`` naming the ONNX node.

    >>> model = cf.onnx.load("lenet.onnx")
    >>> net = cf.compile(model, input_shape=model.input_shape)
    """
    model = read_model(source)
    return OnnxModel(convert(model, input_shape))


__all__ = ["OnnxModel", "Plan", "RUNTIME_DTYPES", "convert", "load", "state_key", "supported_ops"]
