"""The pointwise activations of PyTorch's set: references against torch (forward and the
backward ops), stability at extreme inputs, attribute checks, and which value each backward
op reads (the output for the monotone ones, so a max pool can keep its argmax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from convforge.errors import AttributeValueError
from convforge.ir.ops import registry

#: (op, attributes, torch function)
CASES = [
    ("elu", {}, lambda t: TF.elu(t)),
    ("elu", {"alpha": 0.3}, lambda t: TF.elu(t, 0.3)),
    ("elu", {"alpha": -0.7}, lambda t: TF.elu(t, -0.7)),
    ("hardtanh", {}, lambda t: TF.hardtanh(t)),
    ("hardtanh", {"min_val": -2.0, "max_val": 3.5}, lambda t: TF.hardtanh(t, -2.0, 3.5)),
    ("hardtanh", {"min_val": 0.0, "max_val": math.inf}, lambda t: TF.hardtanh(t, 0.0, math.inf)),
    ("hardsigmoid", {}, TF.hardsigmoid),
    ("hardsigmoid", {"alpha": 0.2, "beta": 0.5}, lambda t: torch.clamp(0.2 * t + 0.5, 0, 1)),
    ("softplus", {}, lambda t: TF.softplus(t)),
    ("softplus", {"beta": 2.0, "threshold": 3.0}, lambda t: TF.softplus(t, 2.0, 3.0)),
    ("gelu", {}, lambda t: TF.gelu(t)),
    ("gelu_tanh", {}, lambda t: TF.gelu(t, approximate="tanh")),
    ("silu", {}, TF.silu),
    ("hardswish", {}, TF.hardswish),
    ("mish", {}, TF.mish),
]
IDS = [f"{op}-{i}" for i, (op, _, _) in enumerate(CASES)]


def _values(dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.standard_normal(400) * 5, [0.0, -3.0, 3.0, 1e-8, -1e-8]]).astype(dtype)


def _grad_op(op: str, attrs: dict) -> tuple[str, bool]:
    """The backward op the VJP emits and whether it reads the output."""
    from convforge.ir.graph import Graph
    from convforge.ir.types import TensorType

    g = Graph("probe")
    x = g.add_input("x", TensorType("f64", (3,)))
    y = g.call(op, x, **attrs)
    (gx,) = registry.get(op).run_vjp(g, y.producer, [g.add_input("gy", y.type)])
    return gx.producer.op, gx.producer.inputs[1] is y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("op", "attrs", "ref"), CASES, ids=IDS)
def test_forward_and_backward_match_torch(op, attrs, ref, dtype):
    x = _values(dtype)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    forward = registry.get(op)
    a = forward.normalize(attrs)
    (y,) = forward.run_reference([x], a)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = ref(t)
    ty.backward(torch.from_numpy(gy))
    rtol, atol = (1e-6, 1e-6) if dtype == np.float64 else (2e-6, 1e-5)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)

    backward, reads_output = _grad_op(op, attrs)
    (gx,) = registry.get(backward).run_reference(
        [gy, y if reads_output else x], registry.get(backward).normalize(a)
    )
    assert gx.dtype == dtype
    # torch computes hardsigmoid's slope 1/6 in float32 even for float64 tensors
    np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-5 if op == "hardsigmoid" else rtol, atol=atol)


@pytest.mark.parametrize(
    ("op", "attrs", "backward", "reads_output"),
    [
        ("elu", {}, "elu_backward", True),
        ("elu", {"alpha": 0.0}, "elu_backward", True),
        ("elu", {"alpha": -0.5}, "elu_backward_input", False),
        ("hardtanh", {}, "hardtanh_backward", True),
        ("hardsigmoid", {}, "hardsigmoid_backward", True),
        ("softplus", {}, "softplus_backward", True),
        ("gelu", {}, "gelu_backward", False),
        ("gelu_tanh", {}, "gelu_tanh_backward", False),
        ("silu", {}, "silu_backward", False),
        ("hardswish", {}, "hardswish_backward", False),
        ("mish", {}, "mish_backward", False),
    ],
)
def test_monotone_activations_read_their_output(op, attrs, backward, reads_output):
    """The argmax rewrite of the fuse pass needs the backward to read the output."""
    assert _grad_op(op, attrs) == (backward, reads_output)
    assert registry.get(op).monotone == (op in ("elu", "hardtanh", "hardsigmoid", "softplus"))


@pytest.mark.parametrize("op", ["elu", "softplus", "gelu", "gelu_tanh", "silu", "mish", "hardswish"])
def test_extreme_inputs_stay_finite(op):
    x = np.array([-1e4, -800.0, -100.0, 0.0, 100.0, 800.0, 1e4], np.float64)
    forward = registry.get(op)
    a = forward.normalize({})
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        (y,) = forward.run_reference([x], a)
        backward, reads_output = _grad_op(op, {})
        (gx,) = registry.get(backward).run_reference(
            [np.ones_like(x), y if reads_output else x], registry.get(backward).normalize(a)
        )
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(gx))
    np.testing.assert_allclose(gx[-1], 1.0)  # every one of them is the identity far right


@pytest.mark.parametrize("op", ["elu", "softplus", "silu", "mish", "gelu", "gelu_tanh"])
def test_scalar_expressions_do_not_overflow_in_python(op):
    """Numba's CUDA simulator evaluates the expressions in Python, where exp(800) raises."""
    from convforge.ir import scalar

    backward, reads_output = _grad_op(op, {})
    for v in (-800.0, -30.0, 0.0, 30.0, 800.0):
        y = eval(scalar.expression(op, registry.get(op).normalize({}), x=repr(v)), {"math": math})
        saved = y if reads_output else v
        gx = eval(scalar.expression(backward, registry.get(backward).normalize({}), g="1.0", s=repr(saved)),
                  {"math": math})  # fmt: skip
        assert math.isfinite(y) and math.isfinite(gx), (op, v)


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("elu", {"alpha": "1"}, "alpha must be a number"),
        ("hardtanh", {"min_val": 2.0, "max_val": 1.0}, "min_val must be <= max_val"),
        ("hardtanh", {"min_val": math.nan}, "min_val must be <= max_val"),
        ("hardsigmoid", {"alpha": 0.0}, "alpha must be > 0"),
        ("softplus", {"beta": -1.0}, "beta must be > 0"),
        ("softplus", {"threshold": None}, "threshold must be a number"),
        ("gelu", {"approximate": "tanh"}, "unknown attribute"),
    ],
)
def test_bad_attributes_are_refused(op, attrs, message):
    with pytest.raises(AttributeValueError, match=message):
        registry.get(op).normalize(attrs, where="layer")
