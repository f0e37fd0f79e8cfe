"""Training batch norm fused with its conv on numba-cpu (the NormForward / NormBackward regions):
three SGD-momentum steps agree with torch (float32) and with the reference backend (float64)."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, to_torch

import convforge as cf
from convforge import nn, optim
from convforge.backends.numba_cpu import BACKEND
from convforge.models.zoo import BasicBlock
from tests.conv_algorithms import vgg_block

STEPS = 3


def conv_bn_relu_pool() -> nn.Module:
    """1 -> 17 channels, conv -> BN -> ReLU -> max pool, then conv (bias) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(1, 17, 3, padding=1, bias=False), nn.BatchNorm2d(17), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(17, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.Flatten(),
        nn.Linear(4 * 3 * 4, 3),
    )  # fmt: skip


class Block(nn.Module):
    """A ResNet basic block with a 1x1-conv + BN shortcut, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.block = BasicBlock(3, 5, stride=2)
        self.fc = nn.Linear(5 * 4 * 5, 3)

    def forward(self, x):
        return self.fc(F.flatten(self.block(x), 1))


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        t = torch.nn
        self.block = t.Module()
        self.block.conv1 = t.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
        self.block.bn1 = t.BatchNorm2d(5)
        self.block.conv2 = t.Conv2d(5, 5, 3, padding=1, bias=False)
        self.block.bn2 = t.BatchNorm2d(5)
        self.block.shortcut = t.Sequential(t.Conv2d(3, 5, 1, stride=2, bias=False), t.BatchNorm2d(5))
        self.fc = t.Linear(5 * 4 * 5, 3)

    def forward(self, x):
        b = self.block
        out = torch.relu(b.bn1(b.conv1(x)))
        out = torch.relu(b.bn2(b.conv2(out)) + b.shortcut(x))
        return self.fc(torch.flatten(out, 1))


# name -> (model, input shape without the batch, batch)
MODELS = {
    "conv_bn_relu_pool": (conv_bn_relu_pool, (1, 7, 9), 3),
    "basic_block": (Block, (3, 7, 9), 2),
    "vgg_block": (vgg_block, (3, 17, 15), 2),
}
SGD = dict(lr=0.1, momentum=0.9)


def _twin(model: nn.Module) -> torch.nn.Module:
    twin = TorchBlock() if isinstance(model, Block) else to_torch(model)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twin


def _data(shape, batch, dtype):
    rng = np.random.default_rng(7)
    return [
        (rng.standard_normal((batch, *shape)).astype(dtype), rng.integers(0, 3, size=batch))
        for _ in range(STEPS)
    ]


def _train(step, data) -> list[float]:
    return [step(x, y) for x, y in data]


def _fusions(graph) -> list[list[str]]:
    return [[n.op for n in node.region.nodes] for node in graph.nodes if node.op == "fusion"]


@pytest.mark.parametrize("name", MODELS)
def test_training_matches_torch_f32(name):
    build, shape, batch = MODELS[name]
    cf.manual_seed(11)
    model = build()
    twin = _twin(model).train()
    step = cf.compile_train(model, (None, *shape), optimizer=optim.SGD(**SGD), backend="numba-cpu")
    data = _data(shape, batch, np.float32)
    losses = _train(step, data)
    opt = torch.optim.SGD(twin.parameters(), **SGD)
    for (x, y), loss in zip(data, losses):
        opt.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) <= 1e-4 * max(1.0, abs(ref.item()))
    ours = step.state_dict()
    for key, value in twin.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert_close(ours[key], value, rtol=1e-3, atol_scale=1e-4, what=key)


@pytest.mark.parametrize("name", MODELS)
def test_training_matches_reference_f64(name):
    build, shape, batch = MODELS[name]
    cf.manual_seed(12)
    kw = dict(input_shape=(None, *shape), optimizer=optim.SGD(**SGD), dtype="float64")
    step = cf.compile_train(build(), backend="numba-cpu", **kw)
    ref = cf.compile_train(build(), backend="reference", **kw)
    ref.load_state_dict(step.state_dict())
    data = _data(shape, batch, np.float64)
    assert _train(step, data) == pytest.approx(_train(ref, data), rel=1e-10)
    ours, theirs = step.state_dict(), ref.state_dict()
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-9, atol=1e-11, err_msg=key)


def test_the_fusion_fires_and_can_be_turned_off(monkeypatch):
    cf.manual_seed(13)
    step = cf.compile_train(Block(), (None, 3, 7, 9), optimizer=optim.SGD(**SGD), backend="numba-cpu")
    regions = _fusions(step.graph)
    # conv1 (and its ReLU), conv2 and the shortcut conv, each with its batch norm
    assert regions.count(["conv2d", "batch_norm_train", "relu"]) == 1
    assert regions.count(["conv2d", "batch_norm_train"]) == 2
    # conv1's input gradient is the data's: not computed; the others feed the add
    backward = [r for r in regions if "batch_norm_backward" in r]
    assert sorted(backward) == sorted(
        [
            ["relu_backward", "batch_norm_backward", "conv2d_backward_weight"],
            ["batch_norm_backward", "conv2d_backward_weight", "conv2d_backward_input"],
            ["batch_norm_backward", "conv2d_backward_weight"],
        ]
    )
    assert not any(n.op in ("batch_norm_train", "batch_norm_backward") for n in step.graph.nodes)

    off = BACKEND.training_pipeline.replace("conv_backward=true", "conv_backward=true,batch_norm=false")
    monkeypatch.setattr(BACKEND, "training_pipeline", off)
    plain = cf.compile_train(Block(), (None, 3, 7, 9), optimizer=optim.SGD(**SGD), backend="numba-cpu")
    assert not any("batch_norm_train" in r or "batch_norm_backward" in r for r in _fusions(plain.graph))


def test_batch_of_one_is_refused_as_torch_does():
    # a 1x1 conv output at batch 1: one value per channel
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    step = cf.compile_train(model, (None, 2, 3, 3), optimizer=optim.SGD(**SGD), backend="numba-cpu")
    with pytest.raises(cf.ConvforgeError, match="more than 1 value per channel"):
        step(np.zeros((1, 2, 3, 3), np.float32), np.array([0]))
