"""Whole models compiled with convforge agree with PyTorch, forward and gradients."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.models import alexnet, deep_mnist, lenet5


class ResidualConcat(nn.Module):
    """conv -> BN -> ReLU, a residual add, a concat of two branches, global pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same")
        self.branch = nn.Conv2d(8, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = h + F.relu(self.conv2(h))
        h = cf.concat([h, self.branch(h)], dim=1)
        return self.fc(F.flatten(self.pool(h), 1))


class TorchResidualConcat(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding="same")
        self.branch = torch.nn.Conv2d(8, 4, 1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + torch.relu(self.conv2(h))
        h = torch.cat([h, self.branch(h)], dim=1)
        return self.fc(torch.flatten(self.pool(h), 1))


def _torch_twin(model):
    if isinstance(model, ResidualConcat):
        twin = TorchResidualConcat()
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
        return twin
    return to_torch(model)


def _randomise_bn(model, rng):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.normal(size=m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, size=m.num_features)
            m.weight[...] = rng.uniform(0.5, 1.5, size=m.num_features)
            m.bias[...] = rng.normal(size=m.num_features)


def relu6_net() -> nn.Module:
    """conv -> ReLU6 -> max pool twice (fused with the argmax in training), weights scaled so
    that activations reach both sides of the clip."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU6(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 5 * 5, 10),
    )  # fmt: skip
    model[0].weight[...] *= 12.0
    return model


MODELS = {
    "lenet5": (lenet5, (1, 28, 28)),
    "deep_mnist": (lambda: deep_mnist(seed=0), (1, 28, 28)),
    "residual_concat": (ResidualConcat, (3, 12, 12)),
    "relu6_net": (relu6_net, (1, 26, 26)),
}


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_torch(name, backend, rng):
    build, shape = MODELS[name]
    cf.manual_seed(1)
    model = build()
    _randomise_bn(model, rng)
    x = rng.random((3, *shape), dtype=np.float32)
    net = cf.compile(model, input_shape=(None, *shape), backend=backend)
    twin = _torch_twin(model).eval()
    assert_close(net(x), twin(torch.from_numpy(x)), what=name)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_torch(name, backend, rng):
    build, shape = MODELS[name]
    cf.manual_seed(2)
    model = build()
    x = rng.random((4, *shape), dtype=np.float32)
    out_classes = {"lenet5": 10, "deep_mnist": 10, "residual_concat": 5, "relu6_net": 10}[name]
    y = rng.integers(0, out_classes, size=4)
    step = cf.compile_train(model, (None, *shape), loss="cross_entropy", backend=backend)
    step.eval()  # deterministic: dropout off, BN on running statistics
    loss, grads = step.gradients(x, y)

    twin = _torch_twin(model).eval()
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_training_mode_gradients_and_running_stats_match_torch(backend, rng):
    cf.manual_seed(3)
    model = ResidualConcat()
    x = rng.random((6, 3, 12, 12), dtype=np.float32)
    y = rng.integers(0, 5, size=6)
    step = cf.compile_train(model, (None, 3, 12, 12), optimizer=cf.optim.SGD(lr=0.1), backend=backend)
    twin = _torch_twin(model).train()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)

    loss = step(x, y)
    opt.zero_grad()
    ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    ref.backward()
    opt.step()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    ours = step.state_dict()
    for key, value in twin.state_dict().items():
        assert_close(ours[key], value, rtol=1e-3, atol_scale=1e-4, what=key)


def test_alexnet_shape_inference_without_running():
    model = alexnet()
    assert 59e6 < model.num_parameters() < 63e6  # "about 60 million"
    from convforge.frontend.compile import trace_model
    from convforge.ir.types import TensorType

    graph, _ = trace_model(model, TensorType("f32", ("N", 3, 227, 227)), training=False)
    shapes = [tuple(n.output.shape[1:]) for n in graph.nodes if n.op in ("conv2d", "max_pool2d", "linear")]
    assert shapes == [
        (96, 55, 55),
        (96, 27, 27),
        (256, 27, 27),
        (256, 13, 13),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
        (256, 6, 6),
        (4096,),
        (4096,),
        (1000,),
    ]
