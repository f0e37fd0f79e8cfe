"""Padding as PyTorch has it: ``F.pad`` (constant, reflect, replicate, circular; negative pads
crop), the ``*Pad1d`` / ``*Pad2d`` layers and ``Conv2d(padding_mode=...)``, against torch."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError, ConvforgeError

LAYERS = {
    "ZeroPad2d": lambda: nn.ZeroPad2d((1, 2, 0, 3)),
    "ConstantPad2d": lambda: nn.ConstantPad2d(2, -0.5),
    "ReflectionPad2d": lambda: nn.ReflectionPad2d((2, 1, 3, 0)),
    "ReplicationPad2d": lambda: nn.ReplicationPad2d(2),
    "CircularPad2d": lambda: nn.CircularPad2d((1, 3, 2, 0)),
    "ReflectionPad1d": lambda: nn.ReflectionPad1d((3, 1)),
    "ReplicationPad1d": lambda: nn.ReplicationPad1d(2),
    "ConstantPad1d": lambda: nn.ConstantPad1d((0, 2), 1.5),
}


@pytest.mark.parametrize("name", LAYERS)
def test_pad_layers_match_torch_eagerly(name):
    layer = LAYERS[name]()
    shape = (2, 3, 4, 5) if name.endswith("2d") else (2, 3, 5)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert_close(layer(x), to_torch(layer)(torch.from_numpy(x)), what=name)


def test_functional_pad_crops_and_pads_any_dim():
    x = np.random.default_rng(1).standard_normal((2, 4, 6)).astype(np.float32)
    t = torch.from_numpy(x)
    for pad, mode, value in [((1, -2, -1, 2), "constant", 3.0), ((0, 0, 1, 1, 0, 1), "constant", None)]:
        want = torch.nn.functional.pad(t, pad, mode=mode, value=value or 0.0)
        assert_close(F.pad(x, pad, mode, value), want, what=str(pad))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_padding_modes_train_as_torch(mode, backend):
    cf.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode), nn.ReLU(),
        nn.Conv2d(3, 2, 2, padding="same", padding_mode=mode), nn.Flatten(), nn.Linear(2 * 5 * 8, 3),
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 6)).astype(np.float32)
    y = np.array([2, 1])
    net = cf.compile(model, (None, 2, 5, 6), backend=backend)
    twin = to_torch(model)
    assert_close(net(x), twin(torch.from_numpy(x)), what=mode)
    step = cf.compile_train(model, (None, 2, 5, 6), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_pad_refuses_bad_arguments():
    x = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ConvforgeError, match="reflect padding of dim 3 must be at most 2"):
        F.pad(x, (3, 0), mode="reflect", backend="reference")
    with pytest.raises(AttributeValueError, match="F.pad: mode must be"):
        F.pad(x, (1, 1), mode="wrap")
    with pytest.raises(AttributeValueError, match="value applies to mode 'constant' only"):
        F.pad(x, (1, 1), mode="reflect", value=1.0)
    with pytest.raises(AttributeValueError, match="ReflectionPad2d: padding must be >= 0"):
        nn.ReflectionPad2d((1, -1, 0, 0))
    with pytest.raises(AttributeValueError, match="Conv2d: padding_mode must be one of"):
        nn.Conv2d(1, 1, 3, padding_mode="mirror")
