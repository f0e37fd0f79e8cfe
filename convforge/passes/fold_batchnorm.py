"""Fold eval-mode batch norm into the preceding conv or linear layer (inference).

``conv(x, w, b) -> batch_norm(., gamma, beta, mean, var)`` becomes
``conv(x, bn_fold_weight(w, gamma, var), bn_fold_bias(gamma, beta, mean, var, b))``. The
folded weight is computed by IR nodes from the parameters (a few thousand elements per
call), so parameters stay graph inputs and ``load_state_dict`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from convforge.ir.graph import Graph
from convforge.passes.manager import Pass, register_pass

PRODUCERS = ("conv2d", "conv1d", "linear")


@register_pass
@dataclass
class FoldBatchnorm(Pass):
    name: ClassVar[str] = "fold-batchnorm"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.graph is None or node.op != "batch_norm":
                continue
            z = node.inputs[0]
            conv = z.producer
            if conv is None or conv.op not in PRODUCERS or len(z.users) != 1 or z in graph.outputs:
                continue
            _, gamma, beta, mean, var = node.inputs
            eps = node.attrs["eps"]
            with graph.inserting_before(conv):
                w = graph.call("bn_fold_weight", conv.inputs[1], gamma, var, eps=eps, meta=conv.meta)
                b = graph.call(
                    "bn_fold_bias", gamma, beta, mean, var, *conv.inputs[2:3], eps=eps, meta=conv.meta
                )
                folded = graph.create_node(
                    conv.op,
                    [conv.inputs[0], w, b],
                    dict(conv.attrs),
                    {**conv.meta, "fused_from": [conv.op, "batch_norm"]},
                )
            graph.replace_all_uses_with(node.outputs[0], folded.outputs[0])
            graph.erase(node)
            graph.erase(conv)
            changed = True
        return changed
