"""Direct convolution (generated register-blocked micro-kernels) on numba-cpu: agreement with
the f64 reference and torch f32 on odd shapes (every kernel width it is written out for,
padding, dilation, channel counts off the block of 4, batch 1 with the channel split),
conv1d, fused epilogues, the training forward, and the cost model's choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convforge as cf
from convforge import nn
from convforge.backends.numba_cpu.codegen import load_keyed
from convforge.backends.numba_cpu.kernels import conv as conv_kernels
from convforge.backends.numba_cpu.kernels import direct
from convforge.frontend.compile import trace_model
from convforge.ir.types import TensorType
from tests.conv_algorithms import assert_agree, assert_matches_reference_f64_and_torch_f32
from tests.torch_bridge import assert_gradients_match_torch, to_torch

# (batch, in channels, out channels, H, W, kernel, padding, dilation): out channels 1, 3, 5,
# 9 and 17 leave ragged blocks of 4; batch 1 and 3 split channels over 2 threads
SHAPES = [
    (1, 1, 1, 5, 5, (1, 1), 0, 1),
    (2, 3, 17, 7, 9, (3, 3), 1, 1),
    (1, 2, 5, 6, 11, (5, 5), 2, 1),
    (3, 1, 9, 9, 7, (2, 7), (0, 3), 1),
    (2, 5, 4, 10, 8, (3, 3), 2, 2),
    (1, 3, 3, 8, 8, (4, 6), (1, 2), (2, 1)),
    (4, 17, 6, 6, 5, (3, 2), 0, 1),
]


@pytest.fixture
def use_direct(monkeypatch):
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "direct")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_f64_and_torch_f32(use_direct, shape):
    n, c, o, h, w, kernel, padding, dilation = shape
    nn.manual_seed(n * 1000 + c * 100 + o * 10 + h + w)
    model = nn.Sequential(nn.Conv2d(c, o, kernel, padding=padding, dilation=dilation))
    x = np.random.default_rng(0).standard_normal((n, c, h, w))
    assert_matches_reference_f64_and_torch_f32(model, x, "direct")


def test_conv1d_runs_as_one_row(use_direct):
    nn.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(3, 6, 5, padding=2, dilation=1), nn.ReLU())
    x = np.random.default_rng(1).standard_normal((2, 3, 19)).astype(np.float32)
    net = cf.compile(model, (None, 3, 19), backend="numba-cpu")
    assert "# conv algorithm: direct" in net.source()
    with torch.no_grad():
        expected = to_torch(model)(torch.from_numpy(x)).numpy()
    assert_agree(net(x), expected, "f32", "direct", "numba-cpu", "torch")


@pytest.mark.parametrize("batch", [1, 5])
def test_fused_epilogues_bn_relu_pool(use_direct, batch):
    nn.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(10, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
    )  # fmt: skip
    for name, p in model.named_buffers():
        if name.endswith("running_var"):
            p[...] = np.linspace(0.5, 2.0, p.size, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((batch, 3, 9, 11)).astype(np.float32)
    net = cf.compile(model, (None, 3, 9, 11), backend="numba-cpu")
    assert net.source().count("# conv algorithm: direct") == 2
    twin = to_torch(model).eval()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert_agree(net(x), expected, "f32", "direct", "numba-cpu", "torch")


@pytest.mark.parametrize("batch", [1, 3])
def test_training_forward_gradients_match_torch(use_direct, batch):
    """The training program's forward conv (with the argmax for the fused pool) runs direct."""
    nn.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 7, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(7 * 3 * 4, 10),
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((batch, 1, 10, 12)).astype(np.float32)
    y = np.arange(batch) % 10
    step = cf.compile_train(model, (None, 1, 10, 12), optimizer=cf.optim.SGD(lr=0.1), backend="numba-cpu")
    assert "# conv algorithm: direct" in step.source()
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, to_torch(model), x, y)


def _conv_node(c: int, o: int, hw: int, k: int = 3, **attrs):
    model = nn.Sequential(nn.Conv2d(c, o, k, **attrs))
    graph, _ = trace_model(model, TensorType("f32", ("N", c, hw, hw)), training=False)
    return next(node for node in graph.nodes if node.op == "conv2d")


def test_cost_model_and_override(monkeypatch):
    monkeypatch.delenv(conv_kernels.ALGO_ENV, raising=False)
    assert conv_kernels.conv_algorithm(_conv_node(1, 6, 28, 5, padding=2))[0] == "direct"
    assert conv_kernels.conv_algorithm(_conv_node(8, 16, 12, 5))[0] == "direct"
    assert conv_kernels.conv_algorithm(_conv_node(32, 64, 14, 5, padding=2))[0] == "winograd"
    assert conv_kernels.conv_algorithm(_conv_node(32, 64, 14, 7, padding=3))[0] == "im2col"
    assert conv_kernels.conv_algorithm(_conv_node(64, 64, 16, padding=1))[0] == "winograd"
    assert conv_kernels.conv_algorithm(_conv_node(3, 32, 32, stride=2))[0] == "im2col"
    assert conv_kernels.conv_algorithm(_conv_node(4, 8, 32, groups=2))[0] == "im2col"
    wide = direct.MAX_WIDTH + 2
    algo, why = conv_kernels.conv_algorithm(_conv_node(3, 8, 32, wide))
    assert algo == "im2col" and f"kernel width {wide}" in why
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "direct")
    assert conv_kernels.conv_algorithm(_conv_node(64, 64, 8, padding=1)) == (
        "direct",
        "CONVFORGE_CONV_ALGO=direct",
    )
    algo, why = conv_kernels.conv_algorithm(_conv_node(3, 32, 32, stride=2))
    assert algo == "im2col" and "does not apply" in why


def test_micro_kernel_refuses_another_width(use_direct):
    """The kernel is written out for one width; weights of another raise, never read past a row."""
    source = conv_kernels.forward_source([], False, "none", "direct", kw=3)
    kernel = load_keyed(conv_kernels.forward_key([], False, "none", "direct-k3"), source, "conv2d")[0].kernel
    x = np.zeros((1, 2, 6, 6), np.float32)
    w = np.zeros((4, 2, 3, 5), np.float32)
    y = np.empty((1, 4, 36), np.float32)
    with pytest.raises(ValueError, match="another kernel width"):
        kernel(x, w, b=np.zeros(4, np.float32), conv=(1, 1, 1, 1, 1, 1, 1, 6, 6),
               pool=(1, 1, 1, 1, 0, 0, 6, 6), nt=1, y=y, am=np.zeros((0, 0, 0), np.uint8))  # fmt: skip


@pytest.mark.parametrize(("batch", "out_channels"), [(0, 4), (1, 0), (0, 0)])
def test_empty_batch_or_channels_run(batch, out_channels):
    """No images or no output channels: nothing to split, nothing divided by zero."""
    source = conv_kernels.forward_source([], False, "none", "direct", kw=3)
    kernel = load_keyed(conv_kernels.forward_key([], False, "none", "direct-k3"), source, "conv2d")[0].kernel
    x = np.ones((batch, 2, 5, 5), np.float32)
    w = np.ones((out_channels, 2, 3, 3), np.float32)
    y = np.empty((batch, out_channels, 25), np.float32)
    kernel(x, w, b=np.zeros(out_channels, np.float32), conv=(1, 1, 1, 1, 1, 1, 1, 5, 5),
           pool=(1, 1, 1, 1, 0, 0, 5, 5), nt=2, y=y, am=np.zeros((0, 0, 0), np.uint8))  # fmt: skip
    assert y.shape == (batch, out_channels, 25)
