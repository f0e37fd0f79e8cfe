"""Pooling layers against torch: ``AdaptiveMaxPool2d`` (global max pooling as a max pool over
the plane), ``AdaptiveAvgPool2d(1)``, ``MaxPool2d(return_indices=True)`` with ``MaxUnpool2d``."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

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
    assert_gradients_match_torch(loss, grads, twin, x, y)


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


# -- MaxPool2d(return_indices=True) and MaxUnpool2d ---------------------------------------------
class UnpoolNet(nn.Module):
    """SegNet's encoder/decoder step: pool with indices, unpool to the pre-pool size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.conv2 = nn.Conv2d(4, 2, 3)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        p, indices = self.pool(h)
        u = self.unpool(p, indices, output_size=h.shape)
        return self.fc(F.flatten(self.conv2(u), 1))


class TorchUnpoolNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2, return_indices=True)
        self.unpool = torch.nn.MaxUnpool2d(2)
        self.conv2 = torch.nn.Conv2d(4, 2, 3)
        self.fc = torch.nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        p, indices = self.pool(h)
        u = self.unpool(p, indices, output_size=h.shape)
        return self.fc(torch.flatten(self.conv2(u), 1))


def test_pool_indices_and_unpool_train_as_torch(backend):
    cf.manual_seed(4)
    model = UnpoolNet()
    twin = TorchUnpoolNet()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = np.random.default_rng(5).standard_normal((2, 2, 7, 7)).astype(np.float32)
    y = np.array([2, 0])
    net = cf.compile(model, (None, 2, 7, 7), backend=backend)
    assert_close(net(x), twin(torch.from_numpy(x)), what="forward")
    step = cf.compile_train(model, (None, 2, 7, 7), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_functional_indices_match_torch():
    x = np.random.default_rng(6).standard_normal((2, 3, 7, 6)).astype(np.float32)
    values, indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    want, want_indices = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), 3, 2, 1, ceil_mode=True, return_indices=True
    )
    assert indices.dtype == np.int64 and np.array_equal(indices, want_indices.numpy())
    assert_close(values, want, what="values")
    back = F.max_unpool2d(values, indices, 3, 2, 1, output_size=(7, 6))
    assert_close(
        back, torch.nn.functional.max_unpool2d(want, want_indices, 3, 2, 1, output_size=(7, 6)), what="unpool"
    )


def test_unpool_refuses_bad_indices_and_sizes():
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ShapeError, match=r"indices must lie in \[0, 16\)"):
        F.max_unpool2d(x, np.array([[[[0, 1], [2, 16]]]]), 2)
    with pytest.raises(ShapeError, match="must lie strictly within stride"):
        F.max_unpool2d(x, np.zeros((1, 1, 2, 2), np.int64), 2, output_size=(6, 4))
