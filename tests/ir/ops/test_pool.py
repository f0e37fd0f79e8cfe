"""Pooling ops: seed examples, PyTorch agreement (forward, backward, VJP as IR), errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convforge.backends.reference.runtime import run_graph
from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.ops.registry import FusionKind
from convforge.ir.types import TensorType

SEED_X = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 9, 1, 2], [3, 4, 5, 6]], dtype=np.float64)[None, None]
DTYPES = {"f32": np.float32, "f64": np.float64}
TOL = {"f32": dict(rtol=1e-5, atol=1e-5), "f64": dict(rtol=1e-12, atol=1e-12)}

MAX_CASES = [
    dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
    for k, s, p, d, c in itertools.product([2, 3], [1, 2, 3], [0, 1], [1, 2], [False, True])
]
AVG_CASES = [
    dict(kernel_size=k, stride=s, padding=p, ceil_mode=c, count_include_pad=i, divisor_override=v)
    for k, s, p, c, i, v in itertools.product(
        [2, 3], [1, 2, 3], [0, 1], [False, True], [True, False], [None, 5]
    )
]
ADAPTIVE_CASES = [((7, 5), (1, 1)), ((7, 5), (2, 3)), ((5, 7), (3, 3)), ((2, 3), (3, 4))]


def run(op: str, inputs: list[np.ndarray], **attrs) -> tuple[np.ndarray, ...]:
    """Normalise, infer types and run one op's reference, checking the inferred type."""
    opdef = registry.get(op)
    full = opdef.normalize(attrs)
    types = opdef.infer_types([TensorType(_ir(a.dtype), a.shape) for a in inputs], full)
    outs = opdef.run_reference(inputs, full)
    for t, o in zip(types, outs):
        assert (t.dtype, t.shape) == (_ir(o.dtype), o.shape)
    return outs


def _ir(dtype) -> str:
    return {"float32": "f32", "float64": "f64", "int64": "i64"}[np.dtype(dtype).name]


def _case_id(attrs: dict) -> str:
    return "-".join(f"{k[:3]}{v}" for k, v in attrs.items())


def vjp_run(op: str, x: np.ndarray, gy: np.ndarray, **attrs) -> np.ndarray:
    """Build ``y = op(x)``, emit its VJP as IR, run the graph and return dx."""
    g = Graph("vjp")
    xv = g.add_input("x", TensorType(_ir(x.dtype), ("N",) + x.shape[1:]))
    node = g.create_node(op, [xv], attrs)
    gyv = g.add_input("gy", node.output.type.with_shape(("N",) + gy.shape[1:]))
    (gx,) = registry.get(op).run_vjp(g, node, [gyv])
    g.set_outputs([node.output, gx])
    g.verify()
    y, dx = run_graph(g, {"x": x, "gy": gy})
    assert y.shape == gy.shape
    return dx


def torch_grad(fn, x: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(gy))
    return yt.detach().numpy(), xt.grad.numpy()


def _random(shape, dtype, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- seed examples --------------------------------------------------------------------------
def test_seed_max_pool_2x2():
    (y,) = run("max_pool2d", [SEED_X], kernel_size=2)
    np.testing.assert_array_equal(y[0, 0], [[6, 8], [9, 6]])


def test_seed_avg_pool_2x2():
    (y,) = run("avg_pool2d", [SEED_X], kernel_size=2, stride=2)
    np.testing.assert_array_equal(y[0, 0], [[3.5, 5.5], [4, 3.5]])


def test_stride_defaults_to_kernel_size_and_fusion_kinds():
    attrs = registry.get("max_pool2d").normalize({"kernel_size": 3})
    assert attrs["stride"] == (3, 3) and attrs["padding"] == (0, 0) and attrs["dilation"] == (1, 1)
    assert registry.get("avg_pool2d").normalize({"kernel_size": (2, 3), "stride": None})["stride"] == (2, 3)
    for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
        assert registry.get(op).fusion is FusionKind.POOL
    for op in ("max_pool2d_backward", "avg_pool2d_backward", "adaptive_avg_pool2d_backward"):
        assert registry.get(op).fusion is FusionKind.OPAQUE


def test_symbolic_batch_shape():
    (t,) = registry.get("max_pool2d").infer_types(
        [TensorType("f32", ("N", 6, 28, 28))], registry.get("max_pool2d").normalize({"kernel_size": 2})
    )
    assert t == TensorType("f32", ("N", 6, 14, 14))


# -- forward and backward vs PyTorch --------------------------------------------------------
@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("attrs", MAX_CASES, ids=_case_id)
def test_max_pool_matches_torch(attrs, dt):
    x = _random((2, 3, 7, 8), DTYPES[dt])
    a = dict(attrs)

    def fn(t):
        return tF.max_pool2d(t, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])

    gy = _random(fn(torch.tensor(x)).shape, DTYPES[dt], seed=1)
    y_t, gx_t = torch_grad(fn, x, gy)
    (y,) = run("max_pool2d", [x], **a)
    np.testing.assert_array_equal(y, y_t)
    (gx,) = run("max_pool2d_backward", [gy, x], **a)
    np.testing.assert_allclose(gx, gx_t, **TOL[dt])
    np.testing.assert_allclose(vjp_run("max_pool2d", x, gy, **a), gx_t, **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("attrs", AVG_CASES, ids=_case_id)
def test_avg_pool_matches_torch(attrs, dt):
    x = _random((2, 3, 7, 8), DTYPES[dt])
    a = dict(attrs)

    def fn(t):
        return tF.avg_pool2d(t, *(a[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")),
                             a["count_include_pad"], a["divisor_override"])  # fmt: skip

    gy = _random(fn(torch.tensor(x)).shape, DTYPES[dt], seed=1)
    y_t, gx_t = torch_grad(fn, x, gy)
    (y,) = run("avg_pool2d", [x], **a)
    np.testing.assert_allclose(y, y_t, **TOL[dt])
    (gx,) = run("avg_pool2d_backward", [gy], input_size=(7, 8), **a)
    np.testing.assert_allclose(gx, gx_t, **TOL[dt])
    np.testing.assert_allclose(vjp_run("avg_pool2d", x, gy, **a), gx_t, **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("size,out", ADAPTIVE_CASES)
def test_adaptive_avg_pool_matches_torch(size, out, dt):
    x = _random((2, 3) + size, DTYPES[dt])
    gy = _random((2, 3) + out, DTYPES[dt], seed=1)
    y_t, gx_t = torch_grad(lambda t: tF.adaptive_avg_pool2d(t, out), x, gy)
    (y,) = run("adaptive_avg_pool2d", [x], output_size=out)
    np.testing.assert_allclose(y, y_t, **TOL[dt])
    (gx,) = run("adaptive_avg_pool2d_backward", [gy], output_size=out, input_size=size)
    np.testing.assert_allclose(gx, gx_t, **TOL[dt])
    np.testing.assert_allclose(vjp_run("adaptive_avg_pool2d", x, gy, output_size=out), gx_t, **TOL[dt])


def test_adaptive_int_output_size_is_global_pool():
    x = _random((2, 3, 5, 4), np.float64)
    (y,) = run("adaptive_avg_pool2d", [x], output_size=1)
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)))


def test_max_pool_ties_route_gradient_to_first_max_like_torch():
    x = np.random.default_rng(3).integers(0, 3, (2, 2, 6, 6)).astype(np.float64)
    gy = _random((2, 2, 5, 5), np.float64)
    _, gx_t = torch_grad(lambda t: tF.max_pool2d(t, 2, 1), x, gy)
    (gx,) = run("max_pool2d_backward", [gy, x], kernel_size=2, stride=1)
    np.testing.assert_allclose(gx, gx_t, **TOL["f64"])  # a wrong route would be off by O(1)


def test_ceil_mode_drops_window_starting_in_right_padding():
    # H=5, k=2, s=2, p=1: ceil gives 4 windows, but the 4th would start at 6 >= 5 + 1
    x = _random((1, 1, 5, 5), np.float64)
    (y,) = run("max_pool2d", [x], kernel_size=2, stride=2, padding=1, ceil_mode=True)
    assert y.shape == tuple(tF.max_pool2d(torch.tensor(x), 2, 2, 1, ceil_mode=True).shape) == (1, 1, 3, 3)


# -- errors ---------------------------------------------------------------------------------
def _types(op: str, *types: TensorType, **attrs):
    opdef = registry.get(op)
    return opdef.infer_types(list(types), opdef.normalize(attrs))


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize(
    "attrs,pattern",
    [
        (dict(kernel_size=0), "kernel_size must be >= 1"),
        (dict(kernel_size=2, stride=0), "stride must be >= 1"),
        (dict(kernel_size=2, stride=-1), "stride must be >= 1"),
        (dict(kernel_size=3, padding=2), r"at most half the kernel size, got padding=\[2, 2\]"),
        (dict(kernel_size=(2, 2, 2)), "tuple of 2 ints"),
        (dict(), "kernel_size is required"),
        (dict(kernel_size=2, bogus=1), "unknown attribute"),
    ],
)
def test_bad_attributes(op, attrs, pattern):
    with pytest.raises(AttributeValueError, match=pattern):
        registry.get(op).normalize(attrs)


def test_bad_avg_and_adaptive_attributes():
    with pytest.raises(AttributeValueError, match="divisor_override must be None or an int >= 1, got 0"):
        registry.get("avg_pool2d").normalize({"kernel_size": 2, "divisor_override": 0})
    with pytest.raises(AttributeValueError, match="output_size must be >= 1"):
        registry.get("adaptive_avg_pool2d").normalize({"output_size": (0, 2)})
    with pytest.raises(AttributeValueError, match="input_size is required"):
        registry.get("avg_pool2d_backward").normalize({"kernel_size": 2})


@pytest.mark.parametrize("op,attrs", [("max_pool2d", {"kernel_size": 2}), ("avg_pool2d", {"kernel_size": 2}),
                                      ("adaptive_avg_pool2d", {"output_size": 2})])  # fmt: skip
def test_wrong_rank_and_dtype(op, attrs):
    with pytest.raises(ShapeError, match=r"expected input \[N,C,H,W\] of rank 4, got rank 3"):
        _types(op, TensorType("f32", (1, 4, 4)), **attrs)
    with pytest.raises(DTypeError, match="expected input of a float dtype"):
        _types(op, TensorType("i64", (1, 1, 4, 4)), **attrs)


def test_input_smaller_than_kernel():
    with pytest.raises(ShapeError, match="smaller than the"):
        _types("max_pool2d", TensorType("f32", (1, 1, 2, 8)), kernel_size=3, dilation=1)


def test_backward_gradient_shape_mismatch():
    with pytest.raises(ShapeError, match=r"expected gradient of shape \[1,1,2,2\], got f32\[1,1,3,3\]"):
        _types("max_pool2d_backward", TensorType("f32", (1, 1, 3, 3)), TensorType("f32", (1, 1, 4, 4)),
               kernel_size=2)  # fmt: skip
    with pytest.raises(ShapeError, match=r"expected gradient of shape \[1,1,2,2\]"):
        _types("avg_pool2d_backward", TensorType("f32", (1, 1, 3, 3)), kernel_size=2, input_size=(4, 4))


def test_graph_error_names_the_op():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("N", 1, 4, 4)))
    with pytest.raises(AttributeValueError, match=r"^max_pool2d: .*padding"):
        g.call("max_pool2d", x, kernel_size=2, padding=2)
