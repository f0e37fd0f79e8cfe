"""Random networks compute the same function on every backend and in PyTorch.

The reference backend is the oracle; numba-cpu and numba-cuda (the simulator in CI) are
compared against it whenever they are available here. PyTorch checks the reference
itself: forward and gradients in eval mode (dropout draws differ), and in training mode
for networks without dropout (batch statistics). Examples are bounded by the "ci"
hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch_bridge
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import convforge as cf
from convforge import backends as cf_backends
from convforge.backends import base
from convforge.frontend import nn
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.types import TensorType
from convforge.testing import (
    TOLERANCES,
    Concat,
    Residual,
    assert_backends_agree,
    available_backends,
    compare_arrays,
    conv2d_cases,
    networks,
    pool2d_cases,
    tolerance,
)

AVAILABLE = available_backends()


def _needs(backend: str):
    return pytest.mark.skipif(backend not in AVAILABLE, reason=f"backend {backend} is not available here")


# =========================================================================================
# The torch twin of a generated network
# =========================================================================================
class TorchResidual(torch.nn.Module):
    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TorchConcat(torch.nn.Module):
    def __init__(self, a: torch.nn.Module, b: torch.nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _convert(m: nn.Module) -> torch.nn.Module:
    if isinstance(m, nn.Sequential):
        return torch.nn.Sequential(*[_convert(c) for c in m])
    if isinstance(m, Residual):
        return TorchResidual(_convert(m.body))
    if isinstance(m, Concat):
        return TorchConcat(_convert(m.a), _convert(m.b))
    return torch_bridge.to_torch(m)


def torch_twin(model: nn.Module) -> torch.nn.Module:
    """The torch module computing what ``model`` computes, with the same weights and buffers."""
    twin = _convert(model)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twin


def _torch_reference(model: nn.Module, x: np.ndarray, target: np.ndarray, training: bool):
    twin = torch_twin(model).train(training)
    tx = torch.from_numpy(x).requires_grad_(True)
    out = twin(tx)
    loss = torch.nn.functional.mse_loss(out, torch.from_numpy(target))
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    grads["input"] = tx.grad.numpy()
    return out.detach().numpy(), loss.item(), grads


def _check_against_torch(model: nn.Module, input_shape: tuple, training: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(input_shape).astype(np.float32)
    step = cf.compile_train(model, (None, *input_shape[1:]), loss="mse", backend="reference").train(training)
    net = cf.compile(model, (None, *input_shape[1:]), backend="reference")
    target = rng.standard_normal(net(x).shape).astype(np.float32)
    t_out, t_loss, t_grads = _torch_reference(model, x, target, training)
    tol = tolerance("f32", "reference", "torch")
    if not training:
        mismatch = compare_arrays(net(x), t_out, tol)
        assert mismatch is None, f"output: {mismatch.describe('convforge', 'torch')}"
    loss, grads = step.gradients(x, target)
    mismatch = compare_arrays(np.float32(loss), np.float32(t_loss), tol)
    assert mismatch is None, f"loss: {mismatch.describe('convforge', 'torch')}"
    assert set(grads) == set(t_grads)
    context = max(float(np.abs(g).max()) for g in t_grads.values())
    for name, want in t_grads.items():
        mismatch = compare_arrays(grads[name], want, tol, context)
        assert mismatch is None, f"gradient of {name!r}: {mismatch.describe('convforge', 'torch')}"


# =========================================================================================
# Property tests: backends against the reference, the reference against PyTorch
# =========================================================================================
@_needs("numba-cpu")
@given(net=networks(), training=st.booleans())
def test_networks_agree_on_numba_cpu(net, training):
    model, input_shape = net
    assert_backends_agree(model, input_shape, backends=("reference", "numba-cpu"), training=training)


@_needs("numba-cuda")
@settings(max_examples=8)  # the simulator runs every GPU thread in Python
@given(net=networks(max_depth=3, max_size=6), training=st.booleans())
def test_networks_agree_on_numba_cuda(net, training):
    model, input_shape = net
    assert_backends_agree(model, input_shape, backends=("reference", "numba-cuda"), training=training)


@given(net=networks())
def test_networks_match_torch_in_eval_mode(net):
    model, input_shape = net
    _check_against_torch(model, input_shape, training=False)


@given(net=networks(dropout=False))
def test_networks_match_torch_in_training_mode(net):
    model, input_shape = net
    _check_against_torch(model, input_shape, training=True)


@given(net=networks(), training=st.booleans())
def test_reference_agrees_with_itself_in_float64(net, training):
    """The float64 path runs end to end (every op's reference accepts f64)."""
    model, input_shape = net
    assert_backends_agree(model, input_shape, backends=("reference", "reference"), training=training,
                          dtype="float64")  # fmt: skip


# =========================================================================================
# The strategies produce valid, PyTorch-compatible op calls
# =========================================================================================
def _run_one(op: str, shapes: list[tuple], attrs: dict, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    g = Graph(op)
    ins = [g.add_input(f"in{i}", TensorType("f64", s)) for i, s in enumerate(shapes)]
    g.set_outputs([g.call(op, *ins, **attrs)])
    arrays = [rng.standard_normal(s) for s in shapes]
    from convforge.backends.reference import run_graph

    return arrays, run_graph(g, {f"in{i}": a for i, a in enumerate(arrays)})[0]


@given(case=conv2d_cases())
def test_conv2d_cases_are_valid_and_match_torch(case):
    shapes = [case["x"], case["w"]] + ([case["b"]] if case["b"] else [])
    arrays, ours = _run_one("conv2d", shapes, case["attrs"], np.random.default_rng(0))
    t = [torch.from_numpy(a) for a in arrays]
    pad = case["attrs"]["padding"]
    if len(pad) == 4:  # (top, left, bottom, right) -> F.pad's (left, right, top, bottom)
        t[0] = torch.nn.functional.pad(t[0], (pad[1], pad[3], pad[0], pad[2]))
        pad = (0, 0)
    a = case["attrs"]
    want = torch.nn.functional.conv2d(t[0], t[1], t[2] if len(t) == 3 else None, a["stride"], pad,
                                      a["dilation"], a["groups"])  # fmt: skip
    assert compare_arrays(ours, want.numpy(), tolerance("f64", "reference", "torch")) is None


@given(case=pool2d_cases("max"))
def test_max_pool_cases_are_valid_and_match_torch(case):
    arrays, ours = _run_one("max_pool2d", [case["x"]], case["attrs"], np.random.default_rng(0))
    a = case["attrs"]
    want = torch.nn.functional.max_pool2d(torch.from_numpy(arrays[0]), a["kernel_size"], a["stride"],
                                          a["padding"], a["dilation"], a["ceil_mode"])  # fmt: skip
    assert compare_arrays(ours, want.numpy(), tolerance("f64", "reference", "torch")) is None


@given(case=pool2d_cases("avg"))
def test_avg_pool_cases_are_valid_and_match_torch(case):
    arrays, ours = _run_one("avg_pool2d", [case["x"]], case["attrs"], np.random.default_rng(0))
    a = case["attrs"]
    want = torch.nn.functional.avg_pool2d(torch.from_numpy(arrays[0]), a["kernel_size"], a["stride"],
                                          a["padding"], a["ceil_mode"], a["count_include_pad"],
                                          a["divisor_override"])  # fmt: skip
    assert compare_arrays(ours, want.numpy(), tolerance("f64", "reference", "torch")) is None


def test_networks_shrink_to_small_failing_examples():
    """A property failing on every network with a max pool shrinks to a short network."""

    def has_max_pool(net) -> bool:
        return any(isinstance(m, nn.MaxPool2d) for m in net[0].modules())

    model, input_shape = find(
        networks(),
        has_max_pool,
        settings=settings(
            database=None, derandomize=True, max_examples=500, suppress_health_check=list(HealthCheck)
        ),  # fmt: skip
    )
    assert len(model) <= 3, f"shrunk to {model}"
    assert input_shape[0] == 2 and max(input_shape[1:]) <= 3


# =========================================================================================
# assert_backends_agree itself: it catches a wrong backend and names the first bad node
# =========================================================================================
def _faulty_backend(op: str, factor: float) -> types.ModuleType:
    """A backend that runs the references but scales every ``op`` node's output by ``factor``."""

    class Executable(base.Executable):
        backend = "faulty"

        def run(self, inputs):
            env = {v.name: inputs[v.name] for v in self.graph.inputs}
            for node in self.graph.nodes:
                outs = registry.get(node.op).run_reference([env[v.name] for v in node.inputs], node.attrs)
                if node.op == op:
                    outs = (outs[0] * outs[0].dtype.type(factor), *outs[1:])
                for v, arr in zip(node.outputs, outs):
                    env[v.name] = np.asarray(arr, dtype=v.type.np_dtype)
            return [env[v.name] for v in self.graph.outputs]

        def source(self) -> str:
            return str(self.graph)

    module = types.ModuleType("convforge_test_faulty_backend")
    module.BACKEND = base.Backend("faulty", Executable)
    return module


@pytest.fixture
def faulty(monkeypatch):
    def install(op: str, factor: float = 1.01) -> str:
        monkeypatch.setitem(sys.modules, "convforge_test_faulty_backend", _faulty_backend(op, factor))
        monkeypatch.setitem(cf_backends.BACKENDS, "faulty", "convforge_test_faulty_backend")
        for dtype in ("f32", "f64"):
            monkeypatch.setitem(TOLERANCES, (dtype, "faulty"), TOLERANCES[(dtype, "reference")])
        return "faulty"

    return install


def _small_model() -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    )


def test_agreeing_backends_pass():
    assert_backends_agree(_small_model(), (2, 2, 4, 4), backends=("reference", "reference"))


@pytest.mark.parametrize("training", [False, True])
def test_a_wrong_forward_op_is_named(faulty, training):
    backend = faulty("tanh")
    with pytest.raises(AssertionError) as info:
        assert_backends_agree(
            _small_model(), (2, 2, 4, 4), backends=("reference", backend), training=training
        )
    msg = str(info.value)
    assert "faulty disagrees with reference on the output" in msg
    assert "max abs error" in msg and "max rel error" in msg
    assert "first IR node whose values differ: %2 = tanh (1 (Tanh))" in msg, msg


def test_a_wrong_backward_op_is_named(faulty):
    backend = faulty("conv2d_backward_weight", 1.5)
    with pytest.raises(AssertionError) as info:
        assert_backends_agree(_small_model(), (2, 2, 4, 4), backends=("reference", backend))
    msg = str(info.value)
    assert "on the gradient of '0.weight'" in msg, msg
    assert "= conv2d_backward_weight (0 (Conv2d))" in msg, msg


def test_a_graph_is_compared_output_by_output_and_differentiated(faulty):
    g = Graph("g")
    x = g.add_input("x", TensorType("f64", ("N", 3)))
    w = g.add_input("w", TensorType("f64", (2, 3)))
    y = g.call("sigmoid", g.call("linear", x, w))
    g.set_outputs([y])
    assert_backends_agree(g, (4, 3), backends=("reference", "reference"))
    backend = faulty("matmul", 2.0)  # only in the backward of linear
    with pytest.raises(AssertionError) as info:
        assert_backends_agree(g, (4, 3), backends=("reference", backend))
    msg = str(info.value)
    assert "graph @g (f64, eval mode)" in msg and "on the gradient of %" in msg, msg
    assert "= matmul" in msg, msg
    assert_backends_agree(g, (4, 3), backends=("reference", backend), grads=False)


def test_compare_arrays_rules():
    tol = tolerance("f32", "reference")
    assert compare_arrays(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), tol) is None
    assert compare_arrays(np.array([0.0, 1.0]), np.array([np.nan, 1.0]), tol) is not None
    assert compare_arrays(np.zeros(3), np.zeros(4), tol).bound == "shapes differ"
    assert compare_arrays(np.array([1, 2], np.uint8), np.array([1, 3], np.uint8), tol).index == (1,)
    # a tensor that should be zero is compared at a fraction of its context's scale
    assert compare_arrays(np.array([1e-9]), np.array([0.0]), tol, context=1.0) is None
    assert compare_arrays(np.array([1e-3]), np.array([0.0]), tol, context=1.0) is not None


def test_tolerances_take_the_looser_backend():
    loose = tolerance("f32", "reference", "numba-cpu")
    assert loose.rtol == max(TOLERANCES[("f32", "reference")].rtol, TOLERANCES[("f32", "numba-cpu")].rtol)
    with pytest.raises(KeyError, match="no tolerance for backend"):
        tolerance("f32", "tpu")
