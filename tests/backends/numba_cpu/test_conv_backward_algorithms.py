"""The gradient products of conv2d -> batch_norm_train -> [activation] and of conv2d ->
activation -> max pool on numba-cpu's algorithms: the weight gradient in Winograd tiles
(3x3 and 5x5), the input gradient as the stride-1 conv of the padded output gradient
(``conv.gradient_as_conv``) on the Winograd tiles or the direct micro-kernels. Gradients
agree with the f64 reference and torch f32 on ragged tiles, every padding from 0 to past
(k-1)*d (which falls back to im2col), dilation, non-square kernels, stride 2 and batch 1;
the cost model's choices are named in the source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convforge as cf
from convforge import nn, optim
from convforge.backends.numba_cpu.kernels import conv as conv_kernels
from convforge.backends.numba_cpu.kernels import winograd as winograd_kernels
from convforge.frontend.compile import trace_model
from convforge.ir.graph import Node, Value
from convforge.ir.types import TensorType
from tests.conv_algorithms import vgg_block
from tests.torch_bridge import assert_gradients_match_torch, to_torch

# (batch, in channels, out channels, H, W, kernel, padding, dilation, stride): odd planes
# leave ragged 2x2 tiles; padding 0 and 2 put the output gradient at the edges of its padded
# layout; kernel 1 with padding 1 is wider than (k-1)*d and stride 2 is no stride-1 conv of
# the gradient (both run im2col)
SHAPES = [
    (2, 3, 5, 7, 9, 3, 1, 1, 1),
    (1, 4, 6, 6, 5, 3, 0, 1, 1),
    (3, 2, 3, 5, 8, 3, 2, 1, 1),
    (2, 3, 4, 9, 7, (5, 3), (2, 1), 1, 1),
    (2, 2, 5, 9, 9, 3, 2, 2, 1),
    (2, 3, 4, 7, 7, 1, 1, 1, 1),
    (2, 3, 4, 9, 8, 3, 1, 1, 2),
]
# 5x5 on F(2x2, 5x5) (Winograd only: a direct kernel of width 5 would cost the suite a
# compile of its own)
SHAPES_5X5 = [(2, 3, 4, 9, 7, 5, 2, 1, 1), (1, 2, 3, 6, 8, 5, 1, 1, 1)]
CASES = [(a, s) for a in ("winograd", "direct") for s in SHAPES] + [("winograd", s) for s in SHAPES_5X5]
#: the max-pool head runs the same products: ragged 3x3 tiles on each algorithm, the
#: non-square kernel and stride 2 (im2col); a subset, as every kernel variant costs the
#: suite a cold compile (5x5 is the same generated source as 3x3, run by the batch-norm head)
POOL_CASES = [CASES[0], CASES[3], CASES[6], CASES[len(SHAPES)]]
#: 10x10 leaves 25 tiles an image: Winograd's GEMMs take 2 images at a time
#: (``winograd.GROUP_COLUMNS``), and 5 images on 1 or 2 threads end on a group of 1
GROUPED = (5, 2, 3, 10, 10, 3, 1, 1, 1)
HEAD_CASES = (
    [("batch_norm", a, s) for a, s in CASES]
    + [("max_pool", a, s) for a, s in POOL_CASES]
    + [(head, "winograd", GROUPED) for head in ("batch_norm", "max_pool")]
)


def _case_id(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else value


def conv_bn(shape) -> nn.Module:
    _, c, o, _, _, kernel, padding, dilation, stride = shape
    return nn.Sequential(
        nn.Conv2d(c, o, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(o), nn.ReLU(), nn.Flatten(),
    )  # fmt: skip


def conv_pool(shape) -> nn.Module:
    _, c, o, _, _, kernel, padding, dilation, stride = shape
    return nn.Sequential(
        nn.Conv2d(c, o, kernel, stride=stride, padding=padding, dilation=dilation),
        nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
    )  # fmt: skip


def _with_head(body: nn.Module, shape) -> nn.Module:
    n, c, _, h, w = shape[:5]
    with torch.no_grad():
        features = to_torch(body)(torch.zeros(1, c, h, w)).shape[1]
    return nn.Sequential(body, nn.Linear(features, 3))


def _data(shape, dtype):
    n, c, _, h, w = shape[:5]
    rng = np.random.default_rng(sum(shape[:5]))
    return rng.standard_normal((n, c, h, w)).astype(dtype), np.arange(n) % 3


def _step(model, shape, dtype, backend="numba-cpu"):
    return cf.compile_train(
        model, (None, *shape[1:2], *shape[3:5]), optimizer=optim.SGD(lr=0.1), backend=backend,
        dtype=dtype, tiered=False,
    )  # fmt: skip


def _lines(step, what: str) -> list[str]:
    text = step.source("grad")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(f"# conv {what}")]


@pytest.mark.parametrize(("head", "algorithm", "shape"), HEAD_CASES, ids=_case_id)
def test_gradients_match_reference_f64_and_torch_f32(monkeypatch, head, algorithm, shape):
    monkeypatch.setenv(conv_kernels.ALGO_ENV, algorithm)
    cf.manual_seed(sum(shape[:5]))
    model = _with_head(conv_bn(shape) if head == "batch_norm" else conv_pool(shape), shape)
    x, y = _data(shape, np.float64)
    ours = _step(model, shape, "float64")
    loss, grads = ours.gradients(x, y)
    ref_loss, ref_grads = _step(model, shape, "float64", backend="reference").gradients(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    for key, value in ref_grads.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-9, atol=1e-11, err_msg=key)
    x32 = x.astype(np.float32)
    step = _step(model, shape, "float32")
    loss, grads = step.gradients(x32, y)
    assert_gradients_match_torch(loss, grads, to_torch(model).train(), x32, y)
    eligible = not (shape[5] == 1 or shape[8] == 2)
    taken = algorithm
    winograd_kernel = shape[5] in winograd_kernels.TILES and shape[7] == 1  # square 3x3 or 5x5
    if algorithm == "winograd" and not winograd_kernel:
        taken = "im2col"
    (input_line,) = _lines(step, "input gradient")
    assert input_line.startswith(f"# conv input gradient: {taken if eligible else 'im2col'}")
    (weight_line,) = _lines(step, "weight gradient")
    winograd_weights = algorithm == "winograd" and winograd_kernel and shape[8] == 1
    assert weight_line.startswith(f"# conv weight gradient: {'winograd' if winograd_weights else 'im2col'}")


def test_the_cost_model_puts_a_vgg_block_on_winograd():
    """The model ``test_bn_training_fusion`` trains against torch and the reference."""
    step = cf.compile_train(vgg_block(), (None, 3, 17, 15), optimizer=optim.SGD(lr=0.1), tiered=False)
    assert "# conv weight gradient: winograd" in step.source()
    assert "# conv input gradient: winograd" in step.source()


def _backward_nodes(c: int, o: int, hw: int, k: int = 3, **attrs):
    model = nn.Sequential(nn.Conv2d(c, o, k, bias=False, **attrs))
    graph, _ = trace_model(model, TensorType("f32", ("N", c, hw, hw)), training=False)
    forward = next(node for node in graph.nodes if node.op == "conv2d")
    x, w = forward.inputs[:2]
    gy = forward.outputs[0]
    weight = Node("conv2d_backward_weight", forward.attrs)
    weight.inputs, weight.outputs = [x, gy], [Value("gw", w.type, weight)]
    grad_input = Node("conv2d_backward_input", forward.attrs)
    grad_input.inputs, grad_input.outputs = [gy, w], [Value("gx", x.type, grad_input)]
    return weight, grad_input


def test_gradient_as_conv_geometry():
    _, grad_input = _backward_nodes(5, 7, 9, k=3, padding=(0, 2), dilation=(1, 2))
    as_conv = conv_kernels.gradient_as_conv(grad_input)
    # the output gradient is 7 x 5; padded by (k-1)*d - p per side it gives back 9 x 9
    assert as_conv.op == "conv2d"
    assert tuple(as_conv.inputs[1].shape) == (5, 7, 3, 3)
    assert tuple(as_conv.attrs["padding"]) == (2, 2, 2, 2)
    assert tuple(as_conv.outputs[0].shape) == ("N", 5, 9, 9)
    assert conv_kernels.gradient_as_conv(_backward_nodes(5, 7, 9, stride=2)[1]) is None
    assert conv_kernels.gradient_as_conv(_backward_nodes(5, 7, 9, k=1, padding=1)[1]) is None


def test_cost_model(monkeypatch):
    monkeypatch.delenv(conv_kernels.ALGO_ENV, raising=False)
    weight, grad_input = _backward_nodes(32, 32, 32, padding=1)
    assert conv_kernels.weight_grad_algorithm(weight)[0] == "winograd"
    # the input gradient's conv takes Winograd, as a forward conv on that plane would
    as_conv = conv_kernels.gradient_as_conv(grad_input)
    assert conv_kernels.conv_algorithm(as_conv)[0] == "winograd"
    assert conv_kernels.conv_algorithm(as_conv, gradient=True)[0] == "winograd"
    # 4x4 tiles: too few for the weight gradient's GEMMs; 3 channels: too few for Winograd
    assert conv_kernels.weight_grad_algorithm(_backward_nodes(64, 128, 8, padding=1)[0])[0] == "im2col"
    assert conv_kernels.weight_grad_algorithm(_backward_nodes(3, 32, 32, padding=1)[0])[0] == "im2col"
    # few output channels: the input gradient's conv has few input channels, but an input
    # gradient never takes direct by the cost model (only by CONVFORGE_CONV_ALGO)
    few = conv_kernels.gradient_as_conv(_backward_nodes(32, 6, 16, padding=1)[1])
    assert conv_kernels.conv_algorithm(few)[0] == "direct"
    assert conv_kernels.conv_algorithm(few, gradient=True)[0] == "im2col"
    monkeypatch.setenv(conv_kernels.ALGO_ENV, "im2col")
    assert conv_kernels.weight_grad_algorithm(weight) == ("im2col", "CONVFORGE_CONV_ALGO=im2col")
