"""conv2d / conv1d and their backward ops: attributes, shape rules, NumPy references, VJPs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convforge.backends.reference.runtime import run_graph
from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.ops import FusionKind, registry
from convforge.ir.types import TensorType

DTYPES = {"f32": np.float32, "f64": np.float64}


def conv2d(x, w, b=None, **attrs):
    op = registry.get("conv2d")
    inputs = [x, w] if b is None else [x, w, b]
    return op.run_reference(inputs, op.normalize(attrs))[0]


def conv1d(x, w, b=None, **attrs):
    op = registry.get("conv1d")
    inputs = [x, w] if b is None else [x, w, b]
    return op.run_reference(inputs, op.normalize(attrs))[0]


def types(*arrays):
    return [TensorType("f64" if a.dtype == np.float64 else "f32", a.shape) for a in arrays]


def assert_close(actual, expected, dtype):
    """rtol at the dtype's precision, atol scaled by the magnitude of the expected values."""
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype
    tol = 2e-5 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


def torch_pad_2d(padding):
    """Our (ph, pw) / (top, left, bottom, right) as F.pad's (left, right, top, bottom)."""
    if len(padding) == 2:
        padding = (*padding, *padding)
    top, left, bottom, right = padding
    return (left, right, top, bottom)


# (in_ch, out_ch, H, W, kh, kw, stride, padding, dilation, groups)
CASES_2D = [
    (3, 4, 7, 7, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (3, 4, 8, 7, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    (2, 3, 9, 8, 3, 2, (3, 2), (2, 1), (1, 1), 1),
    (4, 6, 9, 9, 3, 3, (1, 2), (1, 2, 0, 1), (1, 1), 2),
    (4, 4, 8, 8, 3, 3, (1, 1), (2, 2), (2, 2), 4),  # depthwise
    (4, 8, 10, 9, 2, 3, (2, 1), (0, 1, 1, 2), (2, 1), 4),  # depthwise, multiplier 2
    (6, 4, 8, 8, 1, 1, (2, 2), (0, 0), (1, 1), 2),
    (2, 2, 5, 6, 5, 6, (1, 1), (0, 0), (1, 1), 1),  # kernel covers the whole input
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", CASES_2D)
def test_conv2d_forward_and_backward_agree_with_torch(case, bias, dtype):
    c, o, h, w_, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(hash(case) % 2**32)
    np_dtype = DTYPES[dtype]
    x = rng.standard_normal((2, c, h, w_)).astype(np_dtype)
    w = rng.standard_normal((o, c // groups, kh, kw)).astype(np_dtype)
    b = rng.standard_normal(o).astype(np_dtype) if bias else None
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b)
    yt = F.conv2d(F.pad(xt, torch_pad_2d(padding)), wt, bt, stride=stride, dilation=dilation, groups=groups)

    op = registry.get("conv2d")
    norm = op.normalize(attrs)
    inputs = [x, w] if b is None else [x, w, b]
    (y_type,) = op.infer_types(types(*inputs), norm)
    y = op.run_reference(inputs, norm)[0]
    assert y_type.shape == tuple(yt.shape) == y.shape
    assert_close(y, yt.detach().numpy(), dtype)

    gy = rng.standard_normal(y.shape).astype(np_dtype)
    yt.backward(torch.tensor(gy))
    gx_op = registry.get("conv2d_backward_input")
    gw_op = registry.get("conv2d_backward_weight")
    gx_attrs = gx_op.normalize({**attrs, "input_size": (h, w_)})
    gw_attrs = gw_op.normalize({**attrs, "kernel_size": (kh, kw)})
    assert gx_op.infer_types(types(gy, w), gx_attrs)[0].shape == x.shape
    assert gw_op.infer_types(types(x, gy), gw_attrs)[0].shape == w.shape
    assert_close(gx_op.run_reference([gy, w], gx_attrs)[0], xt.grad.numpy(), dtype)
    assert_close(gw_op.run_reference([x, gy], gw_attrs)[0], wt.grad.numpy(), dtype)


# (in_ch, out_ch, L, k, stride, padding, dilation, groups)
CASES_1D = [
    (3, 4, 10, 3, 1, (0,), 1, 1),
    (3, 4, 11, 3, 2, (1,), 1, 1),
    (2, 2, 12, 4, 3, (2,), 2, 1),
    (4, 6, 9, 2, 1, (1, 0), 1, 2),  # "same" with an even kernel
    (4, 4, 10, 3, 2, (0, 2), 2, 4),  # depthwise, asymmetric
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", CASES_1D)
def test_conv1d_forward_and_backward_agree_with_torch(case, bias, dtype):
    c, o, length, k, stride, padding, dilation, groups = case
    rng = np.random.default_rng(hash(case) % 2**32)
    np_dtype = DTYPES[dtype]
    x = rng.standard_normal((3, c, length)).astype(np_dtype)
    w = rng.standard_normal((o, c // groups, k)).astype(np_dtype)
    b = rng.standard_normal(o).astype(np_dtype) if bias else None
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    lo, hi = padding * 2 if len(padding) == 1 else padding

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b)
    yt = F.conv1d(F.pad(xt, (lo, hi)), wt, bt, stride=stride, dilation=dilation, groups=groups)

    op = registry.get("conv1d")
    norm = op.normalize(attrs)
    inputs = [x, w] if b is None else [x, w, b]
    y = op.run_reference(inputs, norm)[0]
    assert op.infer_types(types(*inputs), norm)[0].shape == y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy(), dtype)

    gy = rng.standard_normal(y.shape).astype(np_dtype)
    yt.backward(torch.tensor(gy))
    gx = registry.get("conv1d_backward_input").run_reference([gy, w], {**norm, "input_size": (length,)})[0]
    gw = registry.get("conv1d_backward_weight").run_reference([x, gy], {**norm, "kernel_size": (k,)})[0]
    assert_close(gx, xt.grad.numpy(), dtype)
    assert_close(gw, wt.grad.numpy(), dtype)


@settings(max_examples=40, deadline=None)
@given(
    c_per_group=st.integers(1, 3),
    o_per_group=st.integers(1, 3),
    groups=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(*(st.integers(0, 2) for _ in range(4))),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    seed=st.integers(0, 2**16),
)
def test_conv2d_random_configs_agree_with_torch_in_f64(
    c_per_group, o_per_group, groups, kernel, stride, dilation, padding, extra, seed
):
    c, o = c_per_group * groups, o_per_group * groups
    top, left, bottom, right = padding
    # the smallest input the dilated kernel fits, plus some
    h = max(1, dilation[0] * (kernel[0] - 1) + 1 - top - bottom) + extra[0]
    w_ = max(1, dilation[1] * (kernel[1] - 1) + 1 - left - right) + extra[1]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w_))
    w = rng.standard_normal((o, c_per_group, *kernel))
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, stride=stride, dilation=dilation, groups=groups)
    y = conv2d(x, w, **attrs)
    assert_close(y, yt.detach().numpy(), "f64")
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx = registry.get("conv2d_backward_input").run_reference([gy, w], {**attrs, "input_size": (h, w_)})[0]
    gw = registry.get("conv2d_backward_weight").run_reference([x, gy], {**attrs, "kernel_size": kernel})[0]
    assert_close(gx, xt.grad.numpy(), "f64")
    assert_close(gw, wt.grad.numpy(), "f64")


def test_backward_input_is_zero_where_the_forward_floor_dropped_rows():
    # H = W = 8, k = 3, stride 2: the output is 3x3 and reads rows/cols 0..6 only
    rng = np.random.default_rng(1)
    w = rng.standard_normal((2, 1, 3, 3))
    gy = rng.standard_normal((1, 2, 3, 3))
    op = registry.get("conv2d_backward_input")
    gx = op.run_reference([gy, w], op.normalize({"stride": 2, "input_size": (8, 8)}))[0]
    assert gx.shape == (1, 1, 8, 8)
    assert np.all(gx[:, :, 7, :] == 0) and np.all(gx[:, :, :, 7] == 0)
    assert np.any(gx[:, :, 6, :] != 0)


def test_references_keep_the_input_dtype():
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = conv2d(x, w, np.zeros(3, np.float32), padding=1)
    assert y.dtype == np.float32
    attrs = registry.get("conv2d").normalize({"padding": 1})
    gy = np.ones_like(y)
    gx = registry.get("conv2d_backward_input").run_reference([gy, w], {**attrs, "input_size": (5, 5)})[0]
    gw = registry.get("conv2d_backward_weight").run_reference([x, gy], {**attrs, "kernel_size": (3, 3)})[0]
    assert gx.dtype == gw.dtype == np.float32


# -- seed examples --------------------------------------------------------------------------
def test_conv2d_is_cross_correlation_flipped_kernel_is_scipy_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6))
    k = rng.standard_normal((3, 2))
    y = conv2d(x[None, None], k[::-1, ::-1].copy()[None, None])[0, 0]
    np.testing.assert_allclose(y, scipy.signal.convolve2d(x, k, mode="valid"), rtol=1e-12, atol=1e-12)
    # and without the flip it is scipy's correlation
    y = conv2d(x[None, None], k[None, None])[0, 0]
    np.testing.assert_allclose(y, scipy.signal.correlate2d(x, k, mode="valid"), rtol=1e-12, atol=1e-12)


def test_conv1d_with_flipped_filter_is_numpy_convolve():
    rng = np.random.default_rng(0)
    f = rng.standard_normal(20)
    g = rng.standard_normal(5)
    y = conv1d(f[None, None], g[::-1].copy()[None, None])[0, 0]
    np.testing.assert_allclose(y, np.convolve(f, g, "valid"), rtol=1e-12, atol=1e-12)


def signal_with_two_gaps() -> np.ndarray:
    g = np.ones(30)
    g[5:8] = 0
    g[15:18] = 0
    return g


def test_1d_edge_detection_fires_exactly_at_the_four_edges():
    y = conv1d(signal_with_two_gaps()[None, None], np.array([[[-1.0, 1.0]]]))[0, 0]
    assert y.shape == (29,)
    # y[p] = g[p + 1] - g[p]: falls at 4->5 and 14->15, rises at 7->8 and 17->18
    assert list(np.flatnonzero(y)) == [4, 7, 14, 17]
    assert list(y[[4, 7, 14, 17]]) == [-1.0, 1.0, -1.0, 1.0]


def test_1d_smoothing_stays_in_range_and_reduces_total_variation():
    g = signal_with_two_gaps()
    k = np.sin(np.linspace(0.1, np.pi, 10))
    k /= k.sum()
    y = conv1d(g[None, None], k[None, None])[0, 0]
    assert y.shape == (21,)
    assert y.min() >= 0.0 and y.max() <= 1.0 + 1e-12
    assert np.abs(np.diff(y)).sum() < np.abs(np.diff(g)).sum()


def test_worked_2d_example_5x5_input_3x3_filter():
    x = np.array(
        [[0, 1, 0, 1, 1], [1, 1, 0, 1, 0], [1, 0, 1, 0, 1], [1, 1, 0, 1, 0], [0, 0, 1, 1, 0]], np.float32
    )
    k = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)
    y = conv2d(x[None, None], k[None, None])[0, 0]
    np.testing.assert_array_equal(y, [[3, 2, 4], [2, 5, 0], [4, 1, 4]])


@pytest.mark.parametrize(
    "size, kernel, padding, stride, expected",
    [
        (5, 3, 1, 1, 5),  # "same"
        (5, 3, 0, 2, 2),
        (5, 3, 0, 1, 3),  # valid
        (6, 3, 0, 2, 2),  # (6 - 3) / 2 + 1 = 2.5, floored
        (7, 2, 1, 3, 3),  # (7 - 2 + 2) / 3 + 1 = 3.33, floored
        (28, 5, 2, 1, 28),
    ],
)
def test_output_size_rule(size, kernel, padding, stride, expected):
    op = registry.get("conv2d")
    attrs = op.normalize({"padding": padding, "stride": stride})
    (y,) = op.infer_types(
        [TensorType("f32", (1, 1, size, size)), TensorType("f32", (1, 1, kernel, kernel))], attrs
    )
    assert y.shape == (1, 1, expected, expected)
    torch_shape = F.conv2d(
        torch.zeros(1, 1, size, size), torch.zeros(1, 1, kernel, kernel), padding=padding, stride=stride
    ).shape
    assert tuple(torch_shape) == y.shape


SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)


def vertical_step(n: int = 8) -> np.ndarray:
    img = np.zeros((n, n))
    img[:, n // 2 :] = 1.0
    return img


def test_sobel_filters_find_edges_of_their_orientation():
    img = vertical_step()
    gx = conv2d(img[None, None], SOBEL_X[None, None])[0, 0]
    gy = conv2d(img[None, None], SOBEL_Y[None, None])[0, 0]
    # output column j reads input columns j..j+2; the edge is between columns 3 and 4
    assert np.all(np.abs(gx[:, 2:4]) == 4.0)
    assert np.all(gx[:, [0, 1, 4, 5]] == 0.0)
    assert np.all(gy == 0.0)
    # the same on a horizontal edge, with roles swapped
    h_gx = conv2d(img.T.copy()[None, None], SOBEL_X[None, None])[0, 0]
    h_gy = conv2d(img.T.copy()[None, None], SOBEL_Y[None, None])[0, 0]
    assert np.all(h_gx == 0.0)
    assert np.all(np.abs(h_gy[2:4, :]) == 4.0)
    assert np.all(h_gy[[0, 1, 4, 5], :] == 0.0)


LAPLACE_H = np.array([[0, 1, 0], [0, -2, 0], [0, 1, 0]], np.float64)  # horizontal edges
LAPLACE_V = np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]], np.float64)  # vertical edges


@pytest.mark.parametrize("padding", [0, 1])
def test_laplacian_like_filters_valid_and_same(padding):
    vertical = vertical_step()
    horizontal = vertical.T.copy()
    mode = "valid" if padding == 0 else "same"
    for img, kernel, responds in [
        (horizontal, LAPLACE_H, True),
        (vertical, LAPLACE_H, False),
        (vertical, LAPLACE_V, True),
        (horizontal, LAPLACE_V, False),
    ]:
        y = conv2d(img[None, None], kernel[None, None], padding=padding)[0, 0]
        np.testing.assert_array_equal(y, scipy.signal.correlate2d(img, kernel, mode=mode))
        assert y.shape == ((6, 6) if padding == 0 else (8, 8))
        interior = y if padding == 0 else y[1:-1, 1:-1]
        if responds:
            # the second difference across the edge: +1 then -1, zero in the flat regions
            profile = interior[:, 0] if kernel is LAPLACE_H else interior[0, :]
            np.testing.assert_array_equal(profile, [0, 0, 1, -1, 0, 0])
        else:
            assert np.all(interior == 0.0)


def test_backward_of_3x3_input_2x2_filter_matches_the_hand_formulas():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 3))
    w = rng.standard_normal((2, 2))
    dh = rng.standard_normal((2, 2))
    (x11, x12, x13), (x21, x22, x23), (x31, x32, x33) = x
    (w11, w12), (w21, w22) = w
    (dh11, dh12), (dh21, dh22) = dh

    h = conv2d(x[None, None], w[None, None])[0, 0]
    np.testing.assert_allclose(h[0, 0], w11 * x11 + w12 * x12 + w21 * x21 + w22 * x22, rtol=1e-12)
    np.testing.assert_allclose(h[0, 1], w11 * x12 + w12 * x13 + w21 * x22 + w22 * x23, rtol=1e-12)

    attrs = registry.get("conv2d").normalize({})
    dw = registry.get("conv2d_backward_weight").run_reference(
        [x[None, None], dh[None, None]], {**attrs, "kernel_size": (2, 2)}
    )[0][0, 0]
    expected = [
        [
            dh11 * x11 + dh12 * x12 + dh21 * x21 + dh22 * x22,
            dh11 * x12 + dh12 * x13 + dh21 * x22 + dh22 * x23,
        ],
        [
            dh11 * x21 + dh12 * x22 + dh21 * x31 + dh22 * x32,
            dh11 * x22 + dh12 * x23 + dh21 * x32 + dh22 * x33,
        ],
    ]
    np.testing.assert_allclose(dw, expected, rtol=1e-12, atol=1e-12)

    dx = registry.get("conv2d_backward_input").run_reference(
        [dh[None, None], w[None, None]], {**attrs, "input_size": (3, 3)}
    )[0][0, 0]
    # dx is the full convolution of dh with w; corner entries by hand
    np.testing.assert_allclose(dx, scipy.signal.convolve2d(dh, w, mode="full"), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx[0, 0], dh11 * w11, rtol=1e-12)
    np.testing.assert_allclose(dx[1, 1], dh11 * w22 + dh12 * w21 + dh21 * w12 + dh22 * w11, rtol=1e-12)


# -- attributes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op, given, expected",
    [
        ("conv2d", {"padding": 1}, (1, 1)),
        ("conv2d", {"padding": [2, 3]}, (2, 3)),
        ("conv2d", {"padding": (1, 2, 1, 2)}, (1, 2)),
        ("conv2d", {"padding": (0, 0, 1, 1)}, (0, 0, 1, 1)),
        ("conv1d", {"padding": 2}, (2,)),
        ("conv1d", {"padding": (1, 1)}, (1,)),
        ("conv1d", {"padding": (0, 1)}, (0, 1)),
    ],
)
def test_padding_is_normalised(op, given, expected):
    assert registry.get(op).normalize(given)["padding"] == expected


def test_int_attributes_become_tuples():
    attrs = registry.get("conv2d").normalize({"stride": 2, "dilation": 3})
    assert attrs["stride"] == (2, 2) and attrs["dilation"] == (3, 3) and attrs["groups"] == 1
    attrs = registry.get("conv1d").normalize({"stride": 2})
    assert attrs["stride"] == (2,) and attrs["padding"] == (0,)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_is_rejected_in_the_ir(padding):
    with pytest.raises(AttributeValueError, match='frontend resolves "same"/"valid"') as info:
        registry.get("conv2d").normalize({"padding": padding})
    assert repr(padding) in str(info.value)


@pytest.mark.parametrize(
    "op, attrs, match",
    [
        ("conv2d", {"stride": 0}, r"stride must be >= 1, got 0"),
        ("conv2d", {"stride": (1, -1)}, r"stride must be >= 1, got \(1, -1\)"),
        ("conv2d", {"dilation": 0}, r"dilation must be >= 1, got 0"),
        ("conv2d", {"padding": -1}, r"padding must be >= 0, got \(-1, -1\)"),
        ("conv2d", {"padding": (1, 2, 3)}, r"padding must be an int, 2 ints .* or 4 ints .*got \(1, 2, 3\)"),
        ("conv2d", {"groups": 0}, r"groups must be >= 1, got 0"),
        ("conv2d", {"groups": 1.5}, r"groups must be an int, got 1.5"),
        ("conv2d", {"stride": (1, 2, 3)}, r"stride must be an int or a tuple of 2 ints"),
        ("conv1d", {"padding": (1, 2, 3)}, r"padding must be an int, 1 int .* or 2 ints \(lo, hi\)"),
        ("conv2d_backward_weight", {"kernel_size": (0, 3)}, r"kernel_size must be >= 1"),
        ("conv2d_backward_weight", {}, r"kernel_size is required"),
        ("conv2d_backward_input", {}, r"input_size is required"),
        ("conv2d", {"bogus": 1}, r"unknown attribute\(s\) bogus"),
    ],
)
def test_bad_attributes_raise(op, attrs, match):
    with pytest.raises(AttributeValueError, match=match):
        registry.get(op).normalize(attrs)


# -- shape and dtype errors ----------------------------------------------------------------
def infer(op, shapes, dtype="f32", **attrs):
    opdef = registry.get(op)
    dtypes = dtype if isinstance(dtype, (list, tuple)) else [dtype] * len(shapes)
    return opdef.infer_types([TensorType(d, s) for d, s in zip(dtypes, shapes)], opdef.normalize(attrs))


def test_batch_symbol_passes_through():
    (y,) = infer("conv2d", [("N", 1, 28, 28), (6, 1, 5, 5), (6,)], padding=2)
    assert y == TensorType("f32", ("N", 6, 28, 28))
    (y,) = infer("conv1d", [("N", 4, 10), (8, 2, 3)], "f64", groups=2, stride=2)
    assert y == TensorType("f64", ("N", 8, 4))
    (gx,) = infer("conv2d_backward_input", [("N", 6, 28, 28), (6, 1, 5, 5)], padding=2, input_size=(28, 28))
    assert gx == TensorType("f32", ("N", 1, 28, 28))
    (gw,) = infer("conv2d_backward_weight", [("N", 1, 28, 28), ("N", 6, 28, 28)], padding=2, kernel_size=5)
    assert gw == TensorType("f32", (6, 1, 5, 5))


@pytest.mark.parametrize(
    "op, shapes, attrs, error, match",
    [
        ("conv2d", [(1, 3, 8), (4, 3, 3, 3)], {}, ShapeError, r"expected input of rank 4, got rank 3"),
        ("conv2d", [(1, 3, 8, 8), (4, 3, 3)], {}, ShapeError, r"expected weight of rank 4, got rank 3"),
        ("conv1d", [(1, 3, 8, 8), (4, 3, 3)], {}, ShapeError, r"expected input of rank 3, got rank 4"),
        (
            "conv2d",
            [(1, 3, 32, 32), (16, 6, 5, 5)],
            {},
            ShapeError,
            r"expected input with 6 channels \(weight f32\[16,6,5,5\], groups=1\), got 3",
        ),
        (
            "conv2d",
            [(1, 4, 8, 8), (6, 2, 3, 3)],
            {"groups": 3},
            ShapeError,
            r"groups=3 must divide the input channels",
        ),
        (
            "conv2d",
            [(1, 4, 8, 8), (5, 2, 3, 3)],
            {"groups": 2},
            ShapeError,
            r"groups=2 must divide the output channels",
        ),
        (
            "conv2d",
            [(1, 4, 8, 8), (6, 4, 3, 3)],
            {"groups": 2},
            ShapeError,
            r"expected input with 8 channels \(weight f32\[6,4,3,3\], groups=2\), got 4",
        ),
        (
            "conv2d",
            [(1, 3, 8, 8), (4, 3, 3, 3), (3,)],
            {},
            ShapeError,
            r"expected bias of shape \[4\] \(weight f32\[4,3,3,3\]\), got f32\[3\]",
        ),
        (
            "conv2d",
            [(1, 3, 2, 8), (4, 3, 3, 3)],
            {},
            ShapeError,
            r"input height size 2 with padding \(0, 0\) is smaller than the \(dilated\) kernel extent 3",
        ),
        (
            "conv2d",
            [(1, 3, 4, 4), (4, 3, 3, 3)],
            {"dilation": 2},
            ShapeError,
            r"input height size 4 .* kernel extent 5",
        ),
        (
            "conv1d",
            [(1, 3, 2), (4, 3, 3)],
            {"padding": (0, 0)},
            ShapeError,
            r"input length size 2 with padding \(0, 0\) is smaller than the \(dilated\) kernel extent 3",
        ),
        ("conv2d", [(1, 3, 8, 8), (4, 3, 0, 3)], {}, ShapeError, r"every dimension >= 1, got f32\[4,3,0,3\]"),
        (
            "conv2d_backward_input",
            [(1, 4, 5, 5), (4, 3, 3, 3)],
            {"input_size": (8, 8)},
            ShapeError,
            r"expected output gradient of spatial size \[6, 6\]",
        ),
        (
            "conv2d_backward_input",
            [(1, 5, 6, 6), (4, 3, 3, 3)],
            {"input_size": (8, 8)},
            ShapeError,
            r"expected output gradient with 4 channels",
        ),
        (
            "conv2d_backward_weight",
            [(1, 3, 8, 8), (1, 4, 5, 5)],
            {"kernel_size": 3},
            ShapeError,
            r"expected output gradient of spatial size \[6, 6\]",
        ),
        (
            "conv2d_backward_weight",
            [(2, 3, 8, 8), (1, 4, 6, 6)],
            {"kernel_size": 3},
            ShapeError,
            r"one batch size",
        ),
    ],
)
def test_shape_errors_name_expected_and_given(op, shapes, attrs, error, match):
    with pytest.raises(error, match=match):
        infer(op, shapes, **attrs)


def test_dtype_errors():
    with pytest.raises(DTypeError, match=r"expected inputs of one dtype, got f32\[1,3,8,8\], f64\[4,3,3,3\]"):
        infer("conv2d", [(1, 3, 8, 8), (4, 3, 3, 3)], ["f32", "f64"])
    with pytest.raises(DTypeError, match=r"float dtype .* got i64\[1,3,8,8\]"):
        infer("conv2d", [(1, 3, 8, 8), (4, 3, 3, 3)], "i64")
    with pytest.raises(DTypeError, match="one dtype"):
        infer("conv1d", [(1, 3, 8), (4, 3, 3), (4,)], ["f32", "f32", "f64"])


def test_graph_errors_name_the_node():
    g = Graph("bad")
    x = g.add_input("x", TensorType("f32", ("N", 3, 32, 32)))
    w = g.add_input("w", TensorType("f32", (16, 6, 5, 5)))
    with pytest.raises(ShapeError, match=r"^conv2d: expected input with 6 channels"):
        g.call("conv2d", x, w)
    with pytest.raises(AttributeValueError, match=r"^conv2d: stride must be >= 1"):
        g.call("conv2d", x, w, stride=0)


def test_fusion_kinds():
    assert registry.get("conv2d").fusion is FusionKind.OUT_FUSABLE
    assert registry.get("conv1d").fusion is FusionKind.OUT_FUSABLE
    for name in [
        "conv2d_backward_input",
        "conv2d_backward_weight",
        "conv1d_backward_input",
        "conv1d_backward_weight",
    ]:
        assert registry.get(name).fusion is FusionKind.OPAQUE


# -- VJPs -----------------------------------------------------------------------------------
def conv_graph(op, x_shape, w_shape, bias, **attrs):
    g = Graph(op)
    x = g.add_input("x", TensorType("f64", x_shape))
    w = g.add_input("w", TensorType("f64", w_shape))
    inputs = [x, w]
    if bias:
        inputs.append(g.add_input("b", TensorType("f64", (w_shape[0],))))
    y = g.call(op, *inputs, **attrs)
    gy = g.add_input("gy", y.type)
    grads = registry.get(op).run_vjp(g, y.producer, [gy])
    return g, y, grads


@pytest.mark.parametrize("bias", [False, True])
def test_conv2d_vjp_emits_backward_ops(bias):
    attrs = dict(stride=2, padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    g, y, grads = conv_graph("conv2d", ("N", 4, 9, 10), (6, 2, 3, 2), bias, **attrs)
    assert len(grads) == (3 if bias else 2)
    gx, gw = grads[:2]
    assert gx.producer.op == "conv2d_backward_input"
    assert gx.producer.inputs[0].name == "gy" and gx.producer.inputs[1].name == "w"
    assert gx.producer.attrs["input_size"] == (9, 10)
    assert gx.type == TensorType("f64", ("N", 4, 9, 10))
    assert gw.producer.op == "conv2d_backward_weight"
    assert [v.name for v in gw.producer.inputs] == ["x", "gy"]
    assert gw.producer.attrs["kernel_size"] == (3, 2)
    assert gw.type == TensorType("f64", (6, 2, 3, 2))
    for node in (gx.producer, gw.producer):
        for key in ("stride", "padding", "dilation", "groups"):
            assert node.attrs[key] == y.producer.attrs[key]
    if bias:
        gb = grads[2]
        assert gb.producer.op == "reduce_sum" and gb.producer.attrs["dims"] == (0, 2, 3)
        assert gb.type == TensorType("f64", (6,))


@pytest.mark.parametrize(
    "op, x_shape, w_shape, attrs",
    [
        (
            "conv2d",
            (2, 4, 9, 10),
            (6, 2, 3, 2),
            dict(stride=2, padding=(1, 0, 2, 1), dilation=(1, 2), groups=2),
        ),
        ("conv1d", (2, 3, 11), (4, 3, 3), dict(stride=2, padding=(2, 1), dilation=2)),
    ],
)
def test_vjp_graph_computes_torch_gradients(op, x_shape, w_shape, attrs):
    g, y, grads = conv_graph(op, x_shape, w_shape, True, **attrs)
    g.set_outputs([y, *grads])
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    gy = rng.standard_normal(y.shape)
    y_out, gx, gw, gb = run_graph(g, {"x": x, "w": w, "b": b, "gy": gy})

    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    pad = attrs["padding"]
    if op == "conv2d":
        top, left, bottom, right = pad
        yt = F.conv2d(
            F.pad(xt, (left, right, top, bottom)),
            wt,
            bt,
            stride=attrs["stride"],
            dilation=attrs["dilation"],
            groups=attrs["groups"],
        )
    else:
        yt = F.conv1d(F.pad(xt, pad), wt, bt, stride=attrs["stride"], dilation=attrs["dilation"])
    yt.backward(torch.tensor(gy))
    assert_close(y_out, yt.detach().numpy(), "f64")
    assert_close(gx, xt.grad.numpy(), "f64")
    assert_close(gw, wt.grad.numpy(), "f64")
    assert_close(gb, bt.grad.numpy(), "f64")


def test_conv1d_vjp_uses_its_own_backward_ops():
    g, y, grads = conv_graph("conv1d", ("N", 3, 12), (5, 3, 4), True, padding=(2, 1))
    assert [v.producer.op for v in grads] == ["conv1d_backward_input", "conv1d_backward_weight", "reduce_sum"]
    assert grads[0].producer.attrs["input_size"] == (12,)
    assert grads[1].producer.attrs["kernel_size"] == (4,)
    assert grads[2].producer.attrs["dims"] == (0, 2)
