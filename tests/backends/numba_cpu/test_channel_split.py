"""Fewer images than threads: the fused im2col conv kernel splits the output channels instead
of the batch (``kernels/conv.py``, ``split="channels"``); every epilogue agrees with the
reference. On planes of 16x16 outputs and more a Winograd or im2col layer takes the direct
kernel at such batches (its own split is tested in ``tests/backends/test_direct_conv.py``)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import convforge as cf
from convforge import nn
from convforge.backends.numba_cpu.kernels import conv as conv_kernels


@pytest.fixture(autouse=True)
def im2col(monkeypatch):
    # these layers have 2-3 input channels, where the cost model would pick the direct kernel
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "im2col")


def layers(kind: str) -> list[nn.Module]:
    conv = {
        "pad": nn.Conv2d(3, 8, 3, padding=1),
        "stride": nn.Conv2d(3, 8, 3, stride=2, padding=1),
        "dilation": nn.Conv2d(3, 7, 3, dilation=2, padding=(2, 1)),
        "odd": nn.Conv2d(3, 5, (2, 3)),
        "nobias": nn.Conv2d(3, 9, 3, bias=False),
    }[kind]
    return [conv]


EPILOGUES = {
    "plain": lambda c: [],
    "bn-relu": lambda c: [nn.BatchNorm2d(c), nn.ReLU()],
    "relu-maxpool": lambda c: [nn.ReLU(), nn.MaxPool2d(2)],
    "tanh-avgpool": lambda c: [nn.Tanh(), nn.AvgPool2d(2, ceil_mode=True)],
}


@pytest.mark.skipif(numba.get_num_threads() < 2, reason="one thread: no batch is smaller than the threads")
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("kind", ["pad", "stride", "dilation", "odd", "nobias"])
def test_batch_one_splits_the_channels_and_agrees(kind, epilogue):
    conv = layers(kind)[0]
    model = nn.Sequential(conv, *EPILOGUES[epilogue](conv.out_channels))
    model.eval()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 11, 10), dtype=np.float32)
    net = cf.compile(model, (None, 3, 11, 10), backend="numba-cpu")
    assert "they split the channels" in net.source()
    want = cf.compile(model, (None, 3, 11, 10), backend="reference", dtype="float64")(x.astype(np.float64))
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-5)


def test_training_at_batch_one_with_a_channel_split_agrees():
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)
    )
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((1, 2, 8, 8), dtype=np.float32), np.array([2])
    ours = cf.compile_train(model, (None, 2, 8, 8), backend="numba-cpu")
    ref = cf.compile_train(model, (None, 2, 8, 8), backend="reference")
    for _ in range(3):
        np.testing.assert_allclose(ours(x, y), ref(x, y), rtol=1e-4)
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.skipif(numba.get_num_threads() < 2, reason="one thread: no batch is smaller than the threads")
def test_small_batches_of_a_winograd_layer_run_direct_and_agree(monkeypatch):
    monkeypatch.delenv(conv_kernels.ALGO_ENV)
    model = nn.Sequential(
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 8 * 8, 3),
    )  # fmt: skip
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((1, 32, 16, 16), dtype=np.float32), np.array([1])
    ours = cf.compile_train(model, (None, 32, 16, 16), backend="numba-cpu")
    ref = cf.compile_train(model, (None, 32, 16, 16), backend="reference")
    assert "conv algorithm: direct, fewer images than threads" in ours.source()
    assert "conv algorithm: winograd" in ours.source()
    for _ in range(2):
        np.testing.assert_allclose(ours(x, y), ref(x, y), rtol=1e-4)
    model.eval()
    net = cf.compile(model, (None, 32, 16, 16), backend="numba-cpu")
    assert "conv algorithm: direct, fewer images than threads" in net.source()
    want = cf.compile(model, (None, 32, 16, 16), backend="reference", dtype="float64")(x.astype(np.float64))
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-5)
