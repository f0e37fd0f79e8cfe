"""What a model accepts as input: integer and bool data are refused with a message saying to
scale them (never cast silently), and the backend aliases ``"cpu"`` / ``"cuda"``."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest

import convforge as cf
from convforge import nn
from convforge.backends import resolve
from convforge.cli import _parser
from convforge.errors import BackendError, DTypeError


def _model() -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_compiled_model_refuses_integer_images(dtype):
    net = cf.compile(_model(), (None, 1, 4, 4), backend="reference")
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 4)).astype(dtype)
    with pytest.raises(DTypeError, match=f"input x is {np.dtype(dtype)}.*does not cast.*/ 255"):
        net(x)


def test_train_step_refuses_integer_images_and_names_the_range():
    step = cf.compile_train(_model(), (None, 1, 4, 4), loss="cross_entropy", backend="reference")
    x = np.full((2, 1, 4, 4), 255, np.uint8)
    with pytest.raises(DTypeError, match=r"uint8 holding 255\.\.255.*cf\.data"):
        step(x, np.array([0, 1]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_eager_ops_refuse_integer_data(dtype):
    x = np.ones((1, 1, 4, 4), dtype)
    with pytest.raises(DTypeError, match=f"F.relu: input is {np.dtype(dtype)}.*scale it"):
        F.relu(x, backend="reference")
    with pytest.raises(DTypeError, match="F.conv2d: weight is"):
        F.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), dtype), backend="reference")


def test_integer_labels_and_indices_are_still_taken():
    logits = np.zeros((2, 3), np.float32)
    loss = F.cross_entropy(logits, np.array([0, 2], np.int32), backend="reference")
    assert loss == pytest.approx(np.log(3))


def test_backend_aliases(monkeypatch):
    assert resolve("cpu") == "numba-cpu"
    assert resolve("cuda") == "numba-cuda"
    monkeypatch.setenv("CONVFORGE_BACKEND", "cpu")
    assert resolve(None) == "numba-cpu"
    monkeypatch.setenv("CONVFORGE_BACKEND", "gpu")
    with pytest.raises(BackendError, match=r"unknown backend 'gpu' \(from \$CONVFORGE_BACKEND\).*cpu, cuda"):
        resolve(None)
    with pytest.raises(BackendError, match="unknown backend"):
        resolve(["cpu"])


def test_backend_alias_compiles_and_runs_eagerly():
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
    net = cf.compile(nn.Sequential(nn.ReLU()), (None, 2, 2, 2), backend="cpu")
    assert net.backend == "numba-cpu"
    assert np.array_equal(net(x), np.maximum(x, 0))
    assert np.array_equal(F.relu(x, backend="cpu"), np.maximum(x, 0))


def test_cli_takes_the_aliases():
    args = _parser().parse_args(["show", "lenet5", "--backend", "cuda"])
    assert args.backend == "cuda"
