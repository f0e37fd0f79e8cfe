"""Fold eval-mode batch norm into the preceding conv, conv_transpose2d or linear layer (inference).

``conv(x, w, b) -> batch_norm(., gamma, beta, mean, var)`` becomes
``conv(x, bn_fold_weight(w, gamma, var), bn_fold_bias(gamma, beta, mean, var, b))``. The
folded weight is computed by IR nodes from the parameters (a few thousand elements per
call), so parameters stay graph inputs and ``load_state_dict`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.ops.registry import FusionKind
from convforge.passes.manager import Pass, register_pass

#: producers whose weight keeps the output channels in dim 1 (``bn_fold_weight_transposed``)
TRANSPOSED = ("conv_transpose2d",)


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
            if (
                conv is None
                or (registry.get(conv.op).fusion is not FusionKind.OUT_FUSABLE and conv.op not in TRANSPOSED)
                or len(z.users) != 1
                or z in graph.outputs
            ):
                continue
            _, gamma, beta, mean, var = node.inputs
            eps = node.attrs["eps"]
            with graph.inserting_before(conv):
                if conv.op in TRANSPOSED:  # the weight is [Cin, Cout/groups, ...]
                    groups = conv.attrs["groups"]
                    w = graph.call(
                        "bn_fold_weight_transposed", conv.inputs[1], gamma, var, eps=eps, groups=groups,
                        meta=conv.meta,
                    )  # fmt: skip
                else:
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
