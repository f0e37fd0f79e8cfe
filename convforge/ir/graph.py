"""The graph IR: a topologically ordered list of nodes in SSA form.

A :class:`Graph` owns its input :class:`Value` s and its :class:`Node` s; each node owns
its output values. Values keep their users up to date, so a rewrite is
``replace_all_uses_with`` followed by ``erase``::

    g = Graph("tiny")
    x = g.add_input("x", TensorType("f32", ("N", 4)))
    y = g.call("relu", x)
    g.set_outputs([y])
    print(g)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from convforge.errors import VerificationError, wrap_error
from convforge.ir.attrs import Attrs, AttrValue
from convforge.ir.ops import registry
from convforge.ir.printer import print_graph
from convforge.ir.types import TensorType
from convforge.ir.verify import verify as verify_graph

# ``Attrs`` and ``wrap_error`` live in ``convforge.ir.attrs`` and ``convforge.errors``; they
# are re-exported here for the modules that import them from the graph.
__all__ = ["AttrValue", "Attrs", "Graph", "Node", "Value", "wrap_error"]


class Value:
    """An SSA value: the output of one node, or a graph input."""

    __slots__ = ("name", "type", "producer", "index", "users")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None, index: int = 0):
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.users: list[Node] = []

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype


class Node:
    """One operation: ``outputs = op(inputs) {attrs}``, with ``meta`` about where it came from.

    ``region`` is set on nodes of a region op (``Op.region``, e.g. ``fusion``): the ops the
    node fuses (usually a chain).
    """

    __slots__ = ("op", "inputs", "outputs", "attrs", "meta", "region", "graph")

    def __init__(self, op: str, attrs: Attrs, meta: dict[str, Any] | None = None):
        self.op = op
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.attrs = attrs
        self.meta: dict[str, Any] = dict(meta or {})
        self.region: Graph | None = None
        self.graph: Graph | None = None

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise VerificationError(f"{self.describe()} has {len(self.outputs)} outputs, not 1")
        return self.outputs[0]

    def describe(self) -> str:
        """``%4 = conv2d (features.3 (Conv2d))``: how errors name a node."""
        names = ", ".join(f"%{v.name}" for v in self.outputs) or "<no outputs>"
        where = self.meta.get("layer")
        return f"{names} = {self.op}" + (f" ({where})" if where else "")

    def set_input(self, i: int, value: Value) -> None:
        old = self.inputs[i]
        self.inputs[i] = value
        if self not in value.users:
            value.users.append(self)
        if old not in self.inputs and self in old.users:
            old.users.remove(self)

    def __repr__(self) -> str:
        return f"<Node {self.describe()}>"


class Graph:
    """A named, topologically ordered SSA graph with typed inputs and outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self._names: set[str] = set()
        self._counter = 0
        self._insert_at: int | None = None
        self._default_meta: dict[str, Any] = {}
        #: graph-level facts passes share: e.g. "no_grad" (input names autodiff skips)
        self.meta: dict[str, Any] = {}

    # -- building ---------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        """A new graph input; a node output that happens to hold ``name`` is renamed, because
        input names are contracts (``state_dict`` keys) and node output names are not."""
        if name in self._names:
            clash = next(v for v in self.values() if v.name == name)
            if clash.producer is None:
                raise VerificationError(f"graph @{self.name} already has an input named %{name}")
            clash.name = self.fresh_name(name)
            self._names.add(clash.name)
            self._names.discard(name)
        value = Value(name, type)
        self._names.add(name)
        self.inputs.append(value)
        return value

    def fresh_name(self, hint: str | None = None) -> str:
        if hint is not None and hint not in self._names:
            return hint
        while True:
            self._counter += 1
            name = str(self._counter) if hint is None else f"{hint}.{self._counter}"
            if name not in self._names:
                return name

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, AttrValue] | None = None,
        meta: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        output_types: Sequence[TensorType] | None = None,
        region: Graph | None = None,
    ) -> Node:
        """Insert ``op(inputs) {attrs}``; attributes are normalised and types inferred by the op
        (a region op's types are its region's output types)."""
        opdef = registry.get(op)
        merged_meta = {**self._default_meta, **(meta or {})}
        node = Node(op, Attrs(attrs), merged_meta)
        where = _where(node, merged_meta)
        node.attrs = opdef.normalize(node.attrs, where=where)
        if output_types is None:
            output_types = opdef.result_types([v.type for v in inputs], node.attrs, region, where=where)
        base = self.fresh_name(name)
        self._names.add(base)
        node.inputs = list(inputs)
        suffixes = opdef.output_names
        for i, t in enumerate(output_types):
            suffix = suffixes[i] if i < len(suffixes) else f"out{i}"
            out_name = base if i == 0 else self.fresh_name(f"{base}.{suffix}")
            self._names.add(out_name)
            node.outputs.append(Value(out_name, t, node, i))
        for v in inputs:
            if node not in v.users:
                v.users.append(node)
        node.region = region
        node.graph = self
        if self._insert_at is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._insert_at, node)
            self._insert_at += 1
        return node

    def call(self, op: str, *inputs: Value, meta: Mapping[str, Any] | None = None, **attrs: AttrValue):
        """Emit ``op`` and return its output value (a tuple for multi-output ops)."""
        node = self.create_node(op, inputs, attrs, meta)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def set_outputs(self, outputs: Sequence[Value]) -> None:
        self.outputs = list(outputs)

    @contextlib.contextmanager
    def inserting_before(self, node: Node) -> Iterator[None]:
        """New nodes go before ``node`` instead of at the end."""
        saved = self._insert_at
        self._insert_at = self.nodes.index(node)
        try:
            yield
        finally:
            self._insert_at = saved

    @contextlib.contextmanager
    def meta_scope(self, **meta: Any) -> Iterator[None]:
        """Nodes created inside get ``meta`` by default (autodiff marks backward nodes)."""
        saved = self._default_meta
        self._default_meta = {**saved, **meta}
        try:
            yield
        finally:
            self._default_meta = saved

    # -- rewriting --------------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        for user in list(old.users):
            user.inputs = [new if v is old else v for v in user.inputs]
            if user not in new.users:
                new.users.append(user)
        old.users.clear()
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs have no users left."""
        for out in node.outputs:
            if out.users or out in self.outputs:
                raise VerificationError(f"cannot erase {node.describe()}: %{out.name} is still used")
        for v in node.inputs:
            if node in v.users:
                v.users.remove(node)
        self.nodes.remove(node)
        for out in node.outputs:
            self._names.discard(out.name)
        node.graph = None

    def remove_input(self, value: Value) -> None:
        if value.users or value in self.outputs:
            raise VerificationError(f"cannot remove input %{value.name}: it is still used")
        self.inputs.remove(value)
        self._names.discard(value.name)

    # -- queries ----------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def input(self, name: str) -> Value:
        for v in self.inputs:
            if v.name == name:
                return v
        raise KeyError(name)

    def verify(self) -> None:
        verify_graph(self)

    def copy(self) -> Graph:
        """A deep copy: new values and nodes with the same names, types, attributes and meta,
        regions copied the same way, and ``meta`` copied. No shape rule runs.

        Meta's dicts, lists, sets and tuples are copied (mutating the copy's leaves the
        original alone); other objects in it (a memory plan) are shared.
        """
        clone = Graph(self.name)
        clone.meta = _copy_meta(self.meta)
        new: dict[int, Value] = {}
        for v in self.inputs:
            new[id(v)] = Value(v.name, v.type)
            clone.inputs.append(new[id(v)])
        for node in self.nodes:
            twin = Node(node.op, node.attrs, _copy_meta(node.meta))
            for v in node.inputs:
                if id(v) not in new:
                    raise VerificationError(
                        f"cannot copy graph @{self.name}: {node.describe()} uses %{v.name}, "
                        f"which is not defined before it"
                    )
                twin.inputs.append(new[id(v)])
                if twin not in new[id(v)].users:
                    new[id(v)].users.append(twin)
            for i, out in enumerate(node.outputs):
                new[id(out)] = Value(out.name, out.type, twin, i)
                twin.outputs.append(new[id(out)])
            twin.region = node.region.copy() if node.region is not None else None
            twin.graph = clone
            clone.nodes.append(twin)
        for v in self.outputs:
            if id(v) not in new:
                raise VerificationError(f"cannot copy graph @{self.name}: output %{v.name} is not defined")
            clone.outputs.append(new[id(v)])
        clone._names = {v.name for v in clone.values()}
        return clone

    def __str__(self) -> str:
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"


def _where(node: Node, meta: Mapping[str, Any]) -> str:
    layer = meta.get("layer")
    return f"{layer}: {node.op}" if layer else node.op


def _copy_meta(value: Any) -> Any:
    """``value`` with its dicts, lists, sets and tuples copied, recursively; other objects shared."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_meta(v) for k, v in value.items()}
    if kind in (list, tuple, set):
        return kind(_copy_meta(v) for v in value)
    return value
