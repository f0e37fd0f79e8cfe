"""numba-cuda lowers a ``fusion`` node by its typed pattern (``convforge.ir.ops.fusion``).

ForwardChain and PoolBackward regions each become one launch; a ConvBackward region (the
numba-cpu fused conv backward) has no CUDA kernel, and the CUDA training pipeline never
builds one; a region that is no pattern at all is a hard error naming the node and region.
"""

from __future__ import annotations

import numpy as np
import pytest

from convforge.backends import numba_cuda
from convforge.errors import BackendError, FusionError
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.ops.fusion import ConvBackward, ForwardChain, PoolBackward, pattern
from convforge.ir.types import TensorType as T


def _conv_relu_pool_and_backward() -> Graph:
    """conv -> relu -> max pool, and the pool's and conv's gradients from a pooled gradient."""
    g = Graph("train")
    x = g.add_input("x", T("f32", ("N", 1, 6, 6)))
    w = g.add_input("w", T("f32", (2, 1, 3, 3)))
    b = g.add_input("b", T("f32", (2,)))
    gp = g.add_input("gp", T("f32", ("N", 2, 3, 3)))
    a = g.call("relu", g.call("conv2d", x, w, b, padding=(1, 1)))
    pooled = g.call("max_pool2d", a, kernel_size=(2, 2))
    ga = g.call("relu_backward", g.call("max_pool2d_backward", gp, a, kernel_size=(2, 2)), a)
    gw = g.call("conv2d_backward_weight", x, ga, padding=(1, 1), kernel_size=(3, 3))
    g.set_outputs([pooled, gw, g.call("reduce_sum", ga, dims=(0, 2, 3))])
    return g


def _one_fusion(ins: dict[str, T], build) -> Graph:
    """A graph of one ``fusion`` node whose region is ``build(region, *inputs)``."""
    region = Graph("region")
    region.set_outputs([build(region, *(region.add_input(n, t) for n, t in ins.items()))])
    g = Graph("fused")
    outer = [g.add_input(n, t) for n, t in ins.items()]
    node = g.create_node(
        "fusion", outer, {}, {}, output_types=[v.type for v in region.outputs], region=region
    )
    g.set_outputs(list(node.outputs))
    return g


def test_training_pipeline_fuses_forward_and_pool_backward_never_conv_backward(cu, rng):
    graph = _conv_relu_pool_and_backward()
    exe = numba_cuda.compile_graph(graph, training=True)
    kinds = [type(pattern(n)) for n in exe.graph.nodes if n.op == "fusion"]
    assert kinds == [ForwardChain, PoolBackward]
    assert ConvBackward not in kinds and "fuse{training=true}" in numba_cuda.PIPELINE_TRAINING
    assert "conv_backward=true" not in numba_cuda.PIPELINE_TRAINING
    cu.check(graph, cu.inputs(graph, rng), pipeline=None, training=True)


def test_conv_backward_region_is_a_backend_error_naming_op_and_region():
    graph = _conv_relu_pool_and_backward()
    with pytest.raises(BackendError, match="fusion") as err:
        numba_cuda.compile_graph(graph, pipeline="fuse{training=true,conv_backward=true},dce")
    assert "relu_backward -> max_pool2d_backward_argmax -> conv2d_backward_weight -> reduce_sum" in str(
        err.value
    )
    assert "ConvBackward" in str(err.value)


def test_region_that_is_no_pattern_is_a_hard_error():
    graph = _one_fusion({"x": T("f32", ("N", 3))}, lambda r, x: r.call("tanh", r.call("relu", x)))
    with pytest.raises(FusionError, match=r"fusion: the region relu -> tanh is not a fusion pattern"):
        numba_cuda.compile_graph(graph, pipeline="")


def test_pool_backward_without_activation(cu, rng):
    window = {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "input_size": (6, 6)}
    graph = _one_fusion(
        {"gy": T("f32", ("N", 1, 3, 3)), "am": T("u8", ("N", 1, 3, 3))},
        lambda r, gy, am: r.call("max_pool2d_backward_argmax", gy, am, **window),
    )
    (node,) = graph.nodes
    assert pattern(node) == PoolBackward(None, node.region.nodes[0])
    arrays = cu.inputs(graph, rng)
    arrays["am"] = rng.integers(0, 9, size=(2, 1, 3, 3)).astype(np.uint8)
    cu.check(graph, arrays)


@pytest.mark.parametrize("act", sorted(n for n, op in registry.all_ops().items() if op.monotone))
def test_every_monotone_activation_fuses_into_conv_and_pool_backward(cu, rng, act):
    """The epilogue and the derivative both come from the activation's declared expressions."""
    g = Graph(act)
    x = g.add_input("x", T("f32", ("N", 1, 6, 6)))
    w = g.add_input("w", T("f32", (2, 1, 3, 3)))
    gp = g.add_input("gp", T("f32", ("N", 2, 3, 3)))
    a = g.call(act, g.call("conv2d", x, w, padding=(1, 1)))
    pooled = g.call("max_pool2d", a, kernel_size=(2, 2))
    ga = g.call(registry.get(act).backward, g.call("max_pool2d_backward", gp, a, kernel_size=(2, 2)), a)
    g.set_outputs([pooled, ga])
    exe = numba_cuda.compile_graph(g, training=True)
    assert [type(pattern(n)) for n in exe.graph.nodes if n.op == "fusion"] == [ForwardChain, PoolBackward]
    arrays = cu.inputs(g, rng)
    arrays["x"] *= 4.0  # spread the conv outputs over every branch of the activation
    cu.check(g, arrays, pipeline=None, training=True)
