"""The fused conv -> activation -> max pool on numba-cpu: forward pool fast paths (ties, NaN)
and the fused backward region (weight, bias and input gradients from the pooled gradient)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convforge as cf
from convforge import nn, optim
from convforge.ir.ops import registry
from convforge.ir.types import TensorType
from convforge.testing import conv2d_attrs, pool2d_attrs

BACKWARD_CASES = {
    "relu, stride 1, pool 2/2": dict(conv=dict(padding=1), act=nn.ReLU(), pool=dict(kernel_size=2)),
    "leaky_relu, stride 2, overlapping padded pool": dict(
        conv=dict(stride=2, padding=2), act=nn.LeakyReLU(0.1), pool=dict(kernel_size=3, stride=2, padding=1)
    ),
    "sigmoid, groups 2, dilation 2, ceil_mode": dict(
        conv=dict(groups=2, dilation=2, padding=1), act=nn.Sigmoid(), pool=dict(kernel_size=2, ceil_mode=True)
    ),
    "tanh, no bias, 2x3 pool": dict(
        conv=dict(padding=(0, 1), bias=False), act=nn.Tanh(), pool=dict(kernel_size=(2, 3), stride=(2, 2))
    ),
}


def _pair(model_fn, shape):
    kw = dict(input_shape=(None, *shape), loss="cross_entropy", optimizer=optim.SGD(lr=0.1), dtype="float64")
    step = cf.compile_train(model_fn(), backend="numba-cpu", **kw)
    ref = cf.compile_train(model_fn(), backend="reference", **kw)
    ref.load_state_dict(step.state_dict())
    return step, ref


def _conv_pool(case):
    def build():
        probe = nn.Sequential(nn.Conv2d(2, 4, 3, **case["conv"]), case["act"], nn.MaxPool2d(**case["pool"]))
        net = cf.compile(probe, (None, 2, 11, 10), backend="reference")
        features = int(np.prod(net(np.zeros((1, 2, 11, 10), np.float32)).shape[1:]))
        return nn.Sequential(*probe, nn.Flatten(), nn.Linear(features, 3))

    return build


def test_backward_region_replaces_the_conv_gradients():
    from convforge.models import lenet5

    step = cf.compile_train(lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1), backend="numba-cpu")
    regions = [[n.op for n in node.region.nodes] for node in step.graph.nodes if node.op == "fusion"]
    tail = ["relu_backward", "max_pool2d_backward_argmax", "conv2d_backward_weight", "reduce_sum"]
    # conv2 also needs its input gradient; conv1's input is the data
    assert [*tail, "conv2d_backward_input"] in regions
    assert tail in regions
    assert not any(n.op in ("conv2d_backward_weight", "conv2d_backward_input") for n in step.graph.nodes)


@pytest.mark.parametrize("name", list(BACKWARD_CASES))
def test_fused_backward_matches_reference(name):
    case = BACKWARD_CASES[name]
    step, ref = _pair(_conv_pool(case), (2, 11, 10))
    fused = [
        n
        for n in step.graph_for("grad").nodes
        if n.op == "fusion" and n.region.nodes[-1].op.startswith("conv")
    ]
    assert fused, "the conv gradients were not fused"
    x = np.random.default_rng(1).standard_normal((3, 2, 11, 10))
    y = np.array([0, 2, 1])
    loss, grads = step.gradients(x, y)  # includes the input gradient: the fused kernel's gx path
    rloss, rgrads = ref.gradients(x, y)
    assert loss == pytest.approx(rloss, rel=1e-10)
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert step(x, y) == pytest.approx(ref(x, y), rel=1e-10)
    assert step(x, y) == pytest.approx(ref(x, y), rel=1e-9)


def test_tied_windows_route_the_gradient_to_the_first_maximum():
    """A constant conv output (zero weights): every window ties, PyTorch picks its first tap."""

    def build():
        model = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
        )
        model[0].weight[...] = 0.0
        model[0].bias[...] = 0.5
        return model

    step, ref = _pair(build, (1, 8, 8))
    x = np.random.default_rng(2).random((2, 1, 8, 8))
    _, grads = step.gradients(x, np.array([0, 1]))
    _, rgrads = ref.gradients(x, np.array([0, 1]))
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=3, stride=1)])
def test_nan_wins_in_the_fused_pool(pool):
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(**pool))
    x = np.random.default_rng(3).random((2, 1, 6, 6)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[1, 0, 4, 5] = np.nan
    ours = cf.compile(model, (None, 1, 6, 6), backend="numba-cpu")(x)
    theirs = cf.compile(model, (None, 1, 6, 6), backend="reference")(x)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@st.composite
def conv_act_max_pool(draw: st.DrawFn) -> tuple[list[nn.Module], tuple[int, int, int]]:
    """Layers conv2d -> monotone activation -> max_pool2d of random geometry, and (C, H, W)."""
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    o = draw(st.sampled_from([k * g for k in (1, 2) for g in (1, 2, 4) if c % g == 0]))
    conv = draw(conv2d_attrs((h, w), c, o, asymmetric_padding=False))
    conv_op = registry.get("conv2d")
    kernel = conv.pop("kernel_size")
    wt = TensorType("f64", (o, c // conv["groups"], *kernel))
    out = conv_op.infer_types([TensorType("f64", (1, c, h, w)), wt], conv_op.normalize(conv))[0]
    pool = draw(pool2d_attrs("max", tuple(out.shape[2:])))
    act = draw(st.sampled_from([nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh()]))
    bias = draw(st.booleans())
    return [nn.Conv2d(c, o, kernel, bias=bias, **conv), act, nn.MaxPool2d(**pool)], (c, h, w)


@given(case=conv_act_max_pool(), seed=st.integers(0, 2**16))
def test_random_conv_act_pool_layers_match_reference(case, seed):
    """Random geometries reach every path of the fused kernels (wide and strided im2col,
    groups, pools inside and overhanging the plane) in both directions."""
    layers, shape = case

    def build():
        probe = cf.compile(nn.Sequential(*layers), (None, *shape), backend="reference", dtype="float64")
        features = int(np.prod(probe(np.zeros((1, *shape))).shape[1:]))
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, 3))

    step, ref = _pair(build, shape)
    x = np.random.default_rng(seed).standard_normal((2, *shape))
    y = np.array([0, 2])
    _, grads = step.gradients(x, y)
    _, rgrads = ref.gradients(x, y)
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_pool_backward_alone_when_the_conv_gradients_stay_apart(monkeypatch):
    """Without ``conv_backward`` the act + pool backward pair is its own kernel."""
    from convforge.backends import numba_cpu

    monkeypatch.setattr(numba_cpu.BACKEND, "training_pipeline", "fuse{training=true},dce")
    case = BACKWARD_CASES["leaky_relu, stride 2, overlapping padded pool"]
    step, ref = _pair(_conv_pool(case), (2, 11, 10))
    regions = [
        [n.op for n in node.region.nodes] for node in step.graph_for("grad").nodes if node.op == "fusion"
    ]
    assert ["leaky_relu_backward", "max_pool2d_backward_argmax"] in regions
    x = np.random.default_rng(4).standard_normal((3, 2, 11, 10))
    _, grads = step.gradients(x, np.array([1, 0, 2]))
    _, rgrads = ref.gradients(x, np.array([1, 0, 2]))
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-9, atol=1e-12, err_msg=k)
