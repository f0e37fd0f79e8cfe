"""Convolution layers against torch: ``ConvTranspose2d`` (forward, gradients, batch norm folded
into it) and depthwise ``Conv2d`` (groups = channels) at MobileNet's shapes."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError, ConvforgeError


def _decoder() -> nn.Module:
    """conv -> BN -> ReLU -> conv_transpose (stride 2, output_padding, groups) -> BN -> conv_transpose."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), nn.BatchNorm2d(6),
        nn.ConvTranspose2d(6, 3, (2, 3), stride=(1, 2), dilation=(2, 1), bias=False),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean[...] = rng.normal(size=c)
            m.running_var[...] = rng.uniform(0.5, 2.0, size=c)
            m.weight[...] = rng.uniform(0.5, 1.5, size=c)
            m.bias[...] = rng.normal(size=c)
    return model


@pytest.mark.parametrize("backend", ["reference", "numba-cpu", "numba-cuda"])
def test_conv_transpose_with_batch_norm_folded_matches_torch(backend):
    cf.manual_seed(1)
    model = _decoder().eval()
    x = np.random.default_rng(4).standard_normal((2, 2, 4, 5)).astype(np.float32)
    net = cf.compile(model, (None, 2, 4, 5), backend=backend)
    want = to_torch(model).eval()(torch.from_numpy(x))
    assert np.asarray(net(x)).shape == tuple(want.shape) == (2, 3, 10, 21)
    assert_close(np.asarray(net(x)), want, what=backend)
    if backend != "reference":  # the reference backend runs no passes
        ops = [n.op for n in net.graph.nodes]
        assert "batch_norm" not in ops
        folds = [n for n in net.graph.nodes if n.op.startswith("bn_fold_weight")]
        assert [n.op for n in folds] == ["bn_fold_weight", "bn_fold_weight_transposed"]
        assert folds[1].attrs["groups"] == 2


def test_conv_transpose_trains_as_torch(backend):
    cf.manual_seed(2)
    model = nn.Sequential(
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 2, groups=2), nn.Flatten(), nn.Linear(2 * 9 * 9, 3),
    )  # fmt: skip
    x = np.random.default_rng(5).standard_normal((3, 3, 4, 4)).astype(np.float32)
    y = np.array([1, 0, 2])
    step = cf.compile_train(model, (None, 3, 4, 4), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    twin = to_torch(model)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_conv_transpose_init_and_functional_form_are_pytorchs():
    layer = nn.ConvTranspose2d(4, 6, (3, 2), groups=2)
    assert layer.weight.shape == (4, 3, 3, 2) and layer.bias.shape == (6,)
    bound = 1 / np.sqrt(3 * 3 * 2)  # fan-in = out_channels / groups * kernel
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.weight).max() > 0.8 * bound
    x = np.random.default_rng(6).standard_normal((1, 4, 3, 3)).astype(np.float32)
    t = [torch.from_numpy(a) for a in (x, np.asarray(layer.weight), np.asarray(layer.bias))]
    want = torch.nn.functional.conv_transpose2d(
        *t, stride=2, padding=1, output_padding=1, groups=2, dilation=1
    )
    got = F.conv_transpose2d(x, layer.weight, layer.bias, 2, 1, 1, 2, 1, backend="reference")
    assert_close(got, want, what="F.conv_transpose2d")


def test_conv_transpose_refuses_bad_arguments():
    with pytest.raises(
        AttributeValueError, match="ConvTranspose2d: output_padding must be smaller than stride"
    ):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(AttributeValueError, match="ConvTranspose2d: groups=2 must divide in_channels=3"):
        nn.ConvTranspose2d(3, 4, 3, groups=2)
    layer = nn.ConvTranspose2d(2, 2, 3)
    with pytest.raises(ConvforgeError, match="expected input with 2 channels"):
        cf.compile(layer, (None, 3, 4, 4), backend="reference")


def test_depthwise_conv_at_mobilenet_shape():
    """MobileNet's first depthwise layer (32 channels at 112 x 112, stride 1 and 2) on numba-cpu."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 32, 112, 112)).astype(np.float32)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    for stride in (1, 2):
        got = F.conv2d(x, w, b, stride=stride, padding=1, groups=32, backend="numba-cpu")
        want = torch.nn.functional.conv2d(
            *map(torch.from_numpy, (x, w, b)), stride=stride, padding=1, groups=32
        )
        assert got.shape == tuple(want.shape)
        assert_close(got, want, what=f"stride {stride}")


def test_depthwise_separable_block_trains_as_torch(backend):
    cf.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    model[0].weight[...] *= 4.0
    x = np.random.default_rng(9).standard_normal((2, 8, 14, 14)).astype(np.float32)
    y = np.array([3, 0])
    step = cf.compile_train(model, (None, 8, 14, 14), loss="cross_entropy", backend=backend)
    step.eval()
    loss, grads = step.gradients(x, y)
    twin = to_torch(model).eval()
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for key, p in twin.named_parameters():
        assert_close(grads[key], p.grad, rtol=1e-3, atol_scale=1e-4, what=key)
