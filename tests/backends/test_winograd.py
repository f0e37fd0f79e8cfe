"""Winograd F(2x2, 3x3) and F(2x2, 5x5) convolution on numba-cpu: the generated transforms
(every variant the generator makes, against a direct correlation), agreement with the f64
reference and torch on odd shapes (ragged tiles, padding 0-2, batch 1, channels 1/3/17),
fused epilogues, the training forward, and the cost model's choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convforge as cf
from convforge import nn
from convforge.backends.numba_cpu.kernels import conv as conv_kernels
from convforge.backends.numba_cpu.kernels import winograd as winograd_kernels
from convforge.errors import BackendError
from convforge.frontend.compile import trace_model
from convforge.ir.types import TensorType
from tests.conv_algorithms import assert_agree, assert_matches_reference_f64_and_torch_f32
from tests.torch_bridge import assert_gradients_match_torch, to_torch

# (batch, in channels, out channels, H, W, padding, kernel): odd H/W leave ragged 2x2 tiles
SHAPES = [
    (1, 1, 1, 5, 5, 1, 3),
    (2, 3, 17, 7, 9, 0, 3),
    (1, 17, 3, 6, 5, 1, 3),
    (2, 17, 17, 9, 7, 1, 3),
    (1, 3, 1, 3, 3, 0, 3),
    (3, 1, 17, 4, 11, 0, 3),
    (2, 3, 17, 9, 8, 2, 5),
    (1, 17, 3, 5, 7, 0, 5),
    (2, 4, 5, 6, 6, 1, 5),
]


@pytest.fixture
def winograd(monkeypatch):
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "winograd")


def _model(c: int, o: int, padding: int, seed: int, kernel: int = 3) -> nn.Module:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, o, kernel, padding=padding))


@pytest.mark.parametrize(("m", "r"), [(2, 3), (2, 5), (4, 3), (3, 3), (4, 5), (6, 3)])
def test_transform_matrices_compute_the_correlation(m, r):
    at, g, bt = (np.array(x, dtype=np.float64) for x in winograd_kernels.matrices(m, r))
    rng = np.random.default_rng(m * 10 + r)
    d, w = rng.standard_normal((m + r - 1, m + r - 1)), rng.standard_normal((r, r))
    want = np.array([[np.sum(w * d[i : i + r, j : j + r]) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T, want, rtol=1e-12, atol=1e-12)
    if m + r - 1 <= 6:  # the points 0, +-1, +-2 and infinity keep B^T integral (1/2 does not)
        assert all(x.denominator == 1 for row in winograd_kernels.matrices(m, r)[2] for x in row)


@pytest.mark.parametrize("r", sorted(winograd_kernels.TILES))
def test_generated_variant_forward_and_weight_gradient(r):
    """The variant's tiles and weight-gradient adjoint against a direct correlation, on a
    ragged plane (f64: the transforms are exact up to rounding)."""
    module = winograd_kernels.variant(winograd_kernels.tile_size(r), r)
    rng = np.random.default_rng(r)
    C, O, H, W, p = 3, 5, 9, 8, r // 2
    x, w = rng.standard_normal((1, C, H, W)), rng.standard_normal((O, C, r, r))
    ho, wo = H + 2 * p - r + 1, W + 2 * p - r + 1
    xp, v, m, rows = module.winograd_buffers(C, O, ho, wo, 1, x)
    xp[:] = 0
    xp[:, p : p + H, p : p + W] = x[0]
    u = module.transformed_weights(O, C, x)
    module.weight_transform_rows(w, 0, O, u)
    module.winograd_tiles(xp, u, ho, wo, v, m, rows)
    taps = [(i, j) for i in range(r) for j in range(r)]
    want = sum(np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i : i + ho, j : j + wo]) for i, j in taps)
    np.testing.assert_allclose(rows.reshape(O, ho, wo), want, rtol=1e-11, atol=1e-11)
    gz = rng.standard_normal((O, ho * wo))
    du = np.zeros((1, module.T, O, C))
    module.weight_grad_tiles(xp, gz, wo, ho, wo, v, m, du[0])
    gw = np.empty((O, C, r, r))
    module.weight_grad_from_parts(du, gw)
    g3 = gz.reshape(O, ho, wo)
    want_gw = np.empty_like(gw)
    for i, j in taps:
        want_gw[:, :, i, j] = np.einsum("ohw,chw->oc", g3, xp[:, i : i + ho, j : j + wo])
    np.testing.assert_allclose(gw, want_gw, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_f64_and_torch_f32(winograd, shape):
    n, c, o, h, w, padding, kernel = shape
    model = _model(c, o, padding, seed=sum(shape), kernel=kernel)
    x = np.random.default_rng(0).standard_normal((n, c, h, w))
    assert_matches_reference_f64_and_torch_f32(model, x, "winograd")


def test_fused_epilogue_bn_relu_pool_batch_1(winograd):
    nn.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(17, 17, 3, padding=1, bias=False), nn.BatchNorm2d(17), nn.ReLU(),
                          nn.MaxPool2d(2))  # fmt: skip
    for name, p in model.named_buffers():
        if name.endswith("running_var"):
            p[...] = np.linspace(0.5, 2.0, p.size, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((1, 17, 7, 9)).astype(np.float32)
    net = cf.compile(model, (None, 17, 7, 9), backend="numba-cpu")
    assert "# conv algorithm: winograd" in net.source()
    twin = to_torch(model).eval()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert_agree(net(x), expected, "f32", "winograd", "numba-cpu", "torch")


def test_training_forward_gradients_match_torch(winograd):
    """The training program's forward conv (with the argmax for the fused pool) runs Winograd."""
    nn.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 17, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(17, 17, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(17 * 2 * 3, 10),
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 11)).astype(np.float32)
    y = np.array([1, 7])
    step = cf.compile_train(model, (None, 3, 9, 11), optimizer=cf.optim.SGD(lr=0.1), backend="numba-cpu")
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, to_torch(model), x, y)


def _conv_node(c: int, o: int, hw: int, k: int = 3, **attrs):
    model = nn.Sequential(nn.Conv2d(c, o, k, **attrs))
    graph, _ = trace_model(model, TensorType("f32", ("N", c, hw, hw)), training=False)
    return next(node for node in graph.nodes if node.op == "conv2d")


def test_cost_model_and_override(monkeypatch):
    monkeypatch.delenv(conv_kernels.ALGO_ENV, raising=False)
    assert conv_kernels.conv_algorithm(_conv_node(32, 32, 16, padding=1))[0] == "winograd"
    algo, why = conv_kernels.conv_algorithm(_conv_node(3, 32, 32, padding=1))
    assert algo == "direct" and "3 input channels" in why
    algo, why = conv_kernels.conv_algorithm(_conv_node(32, 32, 32, padding=1))
    assert algo == "winograd" and "16x16 tiles" in why
    algo, why = conv_kernels.conv_algorithm(_conv_node(12, 12, 32, padding=1))
    assert algo == "direct" and "32x32 plane" in why  # too few channels for Winograd
    assert conv_kernels.small_batch_algorithm(_conv_node(32, 32, 16, padding=1))[0] == "direct"
    assert conv_kernels.small_batch_algorithm(_conv_node(32, 32, 15, padding=1))[0] == "im2col"
    assert conv_kernels.small_batch_algorithm(_conv_node(32, 32, 32, stride=2))[0] == "im2col"
    assert conv_kernels.conv_algorithm(_conv_node(64, 64, 4, padding=1))[0] == "im2col"  # 2x2 tiles
    assert conv_kernels.conv_algorithm(_conv_node(32, 32, 16, stride=2))[0] == "im2col"
    assert conv_kernels.conv_algorithm(_conv_node(32, 32, 16, dilation=2))[0] == "im2col"
    assert conv_kernels.conv_algorithm(_conv_node(4, 32, 16, dilation=2))[0] == "direct"
    assert conv_kernels.conv_algorithm(_conv_node(32, 32, 16, groups=2))[0] == "im2col"
    algo, why = conv_kernels.conv_algorithm(_conv_node(32, 64, 14, k=5, padding=2))
    assert algo == "winograd" and why.startswith("F(2x2, 5x5), 32 -> 64 channels, 7x7 tiles: 2.78x fewer")
    algo, why = conv_kernels.conv_algorithm(_conv_node(32, 32, 16, k=7, stride=2))
    assert algo == "im2col" and "7x7 kernel: winograd is for 3x3 and 5x5" in why
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "im2col")
    assert conv_kernels.conv_algorithm(_conv_node(32, 32, 32, padding=1)) == (
        "im2col",
        "CONVFORGE_CONV_ALGO=im2col",
    )
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "winograd")
    algo, why = conv_kernels.conv_algorithm(_conv_node(32, 32, 16, stride=2))
    assert algo == "im2col" and "does not apply" in why
    assert conv_kernels.conv_algorithm(_conv_node(1, 1, 3))[0] == "winograd"
    assert conv_kernels.small_batch_algorithm(_conv_node(32, 32, 16, padding=1))[0] == "im2col"
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "fft")
    with pytest.raises(BackendError, match="CONVFORGE_CONV_ALGO='fft'.*auto, im2col, winograd, direct"):
        conv_kernels.conv_algorithm(_conv_node(32, 32, 16))


def test_source_names_the_algorithm_and_why(monkeypatch):
    monkeypatch.delenv(conv_kernels.ALGO_ENV, raising=False)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1), nn.MaxPool2d(4),
        nn.Conv2d(12, 16, 1), nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
        nn.Conv2d(32, 9, 3, padding=1),
    )  # fmt: skip
    source = cf.compile(model, (None, 3, 64, 64), backend="numba-cpu").source()
    assert "# conv algorithm: direct (3 input channels: im2col's GEMM would be thin (K = 27)" in source
    assert "# conv algorithm: direct (3x3 on a 64x64 plane: at least 1024 outputs for direct" in source
    small = "# conv algorithm: direct, fewer images than threads: they split the channels (a 16x16 plane"
    assert small in source
    assert "# conv algorithm: im2col (32x16x64 per-tile GEMMs: below 65536 multiply-adds" in source
    assert "# conv algorithm: winograd (F(2x2, 3x3), 32 -> 32 channels, 8x8 tiles: 2.25x fewer" in source
    assert "# conv algorithm: im2col (32 -> 9 channels: fewer than 16 for winograd)" in source
