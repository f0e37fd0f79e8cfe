"""Normalisation layers against torch: ``LocalResponseNorm`` (AlexNet's LRN), ``LayerNorm``,
``GroupNorm``, and ``BatchNorm1d`` on ``(N, C, L)`` sequences in training and eval."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError, ConvforgeError, ShapeError


@pytest.mark.parametrize("size", [1, 2, 5])
def test_local_response_norm_matches_torch_eagerly(size):
    x = np.random.default_rng(size).standard_normal((2, 6, 3, 4)).astype(np.float32) * 3
    layer = nn.LocalResponseNorm(size, alpha=0.2, beta=0.7, k=1.5)
    assert_close(layer(x), to_torch(layer)(torch.from_numpy(x)), rtol=1e-5, what=f"size {size}")
    x3 = x.reshape(2, 6, 12)
    want = torch.nn.functional.local_response_norm(torch.from_numpy(x3), size, 0.2, 0.7, 1.5)
    assert_close(F.local_response_norm(x3, size, 0.2, 0.7, 1.5), want, rtol=1e-5, what="3-D input")


def _alexnet_block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 3 * 3, 4),
    )  # fmt: skip


def test_local_response_norm_trains_as_torch(backend):
    cf.manual_seed(3)
    model = _alexnet_block()
    model[0].weight[...] *= 4.0  # squares large enough for the denominator to matter
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    y = np.array([0, 3, 1])
    step = cf.compile_train(model, (None, 3, 6, 6), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    twin = to_torch(model)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_local_response_norm_refuses_bad_arguments():
    with pytest.raises(AttributeValueError, match="LocalResponseNorm: size must be an int >= 1, got 0"):
        nn.LocalResponseNorm(0)
    with pytest.raises(AttributeValueError, match="LocalResponseNorm: beta must be a number"):
        nn.LocalResponseNorm(3, beta="x")
    with pytest.raises(ShapeError, match="rank >= 3"):
        F.local_response_norm(np.zeros((2, 3), np.float32), 3, backend="reference")


# -- LayerNorm, GroupNorm, BatchNorm1d on [N, C, L] --------------------------------------------
def _affine_randomised(model: nn.Module) -> nn.Module:
    rng = np.random.default_rng(11)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            m.weight[...] = rng.uniform(0.5, 1.5, size=m.weight.shape)
            if m.bias is not None:
                m.bias[...] = rng.normal(size=m.bias.shape)
    return model


def _norm_model() -> nn.Module:
    return _affine_randomised(
        nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.GroupNorm(3, 6),
            nn.ReLU(),
            nn.Conv2d(6, 4, 3),
            nn.LayerNorm((4, 3, 3)),
            nn.Flatten(),
            nn.Linear(36, 8),
            nn.LayerNorm(8, bias=False),
            nn.Linear(8, 3),
        )  # fmt: skip
    )


def test_layer_and_group_norm_match_torch(backend):
    cf.manual_seed(12)
    model = _norm_model()
    x = np.random.default_rng(13).standard_normal((3, 2, 5, 5)).astype(np.float32)
    y = np.array([0, 2, 1])
    twin = to_torch(model)
    net = cf.compile(model, (None, 2, 5, 5), backend=backend)
    assert_close(net(x), twin(torch.from_numpy(x)), what="forward")
    step = cf.compile_train(model, (None, 2, 5, 5), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_functional_layer_and_group_norm_defaults_are_pytorchs():
    x = np.random.default_rng(16).standard_normal((2, 4, 3)).astype(np.float32)
    t = torch.from_numpy(x)
    b = np.arange(3, dtype=np.float32)
    assert_close(F.layer_norm(x, 3), torch.nn.functional.layer_norm(t, (3,)), what="no affine")
    want = torch.nn.functional.layer_norm(t, (4, 3), None, torch.from_numpy(np.tile(b, (4, 1))), eps=1e-3)
    assert_close(F.layer_norm(x, (4, 3), None, np.tile(b, (4, 1)), eps=1e-3), want, what="bias only")
    assert_close(F.group_norm(x, 2), torch.nn.functional.group_norm(t, 2), what="group norm")


def test_batch_norm_1d_on_sequences_trains_and_evaluates_as_torch(backend):
    cf.manual_seed(17)
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 2)
    )
    x = np.random.default_rng(18).standard_normal((5, 3, 6)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1])
    step = cf.compile_train(model, (None, 3, 6), optimizer=cf.optim.SGD(lr=0.1), backend=backend)
    twin = to_torch(model).train()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(2):
        loss = step(x, y)
        opt.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    ours = step.state_dict()
    for key, value in twin.state_dict().items():
        assert_close(ours[key], value, rtol=1e-3, atol_scale=1e-4, what=key)
    net = step.inference()  # eval: running statistics, batch norm folded into the conv
    assert_close(net(x), twin.eval()(torch.from_numpy(x)), what="eval")


def test_norm_layers_refuse_bad_arguments():
    with pytest.raises(AttributeValueError, match="GroupNorm: num_groups=4 must divide num_channels=6"):
        nn.GroupNorm(4, 6)
    with pytest.raises(AttributeValueError, match="LayerNorm: normalized_shape must be positive ints"):
        nn.LayerNorm((3, 0))
    with pytest.raises(ShapeError, match="trailing dims are normalized_shape"):
        F.layer_norm(np.zeros((2, 3), np.float32), (4,), backend="reference")
    with pytest.raises(ConvforgeError, match="expected input of rank 2 or 3"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32))
