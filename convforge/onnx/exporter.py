"""ONNX export: a convforge model's inference IR as a checked ONNX model.

    cf.onnx.export(model, "lenet.onnx", input_shape=(None, 1, 28, 28))   # nn.Module
    cf.onnx.export(net, "lenet.onnx")                                     # a CompiledModel

A module (or a TrainStep's module, with the step's weights) is traced in eval mode and
simplified by the front passes; a CompiledModel exports the graph its backend runs:
fusion regions are written out as their ops, and nodes computed from weights alone (the
batch-norm folding of numba-cpu) are evaluated with their NumPy references and stored as
initializers. The graph input is ``input`` (its batch the symbol ``N``), the output
``output``; initializers keep their ``state_dict`` names. The file is checked with
``onnx.checker.check_model(full_check=True)`` and written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convforge.fileio import atomic_write
from convforge.frontend.compile import FRONT_PIPELINE, CompiledModel, TrainStep, _input_type, trace_model
from convforge.frontend.nn import Module
from convforge.ir.graph import Graph, Node, Value
from convforge.ir.ops import registry
from convforge.ir.types import BATCH, TensorType
from convforge.onnx.reader import OnnxError
from convforge.passes import PassManager

#: the opset written by default, and the oldest one the exporter writes
DEFAULT_OPSET = 17
MIN_EXPORT_OPSET = 13
_ELEM = {"f32": 1, "f64": 11}


def export(
    model: Any, path: str | os.PathLike, input_shape: Sequence[Any] | None = None, opset: int = DEFAULT_OPSET
) -> Any:
    """Write ``model`` (an ``nn.Module``, ``CompiledModel`` or ``TrainStep``) to ``path`` as ONNX.

    ``input_shape`` is required for a module (``None`` for the batch); a compiled model
    uses its own. Returns the ``onnx.ModelProto`` written.
    """
    import onnx

    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_EXPORT_OPSET <= opset <= newest:
        raise OnnxError(
            f"cf.onnx.export: opset must be an int from {MIN_EXPORT_OPSET} to {newest}, got {opset!r}"
        )
    graph, state = _source(model, input_shape)
    proto = GraphExporter(graph, state, opset).model()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in the exporter, not a user mistake
        raise OnnxError(f"cf.onnx.export produced an invalid model: {exc}") from None
    atomic_write(path, proto.SerializeToString())
    return proto


def _source(model: Any, input_shape: Sequence[Any] | None) -> tuple[Graph, dict[str, np.ndarray]]:
    """The inference graph to export and the arrays of its non-input graph inputs."""
    if isinstance(model, CompiledModel):
        if input_shape is not None and _input_type(input_shape, model.dtype, model.name) != model.input_type:
            raise OnnxError(
                f"cf.onnx.export: {model.name} was compiled for {model.input_type}; input_shape "
                f"{tuple(input_shape)} differs (compile it again for that shape)"
            )
        return model.graph, dict(model.state_dict())
    if isinstance(model, TrainStep):
        state = dict(model.state_dict())
        module, dtype = model.model, model.dtype
        input_type = model.input_type if input_shape is None else _input_type(input_shape, dtype, model.name)
    elif isinstance(model, Module):
        if input_shape is None:
            input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise OnnxError("cf.onnx.export: input_shape is required for a module, e.g. (None, 1, 28, 28)")
        module, dtype, state = model, "f32", dict(model.state_dict())
        input_type = _input_type(input_shape, dtype, type(model).__name__)
    else:
        raise OnnxError(
            f"cf.onnx.export expects an nn.Module, CompiledModel or TrainStep, got {type(model).__name__}"
        )
    graph, _ = trace_model(module, input_type, training=False)
    PassManager.from_string(FRONT_PIPELINE).run(graph)
    return graph, state


# =========================================================================================
# IR graph -> ONNX graph
# =========================================================================================
Emitter = Callable[["GraphExporter", Node, list[str], list[str]], None]
EMITTERS: dict[str, Emitter] = {}


def emits(*ops: str) -> Callable[[Emitter], Emitter]:
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


def exportable_ops() -> list[str]:
    return sorted(set(EMITTERS) | {"fusion"})


class GraphExporter:
    """Builds the ONNX nodes, initializers and value names for one IR graph."""

    def __init__(self, graph: Graph, state: dict[str, np.ndarray], opset: int):
        self.graph = graph
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {}  # id(Value) -> ONNX name
        self.known: dict[int, np.ndarray] = {}  # id(Value) -> constant value (weights, folded)
        self.taken: set[str] = set()
        self.dtype = graph.outputs[0].type.dtype if graph.outputs else "f32"
        inputs = [v for v in graph.inputs if v.name not in state]
        if len(inputs) != 1:
            raise OnnxError(
                f"cf.onnx.export: expected one data input besides the weights, got "
                f"{', '.join(v.name for v in inputs) or 'none'}"
            )
        self.input = inputs[0]
        self._name(self.input, "input")
        for v in graph.inputs:
            if v.name in state:
                arr = np.asarray(state[v.name], dtype=v.type.np_dtype)
                self.known[id(v)] = arr
                self.initializers[self._name(v, v.name)] = arr
        for i, v in enumerate(graph.outputs):
            self.names.setdefault(id(v), self._fresh("output" if len(graph.outputs) == 1 else f"output_{i}"))

    # -- names ----------------------------------------------------------------------------
    def _fresh(self, hint: str) -> str:
        name, n = hint, 0
        while name in self.taken:
            n += 1
            name = f"{hint}_{n}"
        self.taken.add(name)
        return name

    def _name(self, v: Value, hint: str | None = None) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = self._fresh(hint or v.name)
        return self.names[id(v)]

    def const(self, array: Any, hint: str, dtype: Any = None) -> str:
        """An initializer holding ``array`` (int64 shapes, scalar factors)."""
        name = self._fresh(hint)
        self.initializers[name] = np.asarray(array, dtype=dtype)
        return name

    def scalar(self, value: float, hint: str) -> str:
        return self.const(np.asarray(value, dtype=TensorType(self.dtype, ()).np_dtype), hint)

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> None:
        from onnx import helper

        name = self._fresh(f"{op_type}_{len(self.nodes)}")
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))

    def temp(self, hint: str) -> str:
        return self._fresh(hint)

    # -- the walk ----------------------------------------------------------------------------
    def model(self) -> Any:
        from onnx import helper, numpy_helper

        self._walk(self.graph.nodes)
        used = {name for n in self.nodes for name in n.input} | {self._name(v) for v in self.graph.outputs}
        graph = helper.make_graph(
            self.nodes,
            _safe(self.graph.name),
            [self._value_info(self.input)],
            [self._value_info(v) for v in self.graph.outputs],
            [
                numpy_helper.from_array(np.ascontiguousarray(a), name)
                for name, a in self.initializers.items()
                if name in used
            ],  # fmt: skip
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="convforge",
            ir_version=_ir_version(self.opset),
        )
        model.doc_string = f"exported by convforge from graph @{self.graph.name}"
        return model

    def _walk(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            if node.op == "fusion":  # the region's ops, its inputs named as the node's
                region = node.region
                for ri, oi in zip(region.inputs, node.inputs):
                    self._alias(ri, oi)
                self._walk(region.nodes)
                for ro, no in zip(region.outputs, node.outputs):
                    self._bind_output(no, ro)
                continue
            if all(id(v) in self.known for v in node.inputs) and node.inputs:
                # computed from weights alone (bn_fold_*): evaluate it here
                args = [self.known[id(v)] for v in node.inputs]
                outs = registry.get(node.op).run_reference(args, node.attrs)
                for v, arr in zip(node.outputs, outs):
                    self.known[id(v)] = np.asarray(arr, dtype=v.type.np_dtype)
                    self.initializers[self._name(v)] = self.known[id(v)]
                continue
            emitter = EMITTERS.get(node.op)
            if emitter is None:
                raise OnnxError(
                    f"cf.onnx.export: {node.describe()} (op {node.op}) has no ONNX form; "
                    f"exportable ops: {', '.join(exportable_ops())}"
                )
            ins = [self._name(v) for v in node.inputs]
            outs = [self._name(v) for v in node.outputs]
            emitter(self, node, ins, outs)

    def _alias(self, inner: Value, outer: Value) -> None:
        self.names[id(inner)] = self._name(outer)
        if id(outer) in self.known:
            self.known[id(inner)] = self.known[id(outer)]

    def _bind_output(self, outer: Value, inner: Value) -> None:
        """The fusion node's output is the region's output: write an Identity if both are named."""
        inner_name = self._name(inner)
        if id(outer) in self.names and self.names[id(outer)] != inner_name:
            self.node("Identity", [inner_name], [self.names[id(outer)]])
        else:
            self.names[id(outer)] = inner_name

    def _value_info(self, v: Value) -> Any:
        from onnx import helper

        shape = [d if d != BATCH else "N" for d in v.type.shape]
        return helper.make_tensor_value_info(self._name(v), _ELEM[v.type.dtype], shape)


def _ir_version(opset: int) -> int:
    import onnx

    table = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}
    return min(table.get(opset, onnx.IR_VERSION), onnx.IR_VERSION)


def _safe(name: str) -> str:
    return name or "convforge"


# =========================================================================================
# Emitters: one IR op -> ONNX nodes
# =========================================================================================
def _pads(padding: Sequence[int], nd: int) -> list[int]:
    """IR padding (symmetric or begins+ends) as ONNX pads (begins, then ends)."""
    p = list(padding)
    return p + p if len(p) == nd else p


@emits("conv2d", "conv1d")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    nd = 2 if node.op == "conv2d" else 1
    w = node.inputs[1].type
    ex.node(
        "Conv", ins, outs,
        kernel_shape=list(w.shape[2:]), strides=list(a["stride"]), pads=_pads(a["padding"], nd),
        dilations=list(a["dilation"]), group=int(a["groups"]),
    )  # fmt: skip


@emits("conv_transpose2d")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    w = node.inputs[1].type
    ex.node(
        "ConvTranspose", ins, outs,
        kernel_shape=list(w.shape[2:]), strides=list(a["stride"]), pads=_pads(a["padding"], 2),
        output_padding=list(a["output_padding"]), dilations=list(a["dilation"]), group=int(a["groups"]),
    )  # fmt: skip


@emits("linear")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Gemm", ins, outs, transB=1)


@emits("matmul")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    ex.node("Gemm", ins, outs, transA=int(a["transpose_a"]), transB=int(a["transpose_b"]))


@emits("max_pool2d")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    ex.node(
        "MaxPool", ins, outs,
        kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]), pads=_pads(a["padding"], 2),
        dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]),
    )  # fmt: skip


@emits("avg_pool2d")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    if a["divisor_override"] is not None:
        raise OnnxError(f"cf.onnx.export: {node.describe()}: divisor_override has no ONNX AveragePool form")
    ex.node(
        "AveragePool", ins, outs,
        kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]), pads=_pads(a["padding"], 2),
        ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]),
    )  # fmt: skip


@emits("adaptive_avg_pool2d")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    out_hw = tuple(node.attrs["output_size"])
    in_hw = tuple(node.inputs[0].type.shape[2:])
    if out_hw == (1, 1):
        ex.node("GlobalAveragePool", ins, outs)
    elif all(i % o == 0 for i, o in zip(in_hw, out_hw)):
        kernel = [i // o for i, o in zip(in_hw, out_hw)]
        ex.node("AveragePool", ins, outs, kernel_shape=kernel, strides=kernel)
    else:
        raise OnnxError(
            f"cf.onnx.export: {node.describe()}: adaptive pooling {in_hw} -> {out_hw} has no ONNX form"
        )


@emits("batch_norm")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("BatchNormalization", ins, outs, epsilon=float(node.attrs["eps"]))


@emits("local_response_norm")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    if a["before"] != (a["size"] - 1) // 2:
        raise OnnxError(f"cf.onnx.export: {node.describe()}: ONNX LRN centres the window at (size - 1) // 2")
    attrs = {
        "size": int(a["size"]),
        "alpha": float(a["alpha"]),
        "beta": float(a["beta"]),
        "bias": float(a["k"]),
    }
    ex.node("LRN", ins, outs, **attrs)


@emits("layer_norm")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    rank = node.inputs[0].type.rank
    ins = list(ins)
    if len(ins) == 1:
        ins.append(ex.const(np.ones(a["normalized_shape"], node.inputs[0].type.np_dtype), "ln_scale"))
    ex.node("LayerNormalization", ins, outs, axis=rank - len(a["normalized_shape"]), epsilon=float(a["eps"]))


@emits("group_norm")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    channels = node.inputs[0].type.shape[1]
    dtype = node.inputs[0].type.np_dtype
    ins = list(ins) + [None] * (3 - len(ins))
    ins[1] = ins[1] or ex.const(np.ones(channels, dtype), "gn_scale")
    ins[2] = ins[2] or ex.const(np.zeros(channels, dtype), "gn_bias")
    if ex.opset >= 21 or a["num_groups"] == channels:
        op = "GroupNormalization" if ex.opset >= 21 else "InstanceNormalization"
        extra = {"num_groups": int(a["num_groups"])} if op == "GroupNormalization" else {}
        ex.node(op, ins, outs, epsilon=float(a["eps"]), **extra)
    else:
        raise OnnxError(
            f"cf.onnx.export: {node.describe()}: group_norm with per-channel scales needs opset >= 21"
        )


_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "neg": "Neg", "reciprocal": "Reciprocal"}


@emits(*_UNARY)
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node(_UNARY[node.op], ins, outs)


@emits("leaky_relu")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("LeakyRelu", ins, outs, alpha=float(node.attrs["negative_slope"]))


@emits("elu")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Elu", ins, outs, alpha=float(node.attrs["alpha"]))


@emits("hardsigmoid")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("HardSigmoid", ins, outs, alpha=float(node.attrs["alpha"]), beta=float(node.attrs["beta"]))


@emits("relu6", "hardtanh")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    lo, hi = (0.0, 6.0) if node.op == "relu6" else (node.attrs["min_val"], node.attrs["max_val"])
    bounds = [ex.scalar(v, "clip_min" if i == 0 else "clip_max") if math.isfinite(v) else ""
              for i, v in enumerate((lo, hi))]  # fmt: skip
    while bounds and bounds[-1] == "":
        bounds.pop()
    ex.node("Clip", ins + bounds, outs)


@emits("hardswish")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    if ex.opset >= 14:
        ex.node("HardSwish", ins, outs)
        return
    gate = ex.temp(f"{outs[0]}_gate")
    ex.node("HardSigmoid", ins, [gate], alpha=1.0 / 6.0, beta=0.5)
    ex.node("Mul", [ins[0], gate], outs)


@emits("silu")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    gate = ex.temp(f"{outs[0]}_sigmoid")
    ex.node("Sigmoid", ins, [gate])
    ex.node("Mul", [ins[0], gate], outs)


@emits("mish")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    if ex.opset >= 18:
        ex.node("Mish", ins, outs)
        return
    soft, tanh = ex.temp(f"{outs[0]}_softplus"), ex.temp(f"{outs[0]}_tanh")
    ex.node("Softplus", ins, [soft])
    ex.node("Tanh", [soft], [tanh])
    ex.node("Mul", [ins[0], tanh], outs)


@emits("softplus")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    beta = float(node.attrs["beta"])
    if beta == 1.0:  # ONNX Softplus has no threshold: PyTorch's 20 differs by < exp(-20) relative
        ex.node("Softplus", ins, outs)
        return
    scaled, soft = ex.temp(f"{outs[0]}_scaled"), ex.temp(f"{outs[0]}_softplus")
    ex.node("Mul", [ins[0], ex.scalar(beta, "softplus_beta")], [scaled])
    ex.node("Softplus", [scaled], [soft])
    ex.node("Div", [soft, ex.scalar(beta, "softplus_beta")], outs)


@emits("gelu", "gelu_tanh")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    approximate = "none" if node.op == "gelu" else "tanh"
    if ex.opset >= 20:
        ex.node("Gelu", ins, outs, approximate=approximate)
        return
    if node.op == "gelu_tanh":
        raise OnnxError(f"cf.onnx.export: {node.describe()}: gelu with approximate='tanh' needs opset >= 20")
    scaled, erf, one, half = (ex.temp(f"{outs[0]}_{s}") for s in ("scaled", "erf", "one", "half"))
    ex.node("Mul", [ins[0], ex.scalar(1.0 / math.sqrt(2.0), "gelu_rsqrt2")], [scaled])
    ex.node("Erf", [scaled], [erf])
    ex.node("Add", [erf, ex.scalar(1.0, "gelu_one")], [one])
    ex.node("Mul", [ins[0], ex.scalar(0.5, "gelu_half")], [half])
    ex.node("Mul", [half, one], outs)


@emits("softmax", "log_softmax")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Softmax" if node.op == "softmax" else "LogSoftmax", ins, outs, axis=int(node.attrs["dim"]))


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}


@emits(*_BINARY)
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node(_BINARY[node.op], ins, outs)


@emits("add_n")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Sum" if len(ins) > 1 else "Identity", ins, outs)


@emits("scale")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Mul", [ins[0], ex.scalar(node.attrs["factor"], "factor")], outs)


@emits("add_scalar")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Add", [ins[0], ex.scalar(node.attrs["value"], "value")], outs)


@emits("cast")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    to = node.attrs["dtype"]
    if to not in _ELEM:
        raise OnnxError(f"cf.onnx.export: {node.describe()}: cast to {to} is not exported")
    ex.node("Cast", ins, outs, to=_ELEM[to])


def _shape_const(ex: GraphExporter, shape: Sequence[Any], hint: str) -> str:
    """An ONNX Reshape target: the batch ``N`` (always leading in the IR) is ``0``, copy dim 0."""
    return ex.const([0 if d == BATCH else int(d) for d in shape], hint, np.int64)


@emits("reshape", "flatten")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    out = node.outputs[0].type
    rank = node.inputs[0].type.rank
    if node.op == "flatten" and out.rank == 2 and node.attrs["start_dim"] % rank == 1:
        ex.node("Flatten", ins, outs, axis=1)  # start_dim 1 to the end: ONNX's 2-D Flatten
        return
    ex.node("Reshape", [ins[0], _shape_const(ex, out.shape, f"{outs[0]}_shape")], outs)


@emits("transpose")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Transpose", ins, outs, perm=list(node.attrs["perm"]))


@emits("concat")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    ex.node("Concat", ins, outs, axis=int(node.attrs["dim"]))


@emits("slice")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    bounds = (("starts", a["start"]), ("ends", a["stop"]), ("axes", a["dim"]), ("steps", a["step"]))
    parts = [ex.const([v], f"{outs[0]}_{k}", np.int64) for k, v in bounds]
    ex.node("Slice", [ins[0], *parts], outs)


@emits("pad")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    modes = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    if a["mode"] == "circular" and ex.opset < 19:
        raise OnnxError(f"cf.onnx.export: {node.describe()}: circular padding needs opset >= 19")
    pads = ex.const(list(a["pads"]), f"{outs[0]}_pads", np.int64)
    extra = [ex.scalar(a["value"], f"{outs[0]}_value")] if a["mode"] == "constant" else []
    ex.node("Pad", [ins[0], pads, *extra], outs, mode=modes[a["mode"]])


_REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax"}


@emits(*_REDUCE)
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    a = node.attrs
    dims = [int(d) for d in a["dims"]]
    op = _REDUCE[node.op]
    if not dims:
        ex.node("Identity", ins, outs)
        return
    as_input = op == "ReduceSum" or ex.opset >= 18
    if as_input:
        ex.node(op, [ins[0], ex.const(dims, f"{outs[0]}_axes", np.int64)], outs, keepdims=int(a["keepdim"]))
    else:
        ex.node(op, ins, outs, axes=dims, keepdims=int(a["keepdim"]))


@emits("interpolate")
def _(ex: GraphExporter, node: Node, ins: list[str], outs: list[str]) -> None:
    """PyTorch's coordinates as ONNX Resize modes; given scales are passed on (PyTorch and
    ONNX both read them for the coordinates), else the output size, built from the input's
    shape so that the batch stays free."""
    a = node.attrs
    if a["mode"] == "bilinear":
        ctm = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    elif a["mode"] == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:  # nearest-exact: floor(src + 0.5) with half-pixel centres
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                 "nearest_mode": "round_prefer_ceil"}  # fmt: skip
    if a["scales"] is not None:
        scales = ex.const([1.0, 1.0, *a["scales"]], f"{outs[0]}_scales", np.float32)
        ex.node("Resize", [ins[0], "", scales], outs, **attrs)
        return
    nc, sizes = ex.temp(f"{outs[0]}_nc"), ex.temp(f"{outs[0]}_sizes")
    ex.node("Shape", ins, [nc], start=0, end=2)
    ex.node("Concat", [nc, ex.const(list(a["size"]), f"{outs[0]}_hw", np.int64)], [sizes], axis=0)
    ex.node("Resize", [ins[0], "", "", sizes], outs, **attrs)
