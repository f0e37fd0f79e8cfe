"""Training steps: optimizer trajectories equal torch.optim's; loss falls; state round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_bridge import assert_close, to_torch

import convforge as cf
from convforge import optim
from convforge.errors import ConvforgeError, SerializationError, StateDictError
from convforge.models import lenet5

OPTIMIZERS = {
    "sgd": (lambda: optim.SGD(lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    "momentum": (
        lambda: optim.SGD(lr=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    ),
    "nesterov": (
        lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    ),
    "weight_decay": (
        lambda: optim.SGD(lr=0.05, momentum=0.5, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-2),
    ),
    "dampening": (
        lambda: optim.SGD(lr=0.05, momentum=0.9, dampening=0.3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.3),
    ),
    "adam": (lambda: optim.Adam(lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
    "adam_wd": (
        lambda: optim.Adam(lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
    ),
}


#: float64 checks the update rule itself (to rounding); float32 checks what users run
TOLERANCES = {"float64": dict(rtol=1e-9, atol_scale=1e-10), "float32": dict(rtol=1e-3, atol_scale=2e-3)}


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_three_step_trajectory_matches_torch(name, dtype, backend, rng):
    ours_opt, torch_opt = OPTIMIZERS[name]
    cf.manual_seed(0)
    model = lenet5()
    twin = to_torch(model).to(getattr(torch, dtype))
    step = cf.compile_train(model, (None, 1, 28, 28), optimizer=ours_opt(), backend=backend, dtype=dtype)
    opt = torch_opt(twin.parameters())
    for i in range(3):
        x = rng.random((8, 1, 28, 28)).astype(dtype)
        y = rng.integers(0, 10, size=8)
        loss = step(x, y)
        opt.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        opt.step()
        assert abs(loss - ref.item()) < (1e-4 if dtype == "float32" else 1e-12), f"step {i}"
    ours = step.state_dict()
    for key, value in twin.state_dict().items():
        assert_close(ours[key], value, **TOLERANCES[dtype], what=f"{name} {key}")


def test_loss_falls_over_200_steps(backend):
    cf.manual_seed(0)
    rng = np.random.default_rng(0)
    (x, y), _ = cf.data.mnist()
    step = cf.compile_train(
        lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.05, momentum=0.9), backend=backend
    )
    losses = []
    for _ in range(200):
        idx = rng.integers(0, len(x), size=16)
        losses.append(step(x[idx], y[idx]))
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])


def test_gradients_do_not_update(backend, rng):
    step = cf.compile_train(lenet5(), (None, 1, 28, 28), backend=backend)
    before = step.state_dict()
    x, y = rng.random((2, 1, 28, 28), dtype=np.float32), np.array([3, 4])
    loss1, grads = step.gradients(x, y)
    loss2, _ = step.gradients(x, y)
    assert loss1 == loss2
    assert set(grads) == {*before, "input"}
    for key, value in step.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_inference_shares_trained_weights(backend, rng):
    step = cf.compile_train(lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1), backend=backend)
    net = step.inference()
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), np.array([0, 1, 2, 3])
    before = net(x)
    step(x, y)
    after = net(x)
    assert not np.allclose(before, after)
    fresh = cf.compile(lenet5(), (None, 1, 28, 28), backend=backend)
    fresh.load_state_dict(step.state_dict())
    np.testing.assert_allclose(fresh(x), after, rtol=1e-6, atol=1e-6)


def test_returned_arrays_are_the_callers(backend, rng):
    step = cf.compile_train(lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1), backend=backend)
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), np.array([0, 1, 2, 3])
    _, g1 = step.gradients(x, y)
    kept = {k: v.copy() for k, v in g1.items()}
    step.gradients(x[::-1].copy(), y[::-1].copy())
    for k, v in g1.items():
        np.testing.assert_array_equal(v, kept[k])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_weights_and_optimizer_state(tmp_path, suffix, rng):
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), np.array([0, 1, 2, 3])
    step = cf.compile_train(
        lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1, momentum=0.9), backend="reference"
    )
    step(x, y)
    path = tmp_path / f"lenet{suffix}"
    cf.save(step, path)
    other = cf.compile_train(
        lenet5(), (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1, momentum=0.9), backend="reference"
    )
    other.load(str(path))
    assert other.steps == 1
    assert step(x, y) == pytest.approx(other(x, y), rel=1e-6)
    for key, value in step.optimizer_state_dict().items():
        np.testing.assert_allclose(other.optimizer_state_dict()[key], value, rtol=1e-6)
    net = cf.compile(lenet5(), (None, 1, 28, 28), backend="reference")
    net.load_state_dict(cf.load(path))


def test_load_refuses_pickled_objects_and_bad_entries(tmp_path):
    bad = tmp_path / "objects.npz"
    np.savez(bad, weight=np.array([object(), 1], dtype=object))
    with pytest.raises(SerializationError, match="weight"):
        cf.load(bad)
    net = cf.compile(lenet5(), (None, 1, 28, 28), backend="reference")
    sd = net.state_dict()
    with pytest.raises(StateDictError, match="'0.weight'.*shape"):
        net.load_state_dict({**sd, "0.weight": np.zeros((6, 1, 3, 3), np.float32)})
    with pytest.raises(StateDictError, match="unexpected key.*'extra'"):
        net.load_state_dict({**sd, "extra": np.zeros(3)})
    with pytest.raises(StateDictError, match="missing.*'0.bias'"):
        net.load_state_dict({k: v for k, v in sd.items() if k != "0.bias"})
    with pytest.raises(StateDictError, match="'0.bias'.*dtype"):
        net.load_state_dict({**sd, "0.bias": np.array(["a"] * 6)})
    with pytest.raises(SerializationError, match="does not exist"):
        cf.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SerializationError, match="junk.npz"):
        cf.load(tmp_path / "junk.npz")


def test_target_labels_are_checked_before_any_kernel(backend, rng):
    step = cf.compile_train(lenet5(), (None, 1, 28, 28), backend=backend)
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    with pytest.raises(ConvforgeError, match=r"\[0, 10\).*12"):
        step(x, np.array([1, 12]))
    with pytest.raises(ConvforgeError, match="integer class labels"):
        step(x, np.array([1.0, 2.0]))
    with pytest.raises(ConvforgeError, match=r"shape \[2\]"):
        step(x, np.array([1, 2, 3]))
