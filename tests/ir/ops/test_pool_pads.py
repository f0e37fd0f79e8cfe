"""Pooling with ONNX's asymmetric ``pads`` (top, left, bottom, right) against onnxruntime, and
global pooling (``GlobalMaxPool``, ``GlobalAveragePool``) as the pools express it."""

from __future__ import annotations

import numpy as np
import pytest

from convforge.errors import AttributeValueError
from convforge.ir.ops import registry


def _onnx_pool(op_type: str, x: np.ndarray, **attrs) -> np.ndarray:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ours(op: str, x: np.ndarray, **attrs) -> np.ndarray:
    return registry.get(op).run_reference([x], registry.get(op).normalize(attrs))[0]


@pytest.mark.parametrize("pads", [(0, 1, 1, 0), (1, 0, 0, 1), (1, 1, 0, 1)])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])
def test_max_pool_asymmetric_pads_match_onnxruntime(pads, kernel):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    want = _onnx_pool("MaxPool", x, kernel_shape=list(kernel), strides=[2, 2], pads=list(pads))
    got = _ours("max_pool2d", x, kernel_size=kernel, stride=2, padding=pads)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("pads", [(0, 1, 1, 0), (1, 1, 0, 1)])
def test_avg_pool_asymmetric_pads_match_onnxruntime(pads, count_include_pad):
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 6)).astype(np.float32)
    want = _onnx_pool(
        "AveragePool",
        x,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=list(pads),
        count_include_pad=count_include_pad,
    )
    got = _ours(
        "avg_pool2d", x, kernel_size=3, stride=2, padding=pads, count_include_pad=bool(count_include_pad)
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_global_pools_are_pools_over_the_whole_plane():
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(_ours("max_pool2d", x, kernel_size=(5, 4)), _onnx_pool("GlobalMaxPool", x))
    np.testing.assert_allclose(
        _ours("adaptive_avg_pool2d", x, output_size=1), _onnx_pool("GlobalAveragePool", x), rtol=1e-6
    )


def test_padding_forms():
    op = registry.get("max_pool2d")
    assert op.normalize({"kernel_size": 3, "padding": (1, 0, 1, 0)})["padding"] == (1, 0)
    assert op.normalize({"kernel_size": 3, "padding": (1, 0, 0, 1)})["padding"] == (1, 0, 0, 1)
    with pytest.raises(AttributeValueError, match="at most half the kernel size"):
        op.normalize({"kernel_size": 3, "padding": (0, 0, 2, 0)})
    with pytest.raises(AttributeValueError, match="padding must be an int or a tuple of 2 ints"):
        op.normalize({"kernel_size": 3, "padding": (0, 0, 1)})
