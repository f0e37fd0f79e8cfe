"""Activation, elementwise, shape and loss ops: forward values against torch, and their checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.ops import registry
from convforge.ir.types import TensorType


def run(op: str, *arrays: np.ndarray, **attrs):
    opdef = registry.get(op)
    normalized = opdef.normalize(attrs)
    types = [
        TensorType({np.float32: "f32", np.float64: "f64", np.int64: "i64"}[a.dtype.type], a.shape)
        for a in arrays
    ]
    (out_type, *_) = opdef.infer_types(types, normalized)
    (out, *_) = opdef.run_reference(list(arrays), normalized)
    assert out.shape == out_type.concrete(0) and out.dtype == out_type.np_dtype
    return out


CASES = [
    ("relu", {}, lambda t: TF.relu(t)),
    ("leaky_relu", {}, lambda t: TF.leaky_relu(t)),
    ("leaky_relu", {"negative_slope": 0.2}, lambda t: TF.leaky_relu(t, 0.2)),
    ("sigmoid", {}, torch.sigmoid),
    ("tanh", {}, torch.tanh),
    ("softmax", {"dim": 1}, lambda t: TF.softmax(t, 1)),
    ("softmax", {"dim": -1}, lambda t: TF.softmax(t, -1)),
    ("log_softmax", {"dim": 1}, lambda t: TF.log_softmax(t, 1)),
    ("log_softmax", {"dim": 3}, lambda t: TF.log_softmax(t, 3)),
    ("scale", {"factor": -2.5}, lambda t: t * -2.5),
    ("flatten", {}, lambda t: torch.flatten(t, 1)),
    ("flatten", {"start_dim": 2}, lambda t: torch.flatten(t, 2)),
    ("reshape", {"shape": (2, 12, 5)}, lambda t: t.reshape(2, 12, 5)),
    ("reduce_sum", {"dims": (0, 2, 3)}, lambda t: t.sum((0, 2, 3))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("op", "attrs", "ref"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_unary_ops_match_torch(op, attrs, ref, dtype, rng):
    x = (rng.standard_normal((2, 3, 4, 5)) * 4).astype(dtype)
    np.testing.assert_allclose(run(op, x, **attrs), ref(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_sigmoid_and_softmax_are_stable_for_large_inputs():
    x = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    assert np.all(np.isfinite(run("sigmoid", x)))
    np.testing.assert_allclose(run("softmax", x, dim=1), [[0, 0, 1]], atol=1e-7)
    assert np.all(np.isfinite(run("log_softmax", x, dim=1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_concat_and_losses_match_torch(dtype, rng):
    a, b = (rng.standard_normal((4, 3, 2, 2)).astype(dtype) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(run("add", a, b), (ta + tb).numpy())
    np.testing.assert_allclose(run("mul", a, b), (ta * tb).numpy())
    np.testing.assert_allclose(run("concat", a, b, a, dim=1), torch.cat([ta, tb, ta], 1).numpy())
    np.testing.assert_allclose(run("slice", a, dim=1, start=1, stop=3), ta[:, 1:3].numpy())
    logits = (rng.standard_normal((5, 7)) * 10).astype(dtype)
    labels = rng.integers(0, 7, 5)
    for reduction in ("mean", "sum"):
        want = TF.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction=reduction)
        np.testing.assert_allclose(
            run("cross_entropy", logits, labels, reduction=reduction), want.numpy(), rtol=1e-6
        )
        want = TF.mse_loss(ta, tb, reduction=reduction)
        np.testing.assert_allclose(run("mse_loss", a, b, reduction=reduction), want.numpy(), rtol=1e-6)


def test_shape_and_attribute_errors():
    f32 = TensorType("f32", ("N", 3, 4))
    with pytest.raises(ShapeError, match="do not broadcast"):
        registry.get("add").infer_types([f32, TensorType("f32", ("N", 3, 5))], {})
    with pytest.raises(DTypeError, match="one dtype"):
        registry.get("add").infer_types([f32, TensorType("f64", ("N", 3, 4))], {})
    with pytest.raises(AttributeValueError, match="out of range"):
        registry.get("softmax").infer_types([f32], registry.get("softmax").normalize({"dim": 3}))
    with pytest.raises(ShapeError, match="elements per sample"):
        registry.get("reshape").infer_types([f32], registry.get("reshape").normalize({"shape": ("N", 5)}))
    with pytest.raises(ShapeError, match="concat input 1"):
        registry.get("concat").infer_types([f32, TensorType("f32", ("N", 2, 5))], {"dim": 1})
    with pytest.raises(DTypeError, match="i64"):
        registry.get("cross_entropy").infer_types(
            [TensorType("f32", ("N", 3)), TensorType("f32", ("N",))], {"reduction": "mean"}
        )
    with pytest.raises(AttributeValueError, match="reduction"):
        registry.get("mse_loss").normalize({"reduction": "median"})
    with pytest.raises(AttributeValueError, match="unknown attribute"):
        registry.get("relu").normalize({"slope": 1})
