"""``build_training_graph``: loss, autodiff and update nodes appended to a forward graph.

Plain graphs, the reference interpreter and NumPy only: no frontend, no Numba backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from convforge.backends.reference import run_graph
from convforge.errors import ConvforgeError
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType
from convforge.passes.training import Role, UpdateRule, build_training_graph, state_key

SGD = UpdateRule("sgd_update", {"lr": 0.5, "momentum": 0.9}, ("momentum_buffer",))


def _linear_graph() -> Graph:
    g = Graph("lin")
    x = g.add_input("x", TensorType("f64", ("N", 3)))
    w = g.add_input("w", TensorType("f64", (4, 3)))
    b = g.add_input("b", TensorType("f64", (4,)))
    g.set_outputs([g.call("linear", x, w, b)])
    g.meta["no_grad"] = ["target", "step"]
    return g


def _arrays(rng):
    return {
        "x": rng.standard_normal((5, 3)),
        "w": rng.standard_normal((4, 3)),
        "b": rng.standard_normal(4),
        "target": np.array([0, 3, 1, 2, 3]),
    }


def _ce_grads(a):
    """NumPy: the mean cross-entropy of x @ w.T + b and its gradients."""
    z = a["x"] @ a["w"].T + a["b"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(z)
    loss = -np.log(p[np.arange(n), a["target"]]).mean()
    dz = p.copy()
    dz[np.arange(n), a["target"]] -= 1
    dz /= n
    return loss, {"w": dz.T @ a["x"], "b": dz.sum(0), "x": dz @ a["w"]}


def test_gradient_program(rng):
    graph, roles = build_training_graph(
        _linear_graph(), loss="cross_entropy", params=["w", "b"], grads_of=["x"]
    )
    assert roles == [Role("loss", ""), Role("grad", "w"), Role("grad", "b"), Role("grad", "x")]
    assert roles[1] == ("grad", "w")  # roles are plain pairs too
    assert graph.input("target").type == TensorType("i64", ("N",))
    assert graph.nodes[0].op == "linear" and any(n.op == "cross_entropy" for n in graph.nodes)
    graph.verify()
    a = _arrays(rng)
    outs = run_graph(graph, a)
    loss, grads = _ce_grads(a)
    np.testing.assert_allclose(outs[0], loss, rtol=1e-12)
    for (_, name), got in zip(roles[1:], outs[1:]):
        np.testing.assert_allclose(got, grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_update_program_writes_back_parameters_and_state(rng):
    graph, roles = build_training_graph(
        _linear_graph(), loss="cross_entropy", params=["w", "b"], optimizer=SGD
    )
    names = [v.name for v in graph.inputs]
    assert {"target", "step", state_key("w", "momentum_buffer"), "optim.b.momentum_buffer"} <= set(names)
    assert roles == [
        Role("loss", ""),
        Role("store", "w"),
        Role("store", "optim.w.momentum_buffer"),
        Role("store", "b"),
        Role("store", "optim.b.momentum_buffer"),
    ]
    updates = [n for n in graph.nodes if n.op == "sgd_update"]
    assert [n.meta["layer"] for n in updates] == ["optimizer (w)", "optimizer (b)"]
    assert all(n.meta["phase"] == "update" for n in updates)
    assert updates[0].attrs["lr"] == 0.5
    graph.verify()
    a = _arrays(rng)
    a |= {
        "step": np.asarray(1, np.int64),
        "optim.w.momentum_buffer": np.zeros((4, 3)),
        "optim.b.momentum_buffer": np.zeros(4),
    }
    outs = run_graph(graph, a)
    loss, grads = _ce_grads(a)
    np.testing.assert_allclose(outs[0], loss, rtol=1e-12)
    np.testing.assert_allclose(outs[1], a["w"] - 0.5 * grads["w"], rtol=1e-10)
    np.testing.assert_allclose(outs[2], grads["w"], rtol=1e-10)  # first momentum buffer = gradient
    np.testing.assert_allclose(outs[3], a["b"] - 0.5 * grads["b"], rtol=1e-10)


def test_mse_loss_and_state_updates(rng):
    g = _linear_graph()
    extra = g.outputs[0]  # a forward value written back, as batch norm's running statistics are
    graph, roles = build_training_graph(
        g, loss="mse", params=["w"], optimizer=SGD, state_updates={"stat": extra}, simplify=""
    )
    assert graph.input("target").type == TensorType("f64", ("N", 4))
    assert any(n.op == "mse_loss" for n in graph.nodes)
    assert roles[-1] == Role("store", "stat") and graph.outputs[-1] is extra
    assert "b" in [v.name for v in graph.inputs] and "optim.b.momentum_buffer" not in [
        v.name for v in graph.inputs
    ]


def test_unknown_loss_is_an_error():
    with pytest.raises(ConvforgeError, match="loss must be one of cross_entropy, mse, got 'hinge'"):
        build_training_graph(_linear_graph(), loss="hinge", params=["w"])
