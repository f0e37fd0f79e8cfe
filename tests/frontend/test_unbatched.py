"""Unbatched inputs, as PyTorch takes them: ``[C, H, W]`` for the 2-D layers, ``[C, L]`` for
``Conv1d``, any leading dims for ``linear``; eagerly, traced, and as a compiled model's call
(a model compiled for ``[N, C, H, W]`` called on ``[C, H, W]`` returns its output without the
batch dim). Forward and gradients against torch."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn

T = torch.from_numpy
TF = torch.nn.functional


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


EAGER = {
    "conv2d": (lambda f, x, w: f.conv2d(x, w, padding=1), (3, 5, 6), (4, 3, 3, 3)),
    "conv1d": (lambda f, x, w: f.conv1d(x, w, stride=2), (3, 7), (2, 3, 3)),
    "conv_transpose2d": (lambda f, x, w: f.conv_transpose2d(x, w, stride=2), (3, 4, 4), (3, 2, 3, 3)),
    "max_pool2d": (lambda f, x, w: f.max_pool2d(x, 2, padding=1), (3, 5, 6), None),
    "avg_pool2d": (lambda f, x, w: f.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (3, 5, 6), None),
    "adaptive_avg_pool2d": (lambda f, x, w: f.adaptive_avg_pool2d(x, (2, 3)), (3, 5, 6), None),
    "adaptive_max_pool2d": (lambda f, x, w: f.adaptive_max_pool2d(x, 1), (3, 5, 6), None),
    "pad": (lambda f, x, w: f.pad(x, (1, 2, 0, 1), mode="reflect"), (3, 5, 6), None),
}


@pytest.mark.parametrize("name", list(EAGER))
def test_unbatched_functional_matches_torch_eagerly(name):
    fn, xshape, wshape = EAGER[name]
    x = _x(*xshape)
    w = None if wshape is None else _x(*wshape, seed=1)
    got = fn(F, x, w)
    want = fn(TF, T(x), None if w is None else T(w))
    assert got.shape == tuple(want.shape)
    assert_close(got, want, what=name)


def test_unbatched_max_pool_indices_match_torch():
    x = _x(2, 4, 6)
    got, ind = F.max_pool2d(x, 2, return_indices=True)
    want, want_ind = TF.max_pool2d(T(x), 2, return_indices=True)
    assert_close(got, want, what="values")
    assert np.array_equal(ind, want_ind.numpy())


@pytest.mark.parametrize("shape", [(6,), (2, 6), (2, 3, 6), (2, 3, 2, 6)], ids=str)
def test_linear_takes_any_leading_dims_eagerly(shape):
    x, w, b = _x(*shape), _x(4, 6, seed=1), _x(4, seed=2)
    assert_close(F.linear(x, w, b), TF.linear(T(x), T(w), T(b)), what=str(shape))
    assert_close(F.linear(x, w), TF.linear(T(x), T(w)), what=f"{shape} without bias")


def test_compiled_model_called_unbatched_returns_the_unbatched_output(backend):
    cf.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 5)
    )
    net = cf.compile(model, (None, 2, 4, 4), backend=backend)
    x = _x(2, 4, 4)
    got = np.asarray(net(x))
    assert got.shape == (5,)
    assert_close(got, np.asarray(net(x[None]))[0], what="unbatched vs batch of one")
    twin = to_torch(model)
    # torch's Flatten would flatten [C, H, W] whole: compare on the batch of one instead
    assert_close(got, twin(T(x[None]))[0], what="vs torch")


class _Unbatched(nn.Module):
    """Layers applied to ``x[0]``, a [C, H, W] image: the unbatched forms while tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(F.relu(self.conv(F.squeeze(x, 0))))
        return F.unsqueeze(self.fc(F.flatten(h)), 0)


class _TorchUnbatched(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        h = self.pool(TF.relu(self.conv(x.squeeze(0))))
        return self.fc(h.flatten()).unsqueeze(0)


def test_traced_unbatched_layers_match_torch(backend):
    # a traced graph is unbatched only with a fixed input shape, which compile_train does not
    # take (its target is one label per sample of the batch N): forward only
    cf.manual_seed(1)
    model = _Unbatched()
    twin = _TorchUnbatched()
    twin.load_state_dict({k: T(np.array(v)) for k, v in model.state_dict().items()})
    x = _x(1, 2, 4, 4, seed=3)
    net = cf.compile(model, (1, 2, 4, 4), backend=backend)
    assert_close(net(x), twin(T(x)), what="forward")


def _linear_3d() -> tuple[nn.Module, torch.nn.Module]:
    cf.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3, 3))
    return model, to_torch(model)


def test_linear_on_3d_input_with_a_fixed_batch_matches_torch(backend):
    # every dim known: linear runs on the rows of a [N * S, in] reshape
    model, twin = _linear_3d()
    x = _x(2, 2, 4, seed=4)
    assert_close(cf.compile(model, (2, 2, 4), backend=backend)(x), twin(T(x)), what="forward")


@pytest.mark.parametrize("backend", ["reference", "numba-cpu", "numba-cuda"])
def test_linear_on_3d_input_trains_as_torch(backend):
    # [N, S, in] with the symbolic batch runs as a 1x1 conv1d over [N, in, S]
    model, twin = _linear_3d()
    x, y = _x(2, 2, 4, seed=4), np.array([0, 2])
    net = cf.compile(model, (None, 2, 4), backend=backend)
    assert_close(np.asarray(net(x)), twin(T(x)), what="forward")
    step = cf.compile_train(model, (None, 2, 4), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)
