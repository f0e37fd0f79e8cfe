"""Liveness-based buffer assignment: values whose lifetimes do not overlap share a buffer.

A value lives from the node that writes it to the last node that reads it (or a view of
it: ``flatten`` and ``reshape`` outputs alias their input's buffer, so they extend its
life). Graph inputs belong to the caller and graph outputs are fresh arrays handed to the
user, so neither is planned. A kernel never writes a buffer it reads in the same step,
because a value's buffer is only reused by values defined strictly after its last use.

>>> plan = plan_memory(graph, batch=64)      # doctest: +SKIP
>>> print(plan)                              # peak bytes vs one buffer per value
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from convforge.errors import VerificationError
from convforge.ir.graph import Graph, Value
from convforge.passes.manager import Pass, register_pass

#: ops whose output is a view of their first input (no buffer of its own)
ALIAS_OPS = ("flatten", "reshape")


@dataclass
class MemoryPlan:
    """Which buffer (slot) holds each planned value, and for how long it is live."""

    batch: int
    values: list[Value] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    interval: dict[str, tuple[int, int]] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)
    slot_bytes: list[int] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.slot_bytes)

    @property
    def naive_bytes(self) -> int:
        """What one buffer per value would take."""
        return sum(self.nbytes.values())

    def __str__(self) -> str:
        lines = [
            f"memory plan (batch {self.batch}): {len(self.values)} values in {len(self.slot_bytes)} buffers, "
            f"peak {self.peak_bytes:,} bytes vs {self.naive_bytes:,} bytes one-buffer-per-value "
            f"({self.peak_bytes / max(self.naive_bytes, 1):.0%})"
        ]
        for slot, size in enumerate(self.slot_bytes):
            users = [
                f"%{v.name}@[{self.interval[v.name][0]},{self.interval[v.name][1]}]"
                for v in self.values
                if self.slot_of[v.name] == slot
            ]
            lines.append(f"  buffer {slot}: {size:,} bytes <- {', '.join(users)}")
        return "\n".join(lines)

    def verify(self) -> None:
        """Raise VerificationError if a buffer holds two live values at once or is too small."""
        by_slot: dict[int, list[Value]] = {}
        for v in self.values:
            slot = self.slot_of[v.name]
            if self.nbytes[v.name] > self.slot_bytes[slot]:
                raise VerificationError(
                    f"memory plan: %{v.name} needs {self.nbytes[v.name]} bytes, buffer {slot} has "
                    f"{self.slot_bytes[slot]}"
                )
            by_slot.setdefault(slot, []).append(v)
        for slot, vals in by_slot.items():
            spans = sorted((self.interval[v.name], v.name) for v in vals)
            for ((_, end), a), ((start, _), b) in zip(spans, spans[1:]):
                if start <= end:
                    raise VerificationError(
                        f"memory plan: buffer {slot} holds %{a} (live until node {end}) and %{b} "
                        f"(written at node {start}) at once"
                    )


def alias_root(value: Value) -> Value:
    """The value whose buffer ``value`` lives in (itself unless it is a view)."""
    while value.producer is not None and value.producer.op in ALIAS_OPS:
        value = value.producer.inputs[0]
    return value


def plan_memory(graph: Graph, batch: int = 1) -> MemoryPlan:
    """Assign buffers for ``graph`` at batch size ``batch`` (greedy best fit over lifetimes)."""
    index = {id(node): i for i, node in enumerate(graph.nodes)}
    end = len(graph.nodes)
    outputs = {id(v) for v in graph.outputs}
    last_use: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            root = alias_root(v)
            last_use[id(root)] = max(last_use.get(id(root), -1), i)
    for v in graph.outputs:  # a view of a planned value that is an output: copied at the very end
        root = alias_root(v)
        if root is not v:
            last_use[id(root)] = end

    plan = MemoryPlan(batch)
    free: list[int] = []  # slots free for reuse
    releases: dict[int, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        # buffers whose last reader ran before this node are free again
        for slot in releases.pop(i - 1, []):
            free.append(slot)
        if node.op in ALIAS_OPS:
            continue
        for v in node.outputs:
            if id(v) in outputs:
                continue
            size = v.type.nbytes(batch)
            start = index[id(node)]
            stop = max(last_use.get(id(v), start), start)
            slot = _take(free, plan.slot_bytes, size)
            plan.values.append(v)
            plan.slot_of[v.name] = slot
            plan.interval[v.name] = (start, stop)
            plan.nbytes[v.name] = size
            releases.setdefault(stop, []).append(slot)
    return plan


def _take(free: list[int], slot_bytes: list[int], size: int) -> int:
    """Best fit among free slots; else grow the largest free one; else a new slot."""
    fitting = [s for s in free if slot_bytes[s] >= size]
    if fitting:
        slot = min(fitting, key=lambda s: slot_bytes[s])
    elif free:
        slot = max(free, key=lambda s: slot_bytes[s])
        slot_bytes[slot] = size
    else:
        slot_bytes.append(size)
        return len(slot_bytes) - 1
    free.remove(slot)
    return slot


@register_pass
@dataclass
class MemoryPlanPass(Pass):
    """Plan buffers at ``batch`` and keep the plan in ``graph.meta["memory_plan"]`` (printable)."""

    name: ClassVar[str] = "memory-plan"
    batch: int = 1

    def run(self, graph: Graph) -> bool:
        plan = plan_memory(graph, self.batch)
        plan.verify()
        graph.meta["memory_plan"] = plan
        return False
