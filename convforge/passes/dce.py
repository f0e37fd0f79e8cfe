"""Dead code elimination: drop nodes none of whose outputs reach a graph output."""

from __future__ import annotations

import dataclasses

from convforge.ir.graph import Graph
from convforge.passes.manager import Pass, register_pass


@register_pass
@dataclasses.dataclass
class DeadCodeElimination(Pass):
    """Erase unused nodes, back to front; with ``inputs=true`` also drop unused graph inputs."""

    name = "dce"
    inputs: bool = False

    def run(self, graph: Graph) -> bool:
        changed = False
        outputs = {id(v) for v in graph.outputs}
        for node in reversed(list(graph.nodes)):
            if any(v.users or id(v) in outputs for v in node.outputs):
                continue
            graph.erase(node)
            changed = True
        if self.inputs:
            for v in list(graph.inputs):
                if not v.users and id(v) not in outputs:
                    graph.remove_input(v)
                    changed = True
        return changed
