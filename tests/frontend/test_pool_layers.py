"""Global and adaptive pooling layers against torch: ``AdaptiveMaxPool2d`` (global max pooling
as a max pool over the plane) and ``AdaptiveAvgPool2d(1)``, forward and gradients."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError, ShapeError


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_global_pooling_head_trains_as_torch(pool, backend):
    cf.manual_seed(0)
    head = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), head, nn.Flatten(), nn.Linear(5, 3))
    x = np.random.default_rng(1).standard_normal((3, 2, 7, 6)).astype(np.float32)
    y = np.array([2, 0, 1])
    net = cf.compile(model, (None, 2, 7, 6), backend=backend)
    twin = to_torch(model)
    assert_close(net(x), twin(torch.from_numpy(x)), what=pool)
    step = cf.compile_train(model, (None, 2, 7, 6), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for key, p in twin.named_parameters():
        assert_close(grads[key], p.grad, rtol=1e-3, atol_scale=1e-4, what=key)
    assert_close(grads["input"], xt.grad, rtol=1e-3, atol_scale=1e-4, what="input")


def test_adaptive_max_pool_sizes_that_divide():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 4)).astype(np.float32)
    t = torch.from_numpy(x)
    for size in [(3, 2), (2, None), 1]:
        want = torch.nn.functional.adaptive_max_pool2d(t, size)
        assert_close(F.adaptive_max_pool2d(x, size, backend="reference"), want, what=str(size))


def test_adaptive_max_pool_refuses_what_it_cannot_do():
    x = np.zeros((1, 1, 5, 4), np.float32)
    with pytest.raises(ShapeError, match="output size 2 must divide the input size 5"):
        F.adaptive_max_pool2d(x, 2, backend="reference")
    with pytest.raises(AttributeValueError, match="AdaptiveMaxPool2d: return_indices=True is not supported"):
        nn.AdaptiveMaxPool2d(1, return_indices=True)
