"""Reverse-mode autodiff as a graph transformation.

The graph's first output must be a scalar loss. The pass appends the backward graph
(each node's VJP rule, from its op family file, emitted as IR) and one gradient output
per differentiated input, in order; ``graph.meta["grads"]`` maps input name -> output
index. Gradients of a value used twice are summed with an ``add`` node.
"""

from __future__ import annotations

import dataclasses

from convforge.errors import ConvforgeError
from convforge.ir.graph import Graph, Value
from convforge.passes.manager import Pass, PassFailure, register_pass


@register_pass
@dataclasses.dataclass
class Autodiff(Pass):
    """Differentiate output 0 w.r.t. ``wrt`` (input names separated by ``|``).

    By default: every float input not listed in ``graph.meta["no_grad"]``.
    """

    name = "autodiff"
    wrt: str = ""

    def run(self, graph: Graph) -> bool:
        if not graph.outputs or graph.outputs[0].type.shape != ():
            got = graph.outputs[0].type if graph.outputs else "no outputs"
            raise PassFailure(f"autodiff needs a scalar loss as output 0, got {got}")
        targets = self._targets(graph)
        grads = backward(graph, graph.outputs[0], targets)
        start = len(graph.outputs)
        graph.meta["grads"] = {v.name: start + i for i, v in enumerate(targets)}
        graph.set_outputs(graph.outputs + grads)
        return True

    def _targets(self, graph: Graph) -> list[Value]:
        if self.wrt:
            names = [n.strip() for n in self.wrt.split("|") if n.strip()]
            by_name = {v.name: v for v in graph.inputs}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise PassFailure(f"autodiff: no graph input named {', '.join(missing)}")
            return [by_name[n] for n in names]
        skip = set(graph.meta.get("no_grad", ()))
        return [v for v in graph.inputs if v.type.is_float and v.name not in skip]


def backward(graph: Graph, loss: Value, targets: list[Value]) -> list[Value]:
    """Emit the backward graph of ``loss`` and return d loss / d target for each target."""
    from convforge.ir.ops import registry

    needs = _depends_on(graph, targets)
    forward_nodes = list(graph.nodes)
    grads: dict[int, Value] = {}
    with graph.meta_scope(phase="backward"):
        grads[id(loss)] = graph.call("ones_like", loss, meta={"layer": "loss"})
        for node in reversed(forward_nodes):
            out_grads = [grads.get(id(v)) for v in node.outputs]
            if all(g is None for g in out_grads) or not any(id(v) in needs for v in node.inputs):
                continue
            if out_grads[0] is None:
                out_grads[0] = graph.call("zeros_like", node.outputs[0])
            meta = {k: node.meta[k] for k in ("layer", "loc") if k in node.meta}
            try:
                with graph.meta_scope(**meta):
                    in_grads = registry.get(node.op).run_vjp(graph, node, out_grads)
            except ConvforgeError as exc:
                raise PassFailure(f"cannot differentiate {node.describe()}: {exc}", node) from None
            if len(in_grads) != len(node.inputs):
                raise PassFailure(
                    f"the VJP of {node.op} returned {len(in_grads)} gradients for {len(node.inputs)} inputs",
                    node,
                )
            for v, g in zip(node.inputs, in_grads):
                if g is None or id(v) not in needs:
                    continue
                previous = grads.get(id(v))
                grads[id(v)] = g if previous is None else graph.call("add", previous, g)
        result = []
        for t in targets:
            g = grads.get(id(t))
            result.append(g if g is not None else graph.call("zeros_like", t))
    return result


def _depends_on(graph: Graph, targets: list[Value]) -> set[int]:
    """Ids of the values that depend on any target (the ones that carry gradients)."""
    live = {id(t) for t in targets}
    for node in graph.nodes:
        if any(id(v) in live for v in node.inputs):
            live.update(id(v) for v in node.outputs if v.type.is_float)
    return live
