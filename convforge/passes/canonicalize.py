"""Canonicalisation: small local rewrites that make later passes' patterns simpler.

- ``flatten`` becomes ``reshape`` (one relayout op to handle);
- a ``reshape`` to the shape it already has disappears, and reshape of reshape merges;
- ``scale`` by 1 disappears; ``cast`` to the same dtype disappears.
"""

from __future__ import annotations

import dataclasses

from convforge.ir.graph import Graph, Node
from convforge.passes.manager import Pass, register_pass


@register_pass
@dataclasses.dataclass
class Canonicalize(Pass):
    name = "canonicalize"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.graph is None:
                continue
            if node.op == "flatten":
                changed |= _flatten_to_reshape(graph, node)
            elif node.op == "reshape":
                changed |= _simplify_reshape(graph, node)
            elif node.op == "scale" and node.attrs["factor"] == 1.0:
                changed |= _forward_input(graph, node)
            elif node.op == "cast" and node.attrs["dtype"] == node.inputs[0].dtype:
                changed |= _forward_input(graph, node)
        return changed


def _forward_input(graph: Graph, node: Node) -> bool:
    graph.replace_all_uses_with(node.output, node.inputs[0])
    graph.erase(node)
    return True


def _flatten_to_reshape(graph: Graph, node: Node) -> bool:
    with graph.inserting_before(node):
        new = graph.create_node("reshape", node.inputs, {"shape": node.output.shape}, node.meta)
    graph.replace_all_uses_with(node.output, new.output)
    graph.erase(node)
    return True


def _simplify_reshape(graph: Graph, node: Node) -> bool:
    src = node.inputs[0]
    if src.shape == node.output.shape:
        return _forward_input(graph, node)
    producer = src.producer
    if producer is not None and producer.op == "reshape":
        node.set_input(0, producer.inputs[0])
        if not producer.output.users and producer.output not in graph.outputs:
            graph.erase(producer)
        if node.inputs[0].shape == node.output.shape:
            return _forward_input(graph, node)
        return True
    return False
