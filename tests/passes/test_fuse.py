"""The fuse pass: LeNet's chains become fusion nodes that compute the same function."""

from __future__ import annotations

import numpy as np

from convforge.backends import reference
from convforge.passes import PassManager
from tests.backends.numba_cpu.graphs import lenet, random_inputs


def test_lenet_chains_fused_and_equal():
    g = lenet("f64")
    fused = g.copy()
    PassManager.from_string("fuse,dce").run(fused)
    regions = [[n.op for n in node.region.nodes] for node in fused.nodes if node.op == "fusion"]
    conv, lin = ["conv2d", "relu", "max_pool2d"], ["linear", "relu"]
    assert regions == [conv, conv, lin, lin]
    inputs = random_inputs(g, 3)
    np.testing.assert_allclose(
        reference.run_graph(fused, inputs)[0], reference.run_graph(g, inputs)[0], rtol=1e-12
    )


def test_value_with_two_users_is_not_fused():
    g = lenet("f64")
    relu = next(n for n in g.nodes if n.op == "relu")
    g.set_outputs([*g.outputs, relu.outputs[0]])
    PassManager.from_string("fuse").run(g)
    first = next(n for n in g.nodes if n.op == "fusion")
    assert [n.op for n in first.region.nodes] == ["conv2d", "relu"]
