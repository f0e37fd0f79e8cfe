"""Tensor arithmetic and relayouts written as PyTorch users write them agree with torch.

* a residual model in PyTorch style (``x * 0.5 + y``, ``x - y``, ``h.mean((2, 3))``,
  ``x[:, :8]``, ``cf.cat``, ``permute``, ``amax``, ``cf.stack``): forward and gradients
  against its torch twin on the shared backends, and on numba-cuda (simulator) in a tiny
  size;
* a table of traced expressions (indexing, reshapes, reductions, scalars on either side),
  each against torch on the reference backend;
* the eager functions (``F.add`` ... ``cf.split``) on arrays;
* ``amax``'s gradient with tied maxima, as ``torch.amax`` shares it;
* fusion: a scalar op is an epilogue a conv absorbs, a broadcasting binary op is not;
* user mistakes are ``ConvforgeError`` s that say what was expected.
"""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch

import convforge as cf
from convforge import nn
from convforge.errors import ConvforgeError
from convforge.testing import available_backends


class PyTorchStyle(nn.Module):
    """A residual block and a head written with tensor operators and methods."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(56, 5)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        y = self.conv2(h)
        h = h * 0.5 + y  # a residual with a scalar
        d = h - y
        g = d[:, :8]  # channel slice
        t = d[..., 1:]  # last-dim slice
        p = h.permute(0, 2, 3, 1)  # NHWC
        m1 = g.mean((2, 3))
        m2 = t.amax(dim=(2, 3))[:, 8:]
        m3 = p.mean(dim=(1, 2))
        s = cf.stack([m1, m2], dim=1).flatten(1)  # [N, 16]
        z = cf.cat([m1 * 2, m2 / 2, 1.0 - m3, s], dim=1)  # [N, 48]
        c = h[:, 2].sum((1, 2), keepdim=True).view(-1, 1) / 64  # [N, 1]: an int index, keepdim
        z = cf.cat([z, (z[:, :8] - c) / (y.amax((2, 3))[:, :8] + 10.0)], dim=1)  # [N, 56]
        return self.fc(z)


class TorchTwin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(56, 5)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        y = self.conv2(h)
        h = h * 0.5 + y
        d = h - y
        g = d[:, :8]
        t = d[..., 1:]
        p = h.permute(0, 2, 3, 1)
        m1 = g.mean((2, 3))
        m2 = t.amax(dim=(2, 3))[:, 8:]
        m3 = p.mean(dim=(1, 2))
        s = torch.stack([m1, m2], dim=1).flatten(1)
        z = torch.cat([m1 * 2, m2 / 2, 1.0 - m3, s], dim=1)
        c = h[:, 2].sum((1, 2), keepdim=True).view(-1, 1) / 64
        z = torch.cat([z, (z[:, :8] - c) / (y.amax((2, 3))[:, :8] + 10.0)], dim=1)
        return self.fc(z)


def _twin(model: nn.Module) -> TorchTwin:
    twin = TorchTwin()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twin


def _torch_gradients(model, x, y):
    twin = _twin(model)
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y))
    loss.backward()
    return loss.item(), {k: p.grad for k, p in twin.named_parameters()}, xt.grad


def test_pytorch_style_model_forward_matches_torch(backend, rng):
    cf.manual_seed(0)
    model = PyTorchStyle()
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    net = cf.compile(model, input_shape=(None, 3, 8, 8), backend=backend)
    assert_close(net(x), _twin(model)(torch.from_numpy(x)), what="logits")


def test_pytorch_style_model_gradients_match_torch(backend, rng):
    cf.manual_seed(1)
    model = PyTorchStyle()
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, size=4)
    step = cf.compile_train(model, (None, 3, 8, 8), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    ref, want, want_x = _torch_gradients(model, x, y)
    assert abs(loss - ref) <= 1e-5 * max(1.0, abs(ref))
    for key, g in want.items():
        assert_close(grads[key], g, rtol=1e-3, atol_scale=1e-4, what=key)
    assert_close(grads["input"], want_x, rtol=1e-3, atol_scale=1e-4, what="input")


def test_pytorch_style_model_trains_like_torch(backend, rng):
    cf.manual_seed(5)
    model = PyTorchStyle()
    twin = _twin(model)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 5, size=4)
    step = cf.compile_train(
        model, (None, 3, 8, 8), optimizer=cf.optim.SGD(lr=0.1, momentum=0.9), backend=backend
    )
    opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = step(x, y)
        opt.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) <= 1e-4 * max(1.0, abs(ref.item()))
    for key, value in twin.state_dict().items():
        assert_close(step.state_dict()[key], value, rtol=1e-3, atol_scale=1e-4, what=key)


class Tiny(nn.Module):
    """The same idioms at a size the CUDA simulator runs in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = h * 0.5 + (1.0 - h)[:, :, ::2].amax(2, keepdim=True)
        z = cf.cat([h[:, :2].mean((2, 3)), h.permute(0, 2, 3, 1).sum((1, 2))[:, 2:] / 8], dim=1)
        return self.fc(cf.stack([z, -z], dim=1).flatten(1))


class TinyTwin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h * 0.5 + (1.0 - h)[:, :, ::2].amax(2, keepdim=True)
        z = torch.cat([h[:, :2].mean((2, 3)), h.permute(0, 2, 3, 1).sum((1, 2))[:, 2:] / 8], dim=1)
        return self.fc(torch.stack([z, -z], dim=1).flatten(1))


@pytest.mark.skipif("numba-cuda" not in available_backends(), reason="numba-cuda is not available here")
def test_tiny_model_gradients_match_torch_on_numba_cuda(rng, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "convforge-cuda-cache"))
    cf.manual_seed(2)
    model = Tiny()
    twin = TinyTwin()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    y = np.array([0, 2])
    step = cf.compile_train(model, (None, 2, 4, 4), loss="cross_entropy", backend="numba-cuda")
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)


# -- traced expressions, one by one, against torch (reference backend) ---------------------
class Expr(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _lib(x):
    """``convforge`` for a traced tensor, ``torch`` for a torch one: ``_lib(x).cat``."""
    return torch if isinstance(x, torch.Tensor) else cf


EXPRESSIONS = {
    "x[:, :8]": lambda x: x[:, :2],
    "x[..., 1:]": lambda x: x[..., 1:],
    "x[:, 2]": lambda x: x[:, 2],
    "x[:, -1, ::2, 1:3]": lambda x: x[:, -1, ::2, 1:3],
    "x[:, None, 1]": lambda x: x[:, None, 1],
    "x[..., None]": lambda x: x[..., None],
    "x[:, 1:100]": lambda x: x[:, 1:100],
    "x + 1.0": lambda x: x + 1.0,
    "2 + x": lambda x: 2 + x,
    "x - 0.5": lambda x: x - 0.5,
    "1.0 - x": lambda x: 1.0 - x,
    "x * 3": lambda x: x * 3,
    "0.5 * x": lambda x: 0.5 * x,
    "x / 4": lambda x: x / 4,
    "2 / (x * x + 1)": lambda x: 2 / (x * x + 1),
    "1 / (x * x + 1)": lambda x: 1 / (x * x + 1),
    "-x": lambda x: -x,
    "x - x.mean(1, keepdim=True)": lambda x: x - x.mean(1, keepdim=True),
    "x / x.amax((2, 3), keepdim=True)": lambda x: x / (x.amax((2, 3), keepdim=True) + 5),
    "x * x[:, :1]": lambda x: x * x[:, :1],
    "x.sum()": lambda x: x.sum(),
    "x.mean()": lambda x: x.mean(),
    "x.amax()": lambda x: x.amax(),
    "x.sum(-1)": lambda x: x.sum(-1),
    "x.view(x.size(0), -1)": lambda x: x.view(x.size(0), -1),
    "x.reshape(-1, 3, 20)": lambda x: x.reshape(-1, 3, 20),
    "x.flatten(2)": lambda x: x.flatten(2),
    "x.flatten(1, 2)": lambda x: x.flatten(1, 2),
    "x.transpose(1, 3)": lambda x: x.transpose(1, 3),
    "x.permute(0, 3, 1, 2)": lambda x: x.permute(0, 3, 1, 2),
    "x.transpose(-1, -2).contiguous()": lambda x: x.transpose(-1, -2).contiguous(),
    "x[:, :1].squeeze(1)": lambda x: x[:, :1].squeeze(1),
    "x[:, :1].squeeze()": lambda x: x[:, :1].squeeze(),
    "x.unsqueeze(2)": lambda x: x.unsqueeze(2),
    "x.unsqueeze(-1)": lambda x: x.unsqueeze(-1),
    "x.split(2, 1)": lambda x: x.split(2, 1)[1],
    "x.split([1, 2], 1)": lambda x: x.split([1, 2], 1)[0] * x.split([2, 1], 1)[1],
    "cat dim=-1": lambda x: _lib(x).cat([x, -x], dim=-1),
    "stack dim=2": lambda x: _lib(x).stack([x, x * 2], dim=2),
}


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_traced_expression_matches_torch(name, rng):
    fn = EXPRESSIONS[name]
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    net = cf.compile(Expr(fn), input_shape=(None, 3, 4, 5), backend="reference")
    want = fn(torch.from_numpy(x))
    got = net(x)
    assert got.shape == tuple(want.shape), f"{name}: shape {got.shape} != {tuple(want.shape)}"
    assert_close(got, want, rtol=1e-5, what=name)


def test_shape_dim_and_size_while_tracing():
    seen = {}

    def fn(x):
        seen.update(shape=x.shape, dim=x.dim(), size=x.size(), size1=x.size(1), last=x.size(-1))
        return x

    cf.compile(Expr(fn), input_shape=(None, 3, 4, 5), backend="reference")
    assert seen == {"shape": ("N", 3, 4, 5), "dim": 4, "size": ("N", 3, 4, 5), "size1": 3, "last": 5}


# -- eager functions on arrays -------------------------------------------------------------
@pytest.mark.parametrize("be", ["reference", "numba-cpu"])
def test_eager_functions_match_torch(be, rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    c = rng.standard_normal((3, 1, 1)).astype(np.float32)
    tx, tc = torch.from_numpy(x), torch.from_numpy(c)
    checks = [
        (F.add(x, c, backend=be), tx + tc),
        (F.add(x, c, alpha=2, backend=be), torch.add(tx, tc, alpha=2)),
        (F.sub(x, c, backend=be), tx - tc),
        (F.sub(1.0, x, backend=be), 1.0 - tx),
        (F.mul(x, 0.5, backend=be), tx * 0.5),
        (F.div(x, c * c + 1, backend=be), tx / (tc * tc + 1)),
        (F.div(2.0, x * x + 1, backend=be), 2.0 / (tx * tx + 1)),
        (F.neg(x, backend=be), -tx),
        (F.add_n([x, c, x[:1]], backend=be), tx + tc + tx[:1]),
        (cf.sum(x, (0, 2), backend=be), tx.sum((0, 2))),
        (cf.mean(x, backend=be), tx.mean()),
        (cf.amax(x, -1, keepdim=True, backend=be), tx.amax(-1, keepdim=True)),
        (cf.permute(x, (0, 2, 3, 1), backend=be), tx.permute(0, 2, 3, 1)),
        (cf.transpose(x, 1, 2, backend=be), tx.transpose(1, 2)),
        (cf.squeeze(x[:, :1], backend=be), tx[:, :1].squeeze()),
        (cf.unsqueeze(x, 1, backend=be), tx.unsqueeze(1)),
        (cf.cat([x, x], backend=be), torch.cat([tx, tx])),
        (cf.stack([x, x], dim=-1, backend=be), torch.stack([tx, tx], dim=-1)),
        (cf.reshape(x, (2, -1), backend=be), tx.reshape(2, -1)),
        *zip(cf.split(x, 2, dim=2, backend=be), torch.split(tx, 2, dim=2)),
    ]
    for i, (got, want) in enumerate(checks):
        assert_close(got, want, rtol=1e-5, what=f"check {i}")


# -- amax with ties ------------------------------------------------------------------------
@pytest.mark.parametrize("be", ["reference", "numba-cpu"])
def test_amax_gradient_is_shared_by_ties_as_torch(be):
    x = np.array([[[1, 3, 3, 0], [2, 2, 2, 2]], [[5, 1, 5, 5], [0, -1, 0, 4]]], np.float32)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x.amax(-1) * 1.0)

    cf.manual_seed(3)
    model = Head()
    step = cf.compile_train(model, (None, 2, 4), loss="mse", backend=be)
    target = np.zeros((2, 2), np.float32)
    _, grads = step.gradients(x, target)
    fc = torch.nn.Linear(2, 2)
    fc.load_state_dict({k[3:]: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.mse_loss(fc(xt.amax(-1)), torch.from_numpy(target)).backward()
    assert_close(grads["input"], xt.grad, rtol=1e-5, what="d/dx")
    assert np.count_nonzero(grads["input"][0, 1]) == 4  # the tie of four shares it


# -- fusion ------------------------------------------------------------------------------
def test_scalar_ops_fuse_into_the_conv_epilogue_and_binary_ops_do_not(rng):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.bias = nn.Parameter(np.ones((3, 1, 1), np.float32))

        def forward(self, x):
            h = F.relu(1.0 - self.conv(x) * 0.5)
            return h + self.bias

    cf.manual_seed(4)
    model = M()
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    net = cf.compile(model, input_shape=(None, 2, 6, 6), backend="numba-cpu")
    fused = [n for n in net.graph.nodes if n.op == "fusion"]
    assert [n.meta["fused_from"] for n in fused] == [["conv2d", "scale", "neg", "add_scalar", "relu"]]
    assert [n.op for n in net.graph.nodes if n.op != "fusion"] == ["add"]
    want = cf.compile(model, input_shape=(None, 2, 6, 6), backend="reference")(x)
    np.testing.assert_allclose(net(x), want, rtol=1e-5, atol=1e-6)
    step = cf.compile_train(model, (None, 2, 6, 6), loss="mse", backend="numba-cpu")
    ref = cf.compile_train(model, (None, 2, 6, 6), loss="mse", backend="reference")
    target = np.zeros((2, 3, 4, 4), np.float32)
    (loss, grads), (want_loss, want_grads) = step.gradients(x, target), ref.gradients(x, target)
    assert abs(loss - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
    for key, g in want_grads.items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-4, atol=1e-5, err_msg=key)


# -- mistakes ----------------------------------------------------------------------------
MISTAKES = {
    "x[0]": (lambda x: x[0], "batch dimension"),
    "x[1:]": (lambda x: x[1:], "batch dimension"),
    "x[:, 5]": (lambda x: x[:, 5], "out of range"),
    "x[:, ::-1]": (lambda x: x[:, ::-1], "step must be greater than zero"),
    "x[:, ::0]": (lambda x: x[:, ::0], "step must be greater than zero"),
    "x[:, 0.5:]": (lambda x: x[:, 0.5:], "ints or None"),
    "x[:, [0, 1]]": (lambda x: x[:, [0, 1]], "not supported"),
    "x[..., ...]": (lambda x: x[..., ...], "single ellipsis"),
    "x[:, 0, 0, 0, 0]": (lambda x: x[:, 0, 0, 0, 0], "too many indices"),
    "x + x[:, :, :2, :3]": (lambda x: x + x[:, :, :2, :3], "do not broadcast"),
    "x.permute(0, 1, 1, 2)": (lambda x: x.permute(0, 1, 1, 2), "not a permutation"),
    "x.permute(1, 0, 2, 3)": (lambda x: x.permute(1, 0, 2, 3), "batch dimension N"),
    "x.mean(4)": (lambda x: x.mean(4), "out of range"),
    "x.sum((1, 1))": (lambda x: x.sum((1, 1)), "twice"),
    "x.split(0, 1)": (lambda x: x.split(0, 1), "positive"),
    "x.split([1, 1], 1)": (lambda x: x.split([1, 1], 1), "add up"),
    "x.unsqueeze(0)": (lambda x: x.unsqueeze(0), "batch dimension N must lead"),
    "x * np.ones(5)": (lambda x: x * np.ones(5, np.float32), "register constant tensors"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_mistakes_are_convforge_errors(name):
    fn, words = MISTAKES[name]
    with pytest.raises(ConvforgeError, match=words):
        cf.compile(Expr(fn), input_shape=(None, 3, 4, 5), backend="reference")


def test_arithmetic_of_two_numbers_is_refused():
    with pytest.raises(ConvforgeError, match="two numbers"):
        F.add(1.0, 2.0)
