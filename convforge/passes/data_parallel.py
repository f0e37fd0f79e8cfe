"""Data parallelism as IR: average the gradients over the ranks before the optimizer updates.

Each rank runs the same training graph on its shard of the batch. This pass (run by
``compile_train(..., distributed=...)`` on the graph :func:`~convforge.passes.training.build_training_graph`
made) packs the gradients (the values backward computes and the ``update`` phase reads:
the updates, and gradient clipping before them) into a few flat buckets, each one
``all_reduce`` (mean), and
unpacks them for the updates: a step makes one collective per bucket, as PyTorch DDP does::

    %b0: f32[61706] = concat(%g7.r, %g6.r, ...) {dim=0}   # bucket 0: 61706 elements
    %b0.avg: f32[61706] = all_reduce(%b0) {reduce="mean", bucket=0}

Buckets follow the order backward produces the gradients (the last layer first); each
bucket's ``all_reduce`` sits right after its last gradient is computed, so it can run
while backward continues where the executor overlaps (the generated drivers here run
nodes in order: the collective then blocks). The loss joins the first bucket, so the
reported loss is the mean over ranks at no extra collective. ``dropout`` masks are keyed
by ``rank`` (:func:`convforge.ir.ops.rng.rank_seed`): different per rank, reproducible,
and rank 0 draws what a single process draws.
"""

from __future__ import annotations

import dataclasses

from convforge.ir.graph import Graph, Node, Value
from convforge.ir.ops import registry, rng
from convforge.passes.manager import Pass, register_pass

#: ops whose mask is drawn from the counter-based RNG (``seed`` attribute)
RANDOM_OPS = ("dropout", "dropout_backward")


@register_pass
@dataclasses.dataclass
class DataParallel(Pass):
    """Bucketed gradient ``all_reduce`` before the updates; ``bucket_bytes``: the size a
    bucket grows to (DDP's ``bucket_cap_mb``), ``rank``: keys the dropout masks."""

    name = "data-parallel"
    bucket_bytes: int = 1 << 20
    rank: int = 0

    def run(self, graph: Graph) -> bool:
        changed = self._key_masks(graph)
        updates = [n for n in graph.nodes if n.meta.get("phase") == "update"]
        # the gradients: what backward computed and the update phase (clipping included) reads
        grads = _unique(
            v
            for n in updates
            for v in n.inputs
            if v.producer is not None and v.producer.meta.get("phase") == "backward"
        )
        if not grads:
            return changed
        position = {id(n): i for i, n in enumerate(graph.nodes)}
        grads.sort(key=lambda v: position[id(v.producer)])  # the order backward computes them
        loss = graph.outputs[0]
        buckets = self._buckets([loss, *grads] if loss.producer is not None else grads)
        # before the whole update phase: gradient clipping, as in torch, sees averaged gradients
        first_update = min(updates, key=lambda n: position[id(n)])
        for index, bucket in enumerate(buckets):
            _reduce_bucket(graph, index, bucket, first_update)
        return True

    def _key_masks(self, graph: Graph) -> bool:
        if self.rank == 0:
            return False
        keyed = False
        for node in graph.nodes:
            if node.op in RANDOM_OPS:
                seed = rng.rank_seed(int(node.attrs["seed"]), self.rank)
                node.attrs = registry.get(node.op).normalize({**node.attrs, "seed": seed})
                keyed = True
        return keyed

    def _buckets(self, values: list[Value]) -> list[list[Value]]:
        """Consecutive runs of one dtype of at most ``bucket_bytes`` (a bigger tensor alone)."""
        buckets: list[list[Value]] = []
        size = 0
        for v in values:
            nbytes = v.type.numel(1) * v.type.np_dtype.itemsize
            current = buckets[-1] if buckets else None
            if current is None or current[0].dtype != v.dtype or size + nbytes > self.bucket_bytes:
                buckets.append([v])
                size = nbytes
            else:
                current.append(v)
                size += nbytes
        return buckets


def _unique(values) -> list[Value]:
    seen: dict[int, Value] = {}
    for v in values:
        seen.setdefault(id(v), v)
    return list(seen.values())


def _reduce_bucket(graph: Graph, index: int, bucket: list[Value], first_update: Node) -> None:
    """``concat`` the flattened values after the last one is ready, ``all_reduce`` the flat
    buffer there, and give each user of a value its slice of the result instead."""
    ready = max(bucket, key=lambda v: graph.nodes.index(v.producer)).producer
    after = graph.nodes[graph.nodes.index(ready) + 1]
    meta = {"phase": "collective", "layer": f"bucket {index}"}
    with graph.inserting_before(after), graph.meta_scope(**meta):
        flat = [graph.call("reshape", v, shape=(v.type.numel(1),)) for v in bucket]
        packed = flat[0] if len(flat) == 1 else graph.call("concat", *flat, dim=0)
        reduced = graph.call("all_reduce", packed, reduce="mean", bucket=index)
    with graph.inserting_before(first_update), graph.meta_scope(**meta):
        start = 0
        for v in bucket:
            n = v.type.numel(1)
            part = (
                reduced
                if len(bucket) == 1
                else graph.call("slice", reduced, dim=0, start=start, stop=start + n)
            )
            avg = graph.call("reshape", part, shape=v.shape)
            start += n
            _redirect(graph, v, avg)


def _redirect(graph: Graph, old: Value, new: Value) -> None:
    """The update nodes reading ``old``, and the graph outputs, read ``new`` instead (backward
    nodes reading the loss keep the local value: they run before the collective)."""
    for user in list(old.users):
        if user.meta.get("phase") != "update":
            continue
        for i, v in enumerate(user.inputs):
            if v is old:
                user.set_input(i, new)
    graph.set_outputs([new if v is old else v for v in graph.outputs])
