"""Every user mistake raises a ConvforgeError naming the layer, what was expected and what was given."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest

import convforge as cf
from convforge import nn
from convforge.errors import (
    AttributeValueError,
    BackendError,
    ConvforgeError,
    DTypeError,
    IRParseError,
    ShapeError,
)
from convforge.ir.parser import parse
from convforge.models import lenet5


def features():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3))


def test_channel_mismatch_names_layer_path_and_type():
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Conv2d(3, 16, 5))
    with pytest.raises(ShapeError) as info:
        cf.compile(model, (None, 1, 28, 28), backend="reference")
    msg = str(info.value)
    assert "2 (Conv2d)" in msg and "3 channels" in msg and "got 6" in msg


def test_nested_layer_path():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features()

        def forward(self, x):
            return self.features(x)

    with pytest.raises(ShapeError, match=r"features\.0 \(Conv2d\).*3 channels.*got 1"):
        cf.compile(Net(), (None, 1, 16, 16), backend="reference")


def test_input_smaller_than_kernel_after_padding():
    with pytest.raises(ShapeError, match=r"3 \(Conv2d\).*smaller than the \(dilated\) kernel"):
        cf.compile(features(), (None, 3, 7, 7), backend="reference")


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: nn.Conv2d(1, 6, 0), "kernel_size must be positive"),
        (lambda: nn.Conv2d(1, 6, 3, stride=0), "stride must be positive"),
        (lambda: nn.Conv2d(1, 6, 3, dilation=-1), "dilation must be positive"),
        (lambda: nn.Conv2d(4, 6, 3, groups=3), "groups=3 must divide"),
        (lambda: nn.Conv2d(1, 6, 3, padding="full"), "padding must be 'same', 'valid'"),
        (lambda: nn.Conv2d(1, 6, 3, stride=2, padding="same"), "requires stride 1"),
        (lambda: nn.Linear(0, 3), "in_features must be a positive int"),
        (lambda: nn.MaxPool2d(0), "kernel_size"),
        (lambda: nn.Dropout(1.5), "between 0 and 1"),
    ],
)
def test_bad_layer_arguments(build, match):
    with pytest.raises(AttributeValueError, match=match):
        build()


def test_wrong_input_rank_shape_and_type():
    net = cf.compile(lenet5(), (None, 1, 28, 28), backend="reference")
    with pytest.raises(
        ShapeError, match=r"expected input of shape \[N, 1, 28, 28\] \(rank 4\), got shape \[28, 28\]"
    ):
        net(np.zeros((28, 28), np.float32))
    with pytest.raises(ShapeError, match=r"expected input of shape \[N, 1, 28, 28\], got \[2, 3, 28, 28\]"):
        net(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(DTypeError, match="numeric array, got dtype object"):
        net(np.array([[object()]], dtype=object))
    with pytest.raises(DTypeError, match="numeric array"):
        net("an image")
    with pytest.raises(ShapeError):
        net(np.zeros((0, 1, 28, 28), np.float32))


def test_float64_input_is_cast_to_the_compiled_dtype():
    model = lenet5()
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    net32 = cf.compile(model, (None, 1, 28, 28), backend="reference")
    out = net32(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, net32(x.astype(np.float32)))
    net64 = cf.compile(model, (None, 1, 28, 28), backend="reference", dtype="float64")
    out64 = net64(x)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, out, rtol=1e-4, atol=1e-5)


def test_unknown_backend_and_dtype():
    with pytest.raises(BackendError, match="unknown backend 'tpu'.*reference, numba-cpu, numba-cuda"):
        cf.compile(lenet5(), (None, 1, 28, 28), backend="tpu")
    with pytest.raises(DTypeError, match="float32"):
        cf.compile(lenet5(), (None, 1, 28, 28), backend="reference", dtype="int8")


def test_bad_input_shape_argument():
    with pytest.raises(ShapeError, match="input_shape"):
        cf.compile(lenet5(), (1, None, 28, 28), backend="reference")
    with pytest.raises(ShapeError, match="input_shape"):
        cf.compile(lenet5(), "28x28", backend="reference")


def test_unknown_op_in_ir_text():
    with pytest.raises(IRParseError, match=r"line 2.*frobnicate"):
        parse("graph @g(%x: f32[4]) -> (f32[4]) {\n  %1: f32[4] = frobnicate(%x)\n  return %1\n}")


def test_forward_using_numpy_on_a_traced_tensor():
    class Bad(nn.Module):
        def forward(self, x):
            return np.maximum(x, 0)

    with pytest.raises(ConvforgeError, match="convforge.functional"):
        cf.compile(Bad(), (None, 4), backend="reference")


def test_unregistered_constant_in_forward():
    class Bad(nn.Module):
        def forward(self, x):
            return F.add(x, np.ones((1, 4), np.float32))

    with pytest.raises(ConvforgeError, match="register constant tensors"):
        cf.compile(Bad(), (None, 4), backend="reference")


def test_eager_functional_errors():
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ShapeError, match="3 channels|expected input with"):
        F.conv2d(x, np.zeros((4, 2, 3, 3), np.float32), backend="reference")
    with pytest.raises(AttributeValueError, match="padding must be"):
        F.conv2d(x, np.zeros((4, 3, 3, 3), np.float32), padding="full", backend="reference")
    with pytest.raises(DTypeError, match="numeric"):
        F.relu(np.array(["a"]), backend="reference")
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        F.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 5]), backend="reference")
