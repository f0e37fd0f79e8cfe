"""cf.fit / Trainer: the loop of `convforge train` for any model, with history, curves,
checkpoints and resuming (on a few hundred bundled MNIST images, reference backend)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import convforge as cf
from convforge import nn, optim
from convforge.errors import ConvforgeError
from convforge.models import lenet5

BACKEND = "reference"


@pytest.fixture(scope="module")
def mnist_small():
    (x, y), (xt, yt) = cf.data.mnist()
    return (x[:192], y[:192]), (xt[:64], yt[:64])


def _run(data, out, epochs, resume=None):
    """A fresh seeded LeNet-5 with SGD + cosine annealing over 2 epochs, fitted by cf.fit."""
    (x, y), val = data
    cf.manual_seed(0)
    model = lenet5()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    return cf.fit(
        model, (x, y), epochs=epochs, val_data=val, optimizer=opt, scheduler=sched, batch_size=32,
        backend=BACKEND, out=out, resume=resume, progress=False, log=lambda _: None,
    )  # fmt: skip


def test_fit_writes_history_curves_and_weights(mnist_small, tmp_path):
    result = _run(mnist_small, tmp_path, epochs=2)
    assert [r.epoch for r in result.history] == [1, 2] and not result.interrupted
    assert all(0.0 <= r.train_accuracy <= 1.0 and 0.0 <= r.val_accuracy <= 1.0 for r in result.history)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["loss"] for h in history] == [r.loss for r in result.history]
    assert (tmp_path / "curves.png").stat().st_size > 0
    saved = cf.load(tmp_path / "weights.npz")
    assert int(saved["optimizer/step"]) == 2 * 192 // 32
    np.testing.assert_array_equal(saved["0.weight"], result.step.state_dict()["0.weight"])
    assert result.step.lr == pytest.approx(0.0)  # cosine annealing to eta_min after T_max epochs


def test_resume_continues_exactly_where_the_run_stopped(mnist_small, tmp_path):
    straight = _run(mnist_small, tmp_path / "straight", epochs=2)
    first = _run(mnist_small, tmp_path / "split", epochs=1)
    assert len(first.history) == 1
    resumed = _run(mnist_small, None, epochs=2, resume=tmp_path / "split")
    assert [r.epoch for r in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 comes from the run folder's history
    assert resumed.history[1].loss == straight.history[1].loss
    for key, value in straight.step.state_dict().items():
        np.testing.assert_array_equal(resumed.step.state_dict()[key], value, err_msg=key)
    assert len(json.loads((tmp_path / "split" / "history.json").read_text())) == 2


def test_fit_takes_a_train_step_and_datasets_and_writes_nothing_without_out(mnist_small, tmp_path):
    (x, y), _ = mnist_small
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    step = cf.compile_train(model, (None, 1, 28, 28), optimizer=optim.SGD(lr=0.1), backend=BACKEND)
    logged = []
    result = cf.fit(
        step, cf.data.ArrayDataset(x, y), epochs=1, batch_size=64, progress=False, log=logged.append
    )
    assert result.step is step and step.steps == 3 and result.weights is None and result.curves is None
    assert result.history[0].val_accuracy is None and result.history[0].train_accuracy is not None
    assert any(line.startswith("epoch  1/1  loss") for line in logged)
    with pytest.raises(ConvforgeError, match="has its loss, optimizer and backend"):
        cf.fit(step, (x, y), epochs=1, optimizer=optim.SGD(lr=0.1))


def test_bad_arguments_are_clear_errors(mnist_small, tmp_path):
    (x, y), _ = mnist_small
    with pytest.raises(ConvforgeError, match="epochs an int >= 1"):
        cf.fit(lenet5(), (x, y), epochs=0, backend=BACKEND)
    with pytest.raises(ConvforgeError, match="no weights.npz"):
        cf.fit(lenet5(), (x, y), epochs=1, backend=BACKEND, resume=tmp_path, progress=False)
    with pytest.raises(ConvforgeError, match=r"DataLoader, a dataset or \(x, y\)"):
        cf.fit(lenet5(), x, epochs=1, backend=BACKEND)
    # a run saved after 6 steps of 32 images does not split into epochs of 5 batches of 40
    _run(mnist_small, tmp_path / "run", epochs=1)
    with pytest.raises(ConvforgeError, match="not whole epochs"):
        cf.fit(lenet5(), (x, y), epochs=2, batch_size=40, backend=BACKEND, resume=tmp_path / "run",
               progress=False, log=lambda _: None)  # fmt: skip
