"""Batch norm and dropout ops, and the counter-based RNG behind dropout."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from convforge.backends.reference.runtime import run_graph
from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.ops import registry, rng
from convforge.ir.types import TensorType

DTYPES = {"f32": np.float32, "f64": np.float64}
TOL = {"f32": dict(rtol=1e-4, atol=1e-5), "f64": dict(rtol=1e-10, atol=1e-12)}
SHAPES = [(6, 3), (4, 3, 5), (3, 2, 4, 5)]  # BatchNorm1d [N,C], [N,C,L]; BatchNorm2d [N,C,H,W]


def _ir(dtype) -> str:
    return {"float32": "f32", "float64": "f64", "int64": "i64"}[np.dtype(dtype).name]


def run(op: str, inputs: list[np.ndarray], **attrs) -> tuple[np.ndarray, ...]:
    """Normalise, infer types and run one op's reference, checking the inferred types."""
    opdef = registry.get(op)
    full = opdef.normalize(attrs)
    types = opdef.infer_types([TensorType(_ir(a.dtype), a.shape) for a in inputs], full)
    outs = opdef.run_reference(inputs, full)
    assert len(types) == len(outs)
    for t, o in zip(types, outs):
        assert (t.dtype, t.shape) == (_ir(o.dtype), o.shape)
    return outs


def bn_inputs(shape, dt, seed=0):
    r = np.random.default_rng(seed)
    c = shape[1]
    x = (r.standard_normal(shape) * 2 + 0.5).astype(DTYPES[dt])
    weight = r.uniform(0.5, 1.5, c).astype(DTYPES[dt])
    bias = r.standard_normal(c).astype(DTYPES[dt])
    running_mean = r.standard_normal(c).astype(DTYPES[dt])
    running_var = r.uniform(0.5, 2.0, c).astype(DTYPES[dt])
    return x, weight, bias, running_mean, running_var


def torch_bn(x, weight, bias, rm, rv, training, gy=None, momentum=0.1, eps=1e-5):
    """PyTorch's batch norm: y, updated running stats, and (with gy) grads of x, weight, bias."""
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    y = tF.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=momentum, eps=eps)
    grads = None
    if gy is not None:
        y.backward(torch.tensor(gy))
        grads = (xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy())
    return y.detach().numpy(), rmt.numpy(), rvt.numpy(), grads


def vjp_graph(op: str, arrays: dict[str, np.ndarray], gy: np.ndarray, **attrs) -> list[np.ndarray]:
    """Build ``op(*arrays)``, emit its VJP as IR and run it: returns [outputs..., grads of inputs...]."""
    g = Graph("vjp")
    ins = [g.add_input(k, TensorType(_ir(a.dtype), a.shape)) for k, a in arrays.items()]
    node = g.create_node(op, ins, attrs)
    gyv = g.add_input("gy", node.outputs[0].type)
    grads = registry.get(op).run_vjp(g, node, [gyv] + [None] * (len(node.outputs) - 1))
    assert len(grads) == len(ins)
    g.set_outputs(list(node.outputs) + [v for v in grads if v is not None])
    g.verify()
    return run_graph(g, {**arrays, "gy": gy})


# -- batch norm -----------------------------------------------------------------------------
@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_train_matches_torch(shape, dt):
    x, w, b, rm, rv = bn_inputs(shape, dt)
    y, mean, invstd, new_rm, new_rv = run("batch_norm_train", [x, w, b, rm, rv], momentum=0.1)
    y_t, rm_t, rv_t, _ = torch_bn(x, w, b, rm, rv, training=True)
    np.testing.assert_allclose(y, y_t, **TOL[dt])
    np.testing.assert_allclose(new_rm, rm_t, **TOL[dt])
    np.testing.assert_allclose(new_rv, rv_t, **TOL[dt])
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axes), **TOL[dt])
    np.testing.assert_allclose(invstd, 1 / np.sqrt(x64.var(axes) + 1e-5), **TOL[dt])


def test_batch_norm_train_running_var_is_unbiased_with_momentum():
    x, w, b, rm, rv = bn_inputs((5, 2), "f64")
    *_, new_rm, new_rv = run("batch_norm_train", [x, w, b, rm, rv], momentum=0.3)
    np.testing.assert_allclose(new_rm, 0.7 * rm + 0.3 * x.mean(0))
    np.testing.assert_allclose(new_rv, 0.7 * rv + 0.3 * x.var(0, ddof=1))


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_eval_matches_torch(shape, dt):
    x, w, b, rm, rv = bn_inputs(shape, dt)
    (y,) = run("batch_norm", [x, w, b, rm, rv], eps=1e-3)
    y_t, *_ = torch_bn(x, w, b, rm, rv, training=False, eps=1e-3)
    np.testing.assert_allclose(y, y_t, **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_train_backward_matches_torch(shape, dt):
    x, w, b, rm, rv = bn_inputs(shape, dt)
    gy = np.random.default_rng(9).standard_normal(shape).astype(DTYPES[dt])
    *_, grads_t = torch_bn(x, w, b, rm, rv, training=True, gy=gy)
    _, mean, invstd, *_ = run("batch_norm_train", [x, w, b, rm, rv])
    direct = run("batch_norm_backward", [gy, x, w, mean, invstd])
    arrays = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv)
    via_vjp = vjp_graph("batch_norm_train", arrays, gy)[5:]
    for got in (direct, via_vjp):
        for a, e in zip(got, grads_t):
            np.testing.assert_allclose(a, e, **TOL[dt])


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_eval_backward_matches_torch(shape, dt):
    x, w, b, rm, rv = bn_inputs(shape, dt)
    gy = np.random.default_rng(9).standard_normal(shape).astype(DTYPES[dt])
    *_, grads_t = torch_bn(x, w, b, rm, rv, training=False, gy=gy)
    direct = run("batch_norm_eval_backward", [gy, x, w, rm, rv])
    arrays = dict(x=x, weight=w, bias=b, running_mean=rm, running_var=rv)
    via_vjp = vjp_graph("batch_norm", arrays, gy)[1:]
    for got in (direct, via_vjp):
        assert len(got) == 3
        for a, e in zip(got, grads_t):
            np.testing.assert_allclose(a, e, **TOL[dt])


def test_batch_norm_train_vjp_without_output_gradient():
    g = Graph()
    ins = [g.add_input(k, TensorType("f32", s)) for k, s in (("x", ("N", 2)), ("w", (2,)), ("b", (2,)))]
    ins += [g.add_input(k, TensorType("f32", (2,))) for k in ("rm", "rv")]
    node = g.create_node("batch_norm_train", ins)
    suffixes = ("mean", "invstd", "running_mean", "running_var")
    assert [v.name for v in node.outputs[1:]] == [f"{node.outputs[0].name}.{s}" for s in suffixes]
    assert registry.get("batch_norm_train").run_vjp(g, node, [None] * 5) == (None,) * 5


@pytest.mark.parametrize("op", ["batch_norm", "batch_norm_train"])
def test_batch_norm_identity_with_weight_sqrt_var_and_bias_mu(op):
    # seed example: gamma = sqrt(var + eps), beta = mu makes the layer the identity
    x = np.random.default_rng(1).standard_normal((4, 3, 2, 2)) * 3 + 1
    mu, var, eps = x.mean((0, 2, 3)), x.var((0, 2, 3)), 1e-5
    w, b = np.sqrt(var + eps), mu
    (y, *_) = run(op, [x, w, b, mu, var], eps=eps)
    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12)


def test_batch_norm_seed_formula():
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
    w, b = np.array([2.0, 1.0]), np.array([0.5, -1.0])
    y, mean, invstd, *_ = run("batch_norm_train", [x, w, b, np.zeros(2), np.ones(2)], eps=1e-5)
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    np.testing.assert_allclose(y, w * (x - mu) / np.sqrt(var + 1e-5) + b)
    np.testing.assert_allclose(mean, mu)


def _bn_types(op: str, x: TensorType, c: int = 3, **attrs):
    params = [TensorType(x.dtype, (c,))] * 4
    opdef = registry.get(op)
    return opdef.infer_types([x, *params], opdef.normalize(attrs))


def test_batch_norm_symbolic_batch():
    types = _bn_types("batch_norm_train", TensorType("f32", ("N", 3, 4, 4)))
    assert types[0] == TensorType("f32", ("N", 3, 4, 4))
    assert types[1:] == (TensorType("f32", (3,)),) * 4


def test_batch_norm_errors():
    with pytest.raises(ShapeError, match=r"expected weight of shape \[3\] .*, got f32\[4\]"):
        _bn_types("batch_norm", TensorType("f32", ("N", 3, 4, 4)), c=4)
    with pytest.raises(ShapeError, match="rank 2 or 3 or 4, got rank 5"):
        _bn_types("batch_norm", TensorType("f32", (2, 3, 1, 1, 1)))
    with pytest.raises(ShapeError, match="more than 1 value per channel"):
        _bn_types("batch_norm_train", TensorType("f32", (1, 3)))
    with pytest.raises(DTypeError, match="one dtype"):
        registry.get("batch_norm").infer_types(
            [TensorType("f32", (2, 3))] + [TensorType("f64", (3,))] * 4,
            registry.get("batch_norm").normalize({}),
        )
    with pytest.raises(AttributeValueError, match=r"eps must be in \(0.0, inf\], got 0.0"):
        registry.get("batch_norm").normalize({"eps": 0})
    with pytest.raises(AttributeValueError, match=r"momentum must be in \[0.0, 1.0\], got 1.5"):
        registry.get("batch_norm_train").normalize({"momentum": 1.5})
    g = Graph()
    x = g.add_input("x", TensorType("f32", ("N", 3)))
    p = g.add_input("p", TensorType("f32", (2,)))
    with pytest.raises(ShapeError, match=r"^batch_norm: expected weight of shape \[3\]"):
        g.call("batch_norm", x, p, p, p, p)


# -- dropout --------------------------------------------------------------------------------
def _step(n: int) -> np.ndarray:
    return np.asarray(n, dtype=np.int64)


def test_dropout_p0_is_identity():
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    (y,) = run("dropout", [x, _step(3)], p=0.0, seed=1)
    np.testing.assert_array_equal(y, x)


def test_dropout_p1_gives_zeros():
    (y,) = run("dropout", [np.ones((3, 4)), _step(0)], p=1.0)
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_fraction_and_scaling(p):
    x = np.ones((100, 1000), dtype=np.float32)
    (y,) = run("dropout", [x, _step(7)], p=p, seed=11)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_allclose(y[kept], np.float32(1 / (1 - p)))
    np.testing.assert_array_equal(kept, rng.uniform_array(11, 7, x.shape) >= p)


def test_dropout_deterministic_per_seed_and_step():
    x = np.random.default_rng(0).standard_normal((8, 64))
    a = run("dropout", [x, _step(5)], p=0.5, seed=2)[0]
    assert np.array_equal(a, run("dropout", [x, _step(5)], p=0.5, seed=2)[0])
    assert not np.array_equal(a != 0, run("dropout", [x, _step(6)], p=0.5, seed=2)[0] != 0)
    assert not np.array_equal(a != 0, run("dropout", [x, _step(5)], p=0.5, seed=3)[0] != 0)


def test_dropout_backward_regenerates_the_same_mask():
    x = np.random.default_rng(0).standard_normal((6, 40))
    gy = np.random.default_rng(1).standard_normal((6, 40))
    (y,) = run("dropout", [x, _step(4)], p=0.3, seed=9)
    (gx,) = run("dropout_backward", [gy, _step(4)], p=0.3, seed=9)
    np.testing.assert_array_equal(gx, np.where(y != 0, gy * (1 / 0.7), 0))
    # and the VJP emits exactly that op
    g = Graph()
    xv = g.add_input("x", TensorType("f64", ("N", 40)))
    sv = g.add_input("step", TensorType("i64", ()))
    node = g.create_node("dropout", [xv, sv], {"p": 0.3, "seed": 9})
    gyv = g.add_input("gy", xv.type)
    gxv, gstep = registry.get("dropout").run_vjp(g, node, [gyv])
    assert gstep is None and gxv.producer.op == "dropout_backward"
    g.set_outputs([node.output, gxv])
    y2, gx2 = run_graph(g, {"x": x, "step": _step(4), "gy": gy})
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(gx2, gx)


def test_dropout_errors():
    op = registry.get("dropout")
    with pytest.raises(AttributeValueError, match=r"p must be in \[0.0, 1.0\], got 1.5"):
        op.normalize({"p": 1.5})
    with pytest.raises(AttributeValueError, match=r"p must be in \[0.0, 1.0\], got -0.1"):
        op.normalize({"p": -0.1})
    with pytest.raises(AttributeValueError, match=r"seed must be an int in \[0, 2\*\*63\), got -1"):
        registry.get("dropout_backward").normalize({"seed": -1})
    with pytest.raises(DTypeError, match=r"expected step of type i64\[\] .*, got f32\[\]"):
        op.infer_types([TensorType("f32", (2, 3)), TensorType("f32", ())], op.normalize({}))
    with pytest.raises(DTypeError, match=r"expected step of type i64\[\] .*, got i64\[1\]"):
        op.infer_types([TensorType("f32", (2, 3)), TensorType("i64", (1,))], op.normalize({}))
    with pytest.raises(DTypeError, match="float dtype"):
        op.infer_types([TensorType("i64", (2, 3)), TensorType("i64", ())], op.normalize({}))


# -- the counter-based RNG ------------------------------------------------------------------
def test_rng_scalar_and_vectorised_agree_bit_for_bit():
    shape = (3, 7, 5)
    u = rng.uniform_array(123, 45, shape)
    with np.errstate(over="ignore"):  # uint64 wrap-around is intended
        v = np.array([rng.hash_uniform(123, 45, i) for i in range(u.size)]).reshape(shape)
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u, v)
    assert u.min() >= 0 and u.max() < 1


def test_rng_numba_njit_agrees_with_vectorised():
    jitted = numba.njit(rng.hash_uniform)

    @numba.njit
    def fill(seed, step, n):
        out = np.empty(n)
        for i in range(n):
            out[i] = jitted(seed, step, i)
        return out

    for seed, step in ((0, 0), (7, 123456), (2**40 + 3, 2**33)):
        np.testing.assert_array_equal(fill(seed, step, 4096), rng.uniform_array(seed, step, (4096,)))


def test_rng_uniformity_and_independence():
    u = rng.uniform_array(5, 1, (100_000,))
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 10_000) < 500)
    # neighbouring steps and seeds give unrelated streams
    assert abs(np.corrcoef(u, rng.uniform_array(5, 2, (100_000,)))[0, 1]) < 0.02
    assert abs(np.corrcoef(u, rng.uniform_array(6, 1, (100_000,)))[0, 1]) < 0.02
