"""numba-cpu convolution kernels (forward, fused epilogues, both backward products) against the
reference over the attribute table: stride, padding (incl. asymmetric), dilation, groups, conv1d."""

from __future__ import annotations

import numpy as np
import pytest

from convforge.backends import numba_cpu
from convforge.backends.reference import run_graph
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType

CASES = [
    # (C, O, H, W, k, stride, padding, dilation, groups)
    (3, 4, 9, 8, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 4, 9, 9, 3, (2, 2), (1, 1), (1, 1), 1),
    (2, 2, 10, 7, 3, (3, 2), (0, 2), (1, 1), 1),
    (4, 4, 9, 9, 3, (1, 1), (2, 2), (2, 2), 2),
    (4, 4, 8, 8, 3, (1, 1), (1, 1), (1, 1), 4),  # depthwise
    (3, 5, 8, 9, 2, (1, 1), (0, 0, 1, 1), (1, 1), 1),  # "same" with an even kernel
    (1, 3, 11, 11, 5, (1, 1), (2, 2), (1, 1), 1),
    (2, 3, 12, 12, 3, (2, 1), (1, 0), (2, 1), 1),
]


def _graph(op: str, types: list[TensorType], **attrs) -> Graph:
    g = Graph(op)
    values = [g.add_input(f"in{i}", t) for i, t in enumerate(types)]
    g.set_outputs([g.call(op, *values, **attrs)])
    return g


def _check(graph: Graph, rng, pipeline: str | None = None) -> None:
    inputs = {v.name: rng.standard_normal(v.type.concrete(3)).astype(np.float32) for v in graph.inputs}
    want = run_graph(graph, inputs)[0]
    got = numba_cpu.compile_graph(graph, pipeline=pipeline).run(inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_forward_and_backward(case, rng):
    c, o, h, w, k, stride, padding, dilation, groups = case
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    x = TensorType("f32", ("N", c, h, w))
    wt = TensorType("f32", (o, c // groups, k, k))
    forward = _graph("conv2d", [x, wt, TensorType("f32", (o,))], **attrs)
    _check(forward, rng)
    y = forward.outputs[0].type
    relu = _graph("conv2d", [x, wt, TensorType("f32", (o,))], **attrs)
    relu.set_outputs([relu.call("relu", relu.outputs[0])])
    _check(relu, rng)  # fused conv + bias + relu
    _check(_graph("conv2d_backward_input", [y, wt], **attrs, input_size=(h, w)), rng)
    _check(_graph("conv2d_backward_weight", [x, y], **attrs, kernel_size=(k, k)), rng)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_fused_conv_pool_with_padding(pool, rng):
    g = Graph("block")
    x = g.add_input("x", TensorType("f32", ("N", 2, 9, 9)))
    w = g.add_input("w", TensorType("f32", (3, 2, 3, 3)))
    b = g.add_input("b", TensorType("f32", (3,)))
    h = g.call("relu", g.call("conv2d", x, w, b, padding=(1, 1)))
    g.set_outputs([g.call(pool, h, kernel_size=(2, 2), stride=(2, 2), padding=(1, 1))])
    _check(g, rng)


def test_conv1d_forward_and_backward(rng):
    attrs = {"stride": (1,), "padding": (2,), "dilation": (2,), "groups": 1}
    x, w = TensorType("f32", ("N", 2, 13)), TensorType("f32", (3, 2, 3))
    forward = _graph("conv1d", [x, w], **attrs)
    _check(forward, rng)
    y = forward.outputs[0].type
    _check(_graph("conv1d_backward_input", [y, w], **attrs, input_size=(13,)), rng)
    _check(_graph("conv1d_backward_weight", [x, y], **attrs, kernel_size=(3,)), rng)
