"""``cf.summary``: a torchinfo-style table of a model's layers, or of a compiled program's kernels.

>>> print(cf.summary(model, input_shape=(1, 3, 227, 227)))   # layers, shapes, params, MACs
>>> print(cf.summary(net))                                    # which layers each kernel fuses

What is counted. **Parameters**: every element of every ``nn.Parameter`` (all of them train;
buffers such as batch-norm running statistics are not parameters). **MACs**: the
multiply-accumulates of convolutions and matrix products, the standard way, for the batch
given: ``conv{1,2}d`` ``Cout * (output positions) * (Cin / groups) * (kernel elements)``,
``conv_transpose2d`` ``Cin * (input positions) * (Cout / groups) * (kernel elements)``,
``linear`` ``in * out`` per row, ``matmul`` ``m * k * n``. Bias additions, activations,
pooling, normalisation and elementwise arithmetic are not counted. FLOPs are ``2 * MACs``.
**Activation memory**: the bytes of every value the forward pass computes (the layer's
outputs and its intermediates), for the batch given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from convforge.errors import ConvforgeError
from convforge.frontend.compile import CompiledModel, TrainStep, _input_type, trace_model
from convforge.frontend.nn import Module
from convforge.ir.graph import Graph, Node

__all__ = ["KernelRow", "LayerRow", "Summary", "summary"]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One layer call of the model: ``path`` in the model (``""`` for the root), module
    ``type``, ``output_shape``, the ``params`` it owns directly (0 on a repeated call), its
    ``macs`` and the ``activation_bytes`` it computes."""

    path: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation_bytes: int


@dataclasses.dataclass(frozen=True)
class KernelRow:
    """One node of a compiled program: its ``phase`` (forward, backward, update), the ``ops`` it
    runs (several for a fused kernel), the ``layer`` it comes from and its ``output_shape``."""

    index: int
    phase: str
    ops: tuple[str, ...]
    layer: str
    output_shape: tuple

    @property
    def fused(self) -> bool:
        return len(self.ops) > 1


@dataclasses.dataclass(frozen=True)
class Summary:
    """What :func:`summary` found; ``str()`` is the table. A model's summary has ``rows``; a
    compiled program's has ``kernels``, and its MACs and activation bytes are per image, of
    its forward nodes (a fused kernel's intermediates never reach memory, so they do not count)."""

    name: str
    input_shape: tuple
    total_params: int
    trainable_params: int
    total_macs: int
    param_bytes: int
    input_bytes: int
    activation_bytes: int
    rows: tuple[LayerRow, ...] = ()
    kernels: tuple[KernelRow, ...] = ()
    backend: str | None = None

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def __str__(self) -> str:
        return _render(self)


def summary(
    model: Module | CompiledModel | TrainStep, input_shape: Sequence[int | None] | None = None
) -> Summary:
    """A table of ``model``'s layers for ``input_shape`` (a ``None`` batch counts as 1), or of
    the kernels of a compiled model / training step (``input_shape`` not needed).

    >>> s = cf.summary(lenet5(), input_shape=(1, 1, 28, 28))
    >>> s.total_params, s.total_macs
    (61706, 416520)
    """
    if isinstance(model, CompiledModel | TrainStep):
        return _compiled_summary(model)
    if not isinstance(model, Module):
        raise ConvforgeError(
            f"summary: expected an nn.Module, a CompiledModel or a TrainStep, given {type(model).__name__}"
        )
    if input_shape is None:
        raise ConvforgeError(f"summary: {type(model).__name__} needs input_shape, e.g. (1, 3, 224, 224)")
    shape = tuple(1 if i == 0 and d is None else d for i, d in enumerate(input_shape))
    input_type = _input_type(shape, "f32", type(model).__name__)
    graph, _ = trace_model(model, input_type, training=False)
    rows = _layer_rows(graph, model)
    total = sum(p.size for _, p in model.named_parameters())
    return Summary(
        name=type(model).__name__,
        input_shape=shape,
        total_params=total,
        trainable_params=total,
        total_macs=sum(r.macs for r in rows),
        param_bytes=sum(p.nbytes for _, p in model.named_parameters()),
        input_bytes=input_type.nbytes(),
        activation_bytes=sum(r.activation_bytes for r in rows),
        rows=tuple(rows),
    )


# -- counting -----------------------------------------------------------------------------
def node_macs(node: Node, batch: int = 1) -> int:
    """Multiply-accumulates of one node (of a fusion node: of its region), ``batch`` for ``N``."""
    if node.region is not None:
        return sum(node_macs(inner, batch) for inner in node.region.nodes)
    if node.op in ("conv1d", "conv2d", "linear"):
        # each output element sums (Cin / groups) * kernel (conv) or `in` (linear) products
        return node.outputs[0].type.numel(batch) * math.prod(node.inputs[1].type.shape[1:])
    if node.op == "conv_transpose2d":
        # each input element scatters into (Cout / groups) * kernel outputs
        return node.inputs[0].type.numel(batch) * math.prod(node.inputs[1].type.shape[1:])
    if node.op == "matmul":
        a = node.inputs[0].type.shape
        k = a[0] if node.attrs["transpose_a"] else a[1]
        return node.outputs[0].type.numel(batch) * k
    return 0


def _split_layer(layer: str) -> tuple[str, str]:
    """``"features.3 (Conv2d)"`` -> ``("features.3", "Conv2d")``; the root is ``""``."""
    path, _, kind = layer.rpartition(" (")
    if not path:
        return "", layer
    return ("" if path == "<root>" else path), kind.rstrip(")")


def _layer_rows(graph: Graph, model: Module) -> list[LayerRow]:
    owned: dict[str, int] = {}
    for key, p in model.named_parameters():
        owner = key.rpartition(".")[0]
        owned[owner] = owned.get(owner, 0) + p.size
    groups: list[tuple[str, list[Node]]] = []
    for node in graph.nodes:
        layer = node.meta.get("layer", "model")
        if groups and groups[-1][0] == layer:
            groups[-1][1].append(node)
        else:
            groups.append((layer, [node]))
    rows, seen = [], set()
    for layer, nodes in groups:
        path, kind = _split_layer(layer)
        params = 0 if path in seen else owned.get(path, 0)
        seen.add(path)
        rows.append(
            LayerRow(
                path=path,
                type=kind,
                output_shape=tuple(nodes[-1].outputs[0].type.shape),
                params=params,
                macs=sum(node_macs(n) for n in nodes),
                activation_bytes=sum(v.type.nbytes() for n in nodes for v in n.outputs),
            )
        )
    return rows


def _compiled_summary(obj: CompiledModel | TrainStep) -> Summary:
    graph = obj.graph if isinstance(obj, CompiledModel) else obj.graph_for("train")
    store = obj._store  # the arrays the program reads: which of them are parameters
    kernels, macs, activations = [], 0, 0
    for i, node in enumerate(graph.nodes, start=1):
        phase = node.meta.get("phase", "forward")
        ops = tuple(node.meta.get("fused_from", ())) or (
            tuple(n.op for n in node.region.nodes) if node.region is not None else (node.op,)
        )
        kernels.append(
            KernelRow(i, phase, ops, node.meta.get("layer", ""), tuple(node.outputs[0].type.shape))
        )
        if phase == "forward":
            macs += node_macs(node)
            activations += sum(v.type.nbytes() for v in node.outputs)
    params = [store.arrays[k] for k in store.trainable]
    return Summary(
        name=obj.name,
        input_shape=tuple(obj.input_type.shape),
        total_params=sum(p.size for p in params),
        trainable_params=sum(p.size for p in params),
        total_macs=macs,
        param_bytes=sum(p.nbytes for p in params),
        input_bytes=obj.input_type.nbytes(),
        activation_bytes=activations,
        kernels=tuple(kernels),
        backend=obj.backend,
    )


# -- rendering ----------------------------------------------------------------------------
def _count(n: int) -> str:
    """``105415200`` -> ``"105.4 M"``: four significant digits with a K / M / G / T suffix."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.4g} {suffix}"
    return str(n)


def _bytes(n: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def _shape(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(header: Sequence[str], body: list[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    rule = "-" * len(line(header))
    return [rule, line(header).rstrip(), rule, *(line(r).rstrip() for r in body), rule]


def _render(s: Summary) -> str:
    if s.kernels:
        fused = [k for k in s.kernels if k.fused]
        title = f"{s.name} compiled for {s.backend}: {len(s.kernels)} nodes, {len(fused)} fused kernels"
        body = [
            (str(k.index), k.phase, " -> ".join(k.ops), k.layer, _shape(k.output_shape)) for k in s.kernels
        ]
        lines = [title, *_table(("#", "Phase", "Kernel (ops)", "Layer", "Output shape"), body, {0})]
        macs = f"Forward MACs per image: {_count(s.total_macs)}"
    else:
        title = f"{s.name}: input {_shape(s.input_shape)}"
        body = [
            (
                r.path or "(root)",
                r.type,
                _shape(r.output_shape),
                f"{r.params:,}",
                _count(r.macs) if r.macs else "--",
                _bytes(r.activation_bytes),
            )
            for r in s.rows
        ]
        header = ("Layer", "Type", "Output shape", "Params", "MACs", "Activations")
        lines = [title, *_table(header, body, {3, 4, 5})]
        macs = f"Total MACs: {_count(s.total_macs)} (FLOPs = 2 x MACs = {_count(s.total_flops)})"
    lines += [
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        macs,
        f"Memory: input {_bytes(s.input_bytes)}, activations {_bytes(s.activation_bytes)}, "
        f"params {_bytes(s.param_bytes)}",
    ]
    return "\n".join(lines)
