"""linear and matmul: shape rules, NumPy references against torch, VJPs as IR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convforge.backends.reference.runtime import run_graph
from convforge.errors import AttributeValueError, ConvforgeError, DTypeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.ops import FusionKind, registry
from convforge.ir.types import TensorType

DTYPES = {"f32": np.float32, "f64": np.float64}


def assert_close(actual, expected, dtype):
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype
    tol = 2e-5 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


def infer(op, shapes, dtype="f32", **attrs):
    opdef = registry.get(op)
    dtypes = dtype if isinstance(dtype, (list, tuple)) else [dtype] * len(shapes)
    return opdef.infer_types([TensorType(d, s) for d, s in zip(dtypes, shapes)], opdef.normalize(attrs))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n, fin, fout", [(1, 1, 1), (4, 7, 3), (5, 16, 10)])
def test_linear_agrees_with_torch(n, fin, fout, bias, dtype):
    rng = np.random.default_rng(n * 100 + fin)
    x = rng.standard_normal((n, fin)).astype(DTYPES[dtype])
    w = rng.standard_normal((fout, fin)).astype(DTYPES[dtype])
    b = rng.standard_normal(fout).astype(DTYPES[dtype]) if bias else None
    inputs = [x, w] if b is None else [x, w, b]
    op = registry.get("linear")
    y = op.run_reference(inputs, op.normalize({}))[0]
    expected = F.linear(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b)).numpy()
    assert_close(y, expected, dtype)
    assert infer("linear", [a.shape for a in inputs], dtype)[0].shape == y.shape


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_transposes(transpose_a, transpose_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    b = rng.standard_normal((4, 5))
    a_stored = a.T.copy() if transpose_a else a
    b_stored = b.T.copy() if transpose_b else b
    attrs = registry.get("matmul").normalize({"transpose_a": transpose_a, "transpose_b": transpose_b})
    c = registry.get("matmul").run_reference([a_stored, b_stored], attrs)[0]
    np.testing.assert_allclose(c, a @ b, rtol=1e-12)
    (t,) = infer(
        "matmul", [a_stored.shape, b_stored.shape], "f64", transpose_a=transpose_a, transpose_b=transpose_b
    )
    assert t == TensorType("f64", (3, 5))


def test_batch_symbol_passes_through():
    assert infer("linear", [("N", 400), (120, 400), (120,)])[0] == TensorType("f32", ("N", 120))
    # gy^T @ x: the batch dims agree symbolically and are contracted away
    assert infer("matmul", [("N", 10), ("N", 84)], transpose_a=True)[0] == TensorType("f32", (10, 84))
    assert infer("matmul", [("N", 10), (10, 84)])[0] == TensorType("f32", ("N", 84))


@pytest.mark.parametrize(
    "op, shapes, attrs, error, match",
    [
        ("linear", [(2, 3, 4), (5, 4)], {}, ShapeError, r"expected input of rank 2, got rank 3"),
        ("linear", [(2, 4), (5, 4, 1)], {}, ShapeError, r"expected weight of rank 2, got rank 3"),
        (
            "linear",
            [("N", 3), (5, 4)],
            {},
            ShapeError,
            r"expected input with 4 features \(weight f32\[5,4\]\), got f32\[N,3\]",
        ),
        (
            "linear",
            [(2, 4), (5, 4), (4,)],
            {},
            ShapeError,
            r"expected bias of shape \[5\] \(weight f32\[5,4\]\), got f32\[4\]",
        ),
        (
            "matmul",
            [(2, 3), (4, 5)],
            {},
            ShapeError,
            r"inner dimensions to agree in a @ b, got a with 3 columns \(f32\[2,3\]\) and b with 4 rows",
        ),
        ("matmul", [(2, 3), (4, 5)], {"transpose_a": True}, ShapeError, r"a.T with 2 columns"),
        ("matmul", [(2, 3)], {}, ConvforgeError, r"wrong inputs for matmul"),
        ("matmul", [(2, 3, 1), (3, 5)], {}, ShapeError, r"expected a of rank 2, got rank 3"),
        ("matmul", [(2, 3), (3,)], {}, ShapeError, r"expected b of rank 2, got rank 1"),
    ],
)
def test_shape_errors(op, shapes, attrs, error, match):
    with pytest.raises(error, match=match):
        infer(op, shapes, **attrs)


def test_dtype_and_attribute_errors():
    with pytest.raises(DTypeError, match=r"one dtype, got f32\[2,4\], f64\[5,4\]"):
        infer("linear", [(2, 4), (5, 4)], ["f32", "f64"])
    with pytest.raises(DTypeError, match=r"float dtype .* got i64\[2,4\]"):
        infer("linear", [(2, 4), (5, 4)], "i64")
    with pytest.raises(DTypeError, match="one dtype"):
        infer("matmul", [(2, 4), (4, 5)], ["f64", "f32"])
    with pytest.raises(AttributeValueError, match=r"transpose_a must be a bool, got 1"):
        registry.get("matmul").normalize({"transpose_a": 1})
    with pytest.raises(AttributeValueError, match=r"unknown attribute\(s\) bias"):
        registry.get("linear").normalize({"bias": True})


def test_fusion_kinds():
    assert registry.get("linear").fusion is FusionKind.OUT_FUSABLE
    assert registry.get("matmul").fusion is FusionKind.OPAQUE


# -- VJPs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_linear_vjp_structure_and_values(bias):
    g = Graph("fc")
    x = g.add_input("x", TensorType("f64", ("N", 6)))
    w = g.add_input("w", TensorType("f64", (4, 6)))
    inputs = [x, w] + ([g.add_input("b", TensorType("f64", (4,)))] if bias else [])
    y = g.call("linear", *inputs)
    gy = g.add_input("gy", y.type)
    grads = registry.get("linear").run_vjp(g, y.producer, [gy])
    assert len(grads) == len(inputs)
    gx, gw = grads[:2]
    assert gx.producer.op == "matmul" and [v.name for v in gx.producer.inputs] == ["gy", "w"]
    assert gx.type == x.type
    assert gw.producer.op == "matmul" and [v.name for v in gw.producer.inputs] == ["gy", "x"]
    assert gw.producer.attrs["transpose_a"] is True and gw.type == w.type
    if bias:
        assert grads[2].producer.op == "reduce_sum" and grads[2].producer.attrs["dims"] == (0,)
        assert grads[2].type == TensorType("f64", (4,))

    g.set_outputs([y, *grads])
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((3, 6)), "w": rng.standard_normal((4, 6)), "b": rng.standard_normal(4)}
    gy_value = rng.standard_normal((3, 4))
    feeds = {k: v for k, v in arrays.items() if k != "b" or bias}
    outs = run_graph(g, {**feeds, "gy": gy_value})
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in feeds.items()}
    yt = F.linear(tensors["x"], tensors["w"], tensors.get("b"))
    yt.backward(torch.tensor(gy_value))
    assert_close(outs[0], yt.detach().numpy(), "f64")
    for out, name in zip(outs[1:], ["x", "w", "b"]):
        assert_close(out, tensors[name].grad.numpy(), "f64")


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_vjp_matches_torch(transpose_a, transpose_b):
    a_shape = (4, 3) if transpose_a else (3, 4)
    b_shape = (5, 4) if transpose_b else (4, 5)
    g = Graph("mm")
    a = g.add_input("a", TensorType("f64", a_shape))
    b = g.add_input("b", TensorType("f64", b_shape))
    c = g.call("matmul", a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    gc = g.add_input("gc", c.type)
    ga, gb = registry.get("matmul").run_vjp(g, c.producer, [gc])
    assert ga.type == a.type and gb.type == b.type
    g.set_outputs([ga, gb])

    rng = np.random.default_rng(2)
    av, bv, gcv = rng.standard_normal(a_shape), rng.standard_normal(b_shape), rng.standard_normal((3, 5))
    ga_out, gb_out = run_graph(g, {"a": av, "b": bv, "gc": gcv})
    at, bt = torch.tensor(av, requires_grad=True), torch.tensor(bv, requires_grad=True)
    ((at.T if transpose_a else at) @ (bt.T if transpose_b else bt)).backward(torch.tensor(gcv))
    assert_close(ga_out, at.grad.numpy(), "f64")
    assert_close(gb_out, bt.grad.numpy(), "f64")
