"""Common subexpression elimination: one node per (op, inputs, attrs)."""

from __future__ import annotations

import dataclasses

from convforge.ir.graph import Graph
from convforge.passes.manager import Pass, register_pass


@register_pass
@dataclasses.dataclass
class CommonSubexpressionElimination(Pass):
    """Replace a node equal to an earlier one (same op, inputs and attributes) by it."""

    name = "cse"

    def run(self, graph: Graph) -> bool:
        seen: dict[tuple, object] = {}
        changed = False
        for node in list(graph.nodes):
            # every op is a pure function of its inputs and attributes (dropout reads ``step``)
            if node.region is not None:
                continue
            key = (node.op, tuple(id(v) for v in node.inputs), node.attrs)
            earlier = seen.get(key)
            if earlier is None:
                seen[key] = node
                continue
            for old, new in zip(node.outputs, earlier.outputs):
                graph.replace_all_uses_with(old, new)
            graph.erase(node)
            changed = True
        return changed
