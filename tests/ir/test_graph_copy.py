"""``Graph.copy()``: structural, keeps meta and fusion regions, independent of the original."""

from __future__ import annotations

import pytest

from convforge.errors import VerificationError
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.types import TensorType


def t(dtype: str, *shape) -> TensorType:
    return TensorType(dtype, shape)


class _Plan:
    """An object in meta that is not a container (like a memory plan): shared, not copied."""


def _graph() -> Graph:
    """conv -> fusion(relu -> leaky_relu) -> softmax, with node meta and graph meta."""
    g = Graph("copied")
    x = g.add_input("x", t("f32", "N", 1, 8, 8))
    w = g.add_input("0.weight", t("f32", 2, 1, 3, 3))
    y = g.call("conv2d", x, w, padding=1, meta={"layer": "0 (Conv2d)", "loc": "m.py:1"})
    region = Graph("region")
    rx = region.add_input("y", y.type)
    r1 = region.call("relu", rx, meta={"layer": "1 (ReLU)"})
    region.set_outputs([region.call("leaky_relu", r1, negative_slope=0.1)])
    fused = g.create_node(
        "fusion",
        [y],
        {"tile": (8, 8)},
        {"layer": "block", "fused_from": ["relu", "leaky_relu"]},
        region=region,
    )
    s = g.call("softmax", fused.output, dim=1)
    g.set_outputs([s, y])
    g.meta.update({"no_grad": ["x"], "grads": {"0.weight": 2}, "plan": _Plan()})
    return g


def test_copy_prints_the_same_and_verifies():
    g = _graph()
    clone = g.copy()
    assert str(clone) == str(g)
    clone.verify()
    assert clone.copy().verify() is None


def test_copy_keeps_node_and_graph_meta():
    g = _graph()
    clone = g.copy()
    assert [n.meta for n in clone.nodes] == [n.meta for n in g.nodes]
    assert clone.nodes[1].meta["fused_from"] == ["relu", "leaky_relu"]
    assert clone.meta["no_grad"] == ["x"] and clone.meta["grads"] == {"0.weight": 2}
    assert clone.meta["plan"] is g.meta["plan"]  # a non-container object is shared


def test_copy_keeps_fusion_regions():
    g = _graph()
    clone = g.copy()
    old, new = g.nodes[1], clone.nodes[1]
    assert new.op == "fusion" and new.attrs == {"tile": (8, 8)}
    assert new.region is not None and new.region is not old.region
    assert [n.op for n in new.region.nodes] == ["relu", "leaky_relu"]
    assert [v.name for v in new.region.values()] == [v.name for v in old.region.values()]
    assert new.region.nodes[0].meta == {"layer": "1 (ReLU)"}
    assert new.region.outputs[0] is new.region.nodes[-1].output
    assert [v.type for v in new.outputs] == [v.type for v in old.outputs]


def test_copy_is_independent_of_the_original():
    g = _graph()
    text = str(g)
    clone = g.copy()
    originals = {id(v) for v in g.values()} | {id(n) for n in g.nodes}
    assert not originals & ({id(v) for v in clone.values()} | {id(n) for n in clone.nodes})
    assert all(n.graph is clone for n in clone.nodes)
    assert all(u.graph is clone for v in clone.values() for u in v.users)

    clone.meta["no_grad"].append("0.weight")
    clone.meta["grads"]["x"] = 3
    clone.nodes[1].meta["fused_from"].append("softmax")
    clone.nodes[0].meta["layer"] = "changed"
    clone.nodes[1].region.nodes[0].meta["layer"] = "changed"
    assert g.meta["no_grad"] == ["x"] and g.meta["grads"] == {"0.weight": 2}
    assert g.nodes[1].meta["fused_from"] == ["relu", "leaky_relu"]
    assert g.nodes[0].meta["layer"] == "0 (Conv2d)"
    assert g.nodes[1].region.nodes[0].meta["layer"] == "1 (ReLU)"

    clone.set_outputs([clone.call("relu", clone.outputs[1])])
    clone.erase(clone.nodes[2])  # the softmax, no longer used
    assert str(g) == text
    assert [n.op for n in g.nodes] == ["conv2d", "fusion", "softmax"]
    assert all(len(v.users) == 1 for v in g.nodes[0].outputs + g.nodes[1].outputs)
    g.verify()
    clone.verify()


def test_copy_runs_no_shape_rule_nor_attribute_check(monkeypatch):
    g = _graph()

    def refuse(*args, **kwargs):
        raise AssertionError("Graph.copy() must not re-run shape rules or attribute checks")

    monkeypatch.setattr(registry.Op, "infer_types", refuse)
    monkeypatch.setattr(registry.Op, "result_types", refuse)
    monkeypatch.setattr(registry.Op, "normalize", refuse)
    clone = g.copy()
    assert len(clone.nodes) == len(g.nodes)


def test_copy_names_fresh_values_like_a_new_graph():
    g = _graph()
    clone = g.copy()
    taken = {v.name for v in clone.values()}
    fresh = clone.fresh_name()
    assert fresh not in taken
    with pytest.raises(VerificationError, match="already has an input named %x"):
        clone.add_input("x", t("f32", 1))


def test_copy_rejects_a_use_before_definition():
    g = Graph("bad")
    x = g.add_input("x", t("f32", 4))
    y = g.call("relu", x)
    z = g.call("relu", y)
    g.set_outputs([z])
    g.nodes.reverse()  # %2 now uses %1 before it is defined
    with pytest.raises(VerificationError, match="uses %1, which is not defined before it"):
        g.copy()
