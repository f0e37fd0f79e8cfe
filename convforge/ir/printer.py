"""The IR text form: ``print_graph(graph)`` writes what ``parser.parse`` reads back.

::

    graph @lenet(%x: f32[N,1,28,28], %0.weight: f32[6,1,5,5], %0.bias: f32[6]) -> (f32[N,6,28,28]) {
      %1: f32[N,6,28,28] = conv2d(%x, %0.weight, %0.bias) {stride=[1,1], padding=[2,2], ...}  # 0 (Conv2d)
      %2: f32[N,6,28,28] = relu(%1)
      return %2
    }

A node of a region op (``Op.region``: ``fusion``) prints its region as a chain of steps,
naming operands by the fusion's own operand names (region input ``i`` is fusion operand
``i``); the region's outputs are the last step's outputs::

      %3: f32[N,6,14,14] = fusion(%x, %w, %b) {
          conv2d(%x, %w, %b) {stride=[1,1], ...} -> relu -> max_pool2d {kernel_size=[2,2], ...}
      }

A region that is not a chain (a value read by several steps, several outputs) prints as a
block of typed lines, its inner values named ``%r0``, ``%r1``, ... and its outputs after
``yield``::

      %9: f32[4,2,3,3], %9.out1: f32[4] = fusion(%gy, %y, %am, %x) {
          %r0: f32[N,4,8,8] = relu_backward(%gy, %y)
          %r1: f32[N,4,8,8] = max_pool2d_backward_argmax(%r0, %am) {kernel_size=[2,2], ...}
          %r2: f32[4,2,3,3] = conv2d_backward_weight(%x, %r1) {stride=[1,1], ...}
          %r3: f32[4] = reduce_sum(%r1) {dims=[0,2,3], keepdim=false}
          yield %r2, %r3
      }
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from convforge.errors import AttributeValueError, UnknownOpError, VerificationError
from convforge.ir.ops import registry
from convforge.ir.types import BATCH, TensorType

if TYPE_CHECKING:  # the graph imports the printer for ``str(graph)``
    from convforge.ir.graph import Graph, Node, Value

#: characters a name may hold unquoted; any other name prints as a JSON string (``%"a b"``)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")

#: the separator between the layer and the location in a node's meta comment
META_SEP = " at "


def print_graph(graph: Graph) -> str:
    """The text form of ``graph``; ``parse(print_graph(g))`` rebuilds an equal graph."""
    params = ", ".join(f"{format_value(v)}: {v.type}" for v in graph.inputs)
    results = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"graph {format_name('@', graph.name)}({params}) -> ({results}) {{"]
    for node in graph.nodes:
        lines.extend(_node_lines(node))
    returned = ", ".join(format_value(v) for v in graph.outputs)
    lines.append(f"  return {returned}" if returned else "  return")
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_name(sigil: str, name: str) -> str:
    """``%x``, ``@lenet``; a name with other characters is quoted: ``%"a b"``."""
    if name and all(c in NAME_CHARS for c in name):
        return sigil + name
    return sigil + json.dumps(name)


def format_value(value: Value) -> str:
    return format_name("%", value.name)


def format_type(t: TensorType) -> str:
    return str(t)


def format_attr_value(value: Any, *, in_tuple: bool = False) -> str:
    """One attribute value: ints, floats (repr, exact), bools, none, strings, nested tuples."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        # repr round-trips exactly and always marks a float: 1.0, 1e-05, inf
        return repr(value)
    if isinstance(value, str):
        # the batch symbol inside a shape tuple prints bare: shape=[N,400]
        return BATCH if in_tuple and value == BATCH else json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_attr_value(v, in_tuple=True) for v in value) + "]"
    raise AttributeValueError(
        f"expected an attribute value of int, float, bool, None, str or tuple, got {type(value).__name__} "
        f"{value!r}"
    )


def format_attrs(attrs: Mapping[str, Any]) -> str:
    """`` {k=v, ...}`` (with its leading space), or ``""`` when there are none."""
    if not attrs:
        return ""
    items = []
    for key, value in attrs.items():
        try:
            items.append(f"{key}={format_attr_value(value)}")
        except AttributeValueError as exc:
            raise AttributeValueError(f"attribute {key}: {exc}") from None
    return " {" + ", ".join(items) + "}"


def format_meta(meta: Mapping[str, Any]) -> str:
    """``  # <layer> at <loc>`` from meta's ``layer`` and ``loc``, or ``""``."""
    layer, loc = meta.get("layer"), meta.get("loc")
    parts = []
    if layer is not None:
        parts.append(_meta_text(str(layer)))
    if loc is not None:
        parts.append("at " + _meta_text(str(loc)) if layer is None else _meta_text(str(loc)))
    if not parts:
        return ""
    return "  # " + META_SEP.join(parts)


def _meta_text(text: str) -> str:
    """``text`` bare when the parser can find its end unaided, else as a JSON string."""
    plain = (
        text
        and text == text.strip()
        and META_SEP not in text
        and not text.startswith(('"', "at "))
        and text != "at"
        and all(c.isprintable() for c in text)
    )
    return text if plain else json.dumps(text)


def _node_lines(node: Node) -> list[str]:
    try:
        results = ", ".join(f"{format_value(v)}: {v.type}" for v in node.outputs)
        operands = ", ".join(format_value(v) for v in node.inputs)
        head = f"  {results} = {format_name('', node.op)}({operands}){format_attrs(node.attrs)}"
        comment = format_meta(node.meta)
        if not is_region_op(node.op):
            return [head + comment]
        _check_region(node)
        try:
            body = ["      " + _region_steps(node)]
        except _NotAChain:
            body = _region_block(node)
    except (AttributeValueError, VerificationError) as exc:
        raise type(exc)(f"cannot print {node.describe()}: {exc}") from None
    return [f"{head} {{{comment}", *body, "  }"]


def is_region_op(op: str) -> bool:
    """Whether ``op`` is a registered region op (``Op.region``): one whose nodes hold a
    sub-graph. An unknown name is not (creating its node is what reports it)."""
    try:
        return registry.get(op).region
    except UnknownOpError:
        return False


class _NotAChain(Exception):
    """The region is a valid graph but not a chain: print it as a block."""


def _check_region(node: Node) -> None:
    region = node.region
    if region is None:
        raise VerificationError(f"{node.op} node without a region")
    if len(region.inputs) != len(node.inputs):
        raise VerificationError(
            f"expected the region to have one input per fusion operand ({len(node.inputs)}), "
            f"got {len(region.inputs)}"
        )
    if not region.nodes:
        raise VerificationError("expected a region with at least one node, got none")
    if any(is_region_op(step.op) for step in region.nodes):
        raise VerificationError("a region cannot hold a nested fusion")


def _region_block(node: Node) -> list[str]:
    """The region as typed lines over the fusion's operand names, then ``yield``."""
    region = node.region
    assert region is not None
    names = {id(inner): format_value(outer) for inner, outer in zip(region.inputs, node.inputs)}
    taken = {format_value(v) for v in node.inputs}
    prefix = "r"
    while any(name.startswith(f"%{prefix}") for name in taken):
        prefix += "_"
    lines = []
    for i, step in enumerate(region.nodes):
        for j, out in enumerate(step.outputs):
            names[id(out)] = f"%{prefix}{i}" + (f".{j}" if j else "")
        results = ", ".join(f"{names[id(v)]}: {v.type}" for v in step.outputs)
        operands = ", ".join(names[id(v)] for v in step.inputs)
        lines.append(f"      {results} = {format_name('', step.op)}({operands}){format_attrs(step.attrs)}")
    lines.append("      yield " + ", ".join(names[id(v)] for v in region.outputs))
    return lines


def _region_steps(node: Node) -> str:
    """The fusion region as ``op(%a, %b) {attrs} -> op -> op(%extra) {attrs}``; raises
    :class:`_NotAChain` for a region that only the block form can show."""
    region = node.region
    assert region is not None
    outer = {id(inner): outer for inner, outer in zip(region.inputs, node.inputs)}

    def operand(v: Value, step: Node) -> str:
        if id(v) not in outer:
            raise _NotAChain
        return format_value(outer[id(v)])

    steps = []
    previous: Node | None = None
    for step in region.nodes:
        name = format_name("", step.op)
        if previous is None:
            args = "(" + ", ".join(operand(v, step) for v in step.inputs) + ")"
        else:
            if not step.inputs or step.inputs[0] is not previous.outputs[0]:
                raise _NotAChain
            extras = step.inputs[1:]
            args = "(" + ", ".join(operand(v, step) for v in extras) + ")" if extras else ""
        steps.append(f"{name}{args}{format_attrs(step.attrs)}")
        previous = step
    assert previous is not None
    if [id(v) for v in region.outputs] != [id(v) for v in previous.outputs]:
        raise _NotAChain
    return " -> ".join(steps)
