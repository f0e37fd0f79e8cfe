"""The memory plan never gives one buffer to two live values (random graphs, hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convforge.errors import VerificationError
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T
from convforge.passes.memory_plan import alias_root, plan_memory
from tests.backends.numba_cpu.graphs import lenet


@st.composite
def random_graphs(draw):
    g = Graph("r")
    width = draw(st.integers(1, 4))
    values = [g.add_input(f"x{i}", T("f32", ("N", width))) for i in range(draw(st.integers(1, 3)))]
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["relu", "add", "mul", "reshape"]))
        a = draw(st.sampled_from(values))
        if kind in ("add", "mul"):
            values.append(g.call(kind, a, draw(st.sampled_from(values))))
        elif kind == "reshape":
            values.append(g.call("reshape", a, shape=("N", width)))
        else:
            values.append(g.call("relu", a))
    outs = draw(st.lists(st.sampled_from(values[len(g.inputs) :] or values), min_size=1, max_size=3))
    g.set_outputs(outs)
    return g


def _live_ranges_disjoint(graph, plan):
    """Independent check: recompute every value's [def, last use] and compare buffer sharing."""
    pos = {id(n): i for i, n in enumerate(graph.nodes)}
    last = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last[id(alias_root(v))] = i
    for v in graph.outputs:
        if alias_root(v) is not v:
            last[id(alias_root(v))] = len(graph.nodes)
    spans = {v.name: (pos[id(v.producer)], max(last.get(id(v), 0), pos[id(v.producer)])) for v in plan.values}
    for a in plan.values:
        for b in plan.values:
            if a is not b and plan.slot_of[a.name] == plan.slot_of[b.name]:
                (s1, e1), (s2, e2) = spans[a.name], spans[b.name]
                assert e1 < s2 or e2 < s1, (a.name, b.name)


@settings(max_examples=60, deadline=None)
@given(random_graphs(), st.integers(1, 9))
def test_plan_never_shares_a_live_buffer(graph, batch):
    plan = plan_memory(graph, batch)
    plan.verify()
    _live_ranges_disjoint(graph, plan)
    assert plan.peak_bytes <= plan.naive_bytes


def test_verifier_catches_an_overlap():
    g = Graph("g")
    x = g.add_input("x", T("f32", ("N", 4)))
    a = g.call("relu", x)
    b = g.call("relu", a)
    g.set_outputs([g.call("add", a, b)])
    plan = plan_memory(g, 2)
    plan.slot_of[b.name] = plan.slot_of[a.name]
    with pytest.raises(VerificationError, match="at once"):
        plan.verify()


def test_lenet_plan_is_printable_and_smaller():
    plan = plan_memory(lenet(), 64)
    text = str(plan)
    assert "peak" in text and "one-buffer-per-value" in text
    assert plan.peak_bytes < plan.naive_bytes
