"""PyTorch's activation layers and functions (ELU, GELU, SiLU, Hardswish, Hardsigmoid, Mish,
Hardtanh, Softplus): torch agreement, eagerly and compiled, and their place in fused chains.

Inference fuses conv -> BN -> any pointwise activation -> pool (the epilogue takes every
unary op with a scalar expression); training keeps one argmax byte per pooled output for
the monotone ones (elu with alpha >= 0, hardtanh, hardsigmoid, softplus), whose backward
reads the pooled output.
"""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError

LAYERS = {
    "ELU": lambda: nn.ELU(),
    "ELU-alpha": lambda: nn.ELU(alpha=0.4),
    "GELU": lambda: nn.GELU(),
    "GELU-tanh": lambda: nn.GELU(approximate="tanh"),
    "SiLU": lambda: nn.SiLU(),
    "Hardswish": lambda: nn.Hardswish(),
    "Hardsigmoid": lambda: nn.Hardsigmoid(),
    "Mish": lambda: nn.Mish(),
    "Hardtanh": lambda: nn.Hardtanh(-0.5, 2.0),
    "Softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_torch_eagerly(name):
    layer = LAYERS[name]()
    x = (np.random.default_rng(0).standard_normal((2, 3, 5)) * 4).astype(np.float32)
    assert_close(layer(x), to_torch(layer)(torch.from_numpy(x)), rtol=1e-5, what=name)


def test_functional_names_and_defaults_are_pytorchs():
    x = (np.random.default_rng(1).standard_normal((4, 6)) * 4).astype(np.float32)
    t = torch.from_numpy(x)
    TF = torch.nn.functional
    pairs = [
        (F.elu(x, 0.5), TF.elu(t, 0.5)),
        (F.gelu(x, approximate="tanh"), TF.gelu(t, approximate="tanh")),
        (F.hardtanh(x, min_val=-2.0, max_val=1.5), TF.hardtanh(t, min_val=-2.0, max_val=1.5)),
        (F.softplus(x, beta=0.5, threshold=2.0), TF.softplus(t, beta=0.5, threshold=2.0)),
        (F.silu(x), TF.silu(t)),
        (F.hardswish(x), TF.hardswish(t)),
        (F.hardsigmoid(x), TF.hardsigmoid(t)),
        (F.mish(x), TF.mish(t)),
        (F.gelu(x), TF.gelu(t)),
    ]
    for i, (ours, theirs) in enumerate(pairs):
        assert_close(ours, theirs, rtol=1e-5, what=f"pair {i}")


def test_inplace_writes_the_input_as_pytorch_does():
    x = np.array([-2.0, 0.5, 3.0], np.float32)
    out = F.hardtanh(x, inplace=True)
    assert out is x and x.tolist() == [-1.0, 0.5, 1.0]
    y = np.array([-2.0, 0.5], np.float32)
    assert F.elu(y) is not y and y[0] == -2.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: nn.Hardtanh(1.0, -1.0), r"Hardtanh: min_val must be <= max_val"),
        (lambda: nn.Softplus(beta=0), r"Softplus: beta must be > 0"),
        (lambda: nn.ELU(alpha="big"), r"ELU: alpha must be a number"),
        (lambda: nn.GELU("erf"), r"GELU: approximate must be 'none' or 'tanh'"),
        (lambda: F.gelu(np.zeros(2, np.float32), approximate="fast"), r"F.gelu: approximate"),
    ],
)
def test_bad_arguments_name_the_layer(build, message):
    with pytest.raises(AttributeValueError, match=message):
        build()


# -- fused chains ----------------------------------------------------------------------------
def _inference_model() -> nn.Module:
    """conv -> BN -> hardswish -> max pool, conv -> BN -> silu -> avg pool, linear -> gelu."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Hardswish(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16, 6), nn.GELU(), nn.Linear(6, 3),
    )  # fmt: skip
    rng = np.random.default_rng(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.normal(size=4)
            m.running_var[...] = rng.uniform(0.5, 2.0, size=4)
            m.weight[...] = rng.uniform(0.5, 1.5, size=4)
            m.bias[...] = rng.normal(size=4)
    return model


def _fused(graph) -> list[list[str]]:
    return [[n.op for n in node.region.nodes] for node in graph.nodes if node.op == "fusion"]


@pytest.mark.parametrize("backend", ["numba-cpu", "numba-cuda"])
def test_conv_bn_activation_pool_fuse_and_agree_with_torch(backend):
    cf.manual_seed(4)
    model = _inference_model().eval()
    x = np.random.default_rng(6).standard_normal((2, 2, 8, 8)).astype(np.float32)
    net = cf.compile(model, (None, 2, 8, 8), backend=backend)
    assert _fused(net.graph) == [
        ["conv2d", "hardswish", "max_pool2d"],  # the batch norm folded into the conv
        ["conv2d", "silu", "avg_pool2d"],
        ["linear", "gelu"],
    ]
    assert_close(np.asarray(net(x)), to_torch(model).eval()(torch.from_numpy(x)), what=backend)


def _training_model(first: nn.Module, second: nn.Module) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), first, nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), second,
        nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(16, 3),
    )  # fmt: skip
    model[0].weight[...] *= 6.0  # activations on every branch (both clips of hardtanh)
    return model


TRAINING = {
    "elu, hardsigmoid": (lambda: nn.ELU(0.5), lambda: nn.Hardsigmoid()),
    "hardtanh, softplus": (lambda: nn.Hardtanh(-1.0, 1.5), lambda: nn.Softplus(beta=1.5, threshold=4.0)),
}


@pytest.mark.parametrize(
    ("pair", "backend"),
    # the simulator runs each CUDA thread in Python: one pair there, the two-attribute ones
    [*((pair, "numba-cpu") for pair in TRAINING), ("hardtanh, softplus", "numba-cuda")],
)
def test_monotone_activations_keep_the_argmax_in_training(pair, backend):
    cf.manual_seed(7)
    first, second = (make() for make in TRAINING[pair])
    model = _training_model(first, second)
    step = cf.compile_train(model, (None, 2, 8, 8), loss="cross_entropy", backend=backend)
    acts = [registry_op(m) for m in (first, second)]
    regions = _fused(step.graph_for("grad"))
    for act in acts:
        assert ["conv2d", act, "max_pool2d_argmax"] in regions, regions
        assert any(r[:2] == [f"{act}_backward", "max_pool2d_backward_argmax"] for r in regions), regions
    x = np.random.default_rng(8).standard_normal((2, 2, 8, 8)).astype(np.float32)
    y = np.array([0, 2])
    loss, grads = step.gradients(x, y)
    twin = to_torch(model)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def registry_op(layer: nn.Module) -> str:
    return {nn.ELU: "elu", nn.Hardsigmoid: "hardsigmoid", nn.Hardtanh: "hardtanh", nn.Softplus: "softplus"}[
        type(layer)
    ]
