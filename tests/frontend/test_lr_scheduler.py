"""Every ``optim.lr_scheduler`` schedule gives torch's learning-rate sequence, float for float
(pure Python: no model is compiled), including ``last_epoch``, ``state_dict`` and resuming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convforge as cf
from convforge import nn, optim
from convforge.errors import ConvforgeError

lr_scheduler = optim.lr_scheduler  # ``from convforge.optim import lr_scheduler`` is the same module

# torch warns when a schedule steps before its optimizer did; these sequences have no optimizer
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

STEPS = 30

#: name -> (optimizer options, scheduler name, scheduler options); SequentialLR is built apart
SCHEDULES = {
    "step": ({"lr": 0.1}, "StepLR", dict(step_size=7, gamma=0.3)),
    "multistep": ({"lr": 0.1}, "MultiStepLR", dict(milestones=[3, 8, 8, 20], gamma=0.5)),
    "exponential": ({"lr": 0.2}, "ExponentialLR", dict(gamma=0.9)),
    "cosine": ({"lr": 0.1}, "CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
    "linear": ({"lr": 0.1}, "LinearLR", dict(start_factor=0.25, end_factor=0.9, total_iters=12)),
    "linear-default": ({"lr": 0.05}, "LinearLR", {}),
    "onecycle": ({"lr": 0.1, "momentum": 0.9}, "OneCycleLR", dict(max_lr=0.5, total_steps=STEPS + 1)),
    "onecycle-3phase-linear": (
        {"lr": 0.1, "momentum": 0.9},
        "OneCycleLR",
        dict(max_lr=[0.5, 0.2], epochs=4, steps_per_epoch=8, three_phase=True, anneal_strategy="linear"),
    ),
}


def _pair(options: dict):
    """A convforge SGD with two param groups and its torch twin (the second group at half the rate)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    half = {**options, "lr": options["lr"] / 2}
    ours = optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), **half}], **options
    )
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    theirs = torch.optim.SGD([{"params": [a]}, {"params": [b], **half}], **options)
    return ours, theirs


def _sequence(sched, opt, steps: int = STEPS, metrics=None) -> list[tuple]:
    out = []
    for k in range(steps):
        momentum = tuple(g.get("momentum") for g in opt.param_groups)
        out.append((tuple(sched.get_last_lr()), sched.last_epoch, momentum))
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[k])
    return out


@pytest.mark.parametrize("name", SCHEDULES)
def test_lr_sequence_equals_torchs(name):
    options, cls, kwargs = SCHEDULES[name]
    ours, theirs = _pair(options)
    mine = getattr(lr_scheduler, cls)(ours, **kwargs)
    ref = getattr(torch.optim.lr_scheduler, cls)(theirs, **kwargs)
    assert _sequence(mine, ours) == _sequence(ref, theirs)
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]


def test_sequential_lr_equals_torchs():
    ours, theirs = _pair({"lr": 0.1})

    def build(mod, opt):
        warm = mod.LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = mod.CosineAnnealingLR(opt, T_max=10)
        step = mod.StepLR(opt, step_size=3, gamma=0.5)
        return mod.SequentialLR(opt, [warm, cos, step], milestones=[5, 15])

    assert _sequence(build(lr_scheduler, ours), ours) == _sequence(
        build(torch.optim.lr_scheduler, theirs), theirs
    )


@pytest.mark.parametrize("mode, threshold_mode", [("min", "rel"), ("max", "abs")])
def test_reduce_lr_on_plateau_equals_torchs(mode, threshold_mode):
    rng = np.random.default_rng(0)
    metrics = list(np.cumsum(rng.standard_normal(STEPS)) * (1 if mode == "min" else -1))
    kwargs = dict(mode=mode, factor=0.5, patience=2, threshold=0.05, threshold_mode=threshold_mode,
                  cooldown=1, min_lr=[0.01, 0.02])  # fmt: skip
    ours, theirs = _pair({"lr": 0.1})
    mine = lr_scheduler.ReduceLROnPlateau(ours, **kwargs)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kwargs)
    assert _sequence(mine, ours, metrics=metrics) == _sequence(ref, theirs, metrics=metrics)


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle"])
def test_state_dict_resumes_the_sequence(name):
    options, cls, kwargs = SCHEDULES[name]
    ours, _ = _pair(options)
    full = getattr(lr_scheduler, cls)(ours, **kwargs)
    _sequence(full, ours, steps=9)
    saved = full.state_dict()
    assert "optimizer" not in saved and saved["last_epoch"] == 9
    rest = _sequence(full, ours, steps=10)
    resumed_opt, _ = _pair(options)
    resumed = getattr(lr_scheduler, cls)(resumed_opt, **kwargs)
    resumed.load_state_dict(saved)
    for group, lr in zip(resumed_opt.param_groups, saved["_last_lr"]):
        group["lr"] = lr  # the optimizer's own rates come with its state, as in torch
    if name == "onecycle":
        resumed_opt.param_groups[0]["momentum"] = ours.param_groups[0]["momentum"]
    assert _sequence(resumed, resumed_opt, steps=1)[0][:2] == rest[0][:2]


def test_last_epoch_resume_needs_initial_lr_and_then_follows_torch():
    ours, theirs = _pair({"lr": 0.1})
    with pytest.raises(ConvforgeError, match="initial_lr"):
        lr_scheduler.CosineAnnealingLR(ours, T_max=10, last_epoch=4)
    for g, t in zip(ours.param_groups, theirs.param_groups):
        g["initial_lr"] = t["initial_lr"] = g["lr"]
    mine = lr_scheduler.CosineAnnealingLR(ours, T_max=10, last_epoch=4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=10, last_epoch=4)
    assert _sequence(mine, ours, steps=12) == _sequence(ref, theirs, steps=12)


def test_step_with_an_epoch_uses_the_closed_form():
    ours, theirs = _pair({"lr": 0.1})
    mine = lr_scheduler.StepLR(ours, step_size=3)
    ref = torch.optim.lr_scheduler.StepLR(theirs, step_size=3)
    mine.step(7)
    with pytest.warns(UserWarning):
        ref.step(7)
    assert mine.get_last_lr() == ref.get_last_lr()


def test_a_scheduler_takes_a_train_step():
    model = nn.Sequential(nn.Linear(3, 2))
    step = cf.compile_train(model, (None, 3), optimizer=optim.SGD(lr=0.1), backend="reference")
    sched = optim.lr_scheduler.CosineAnnealingLR(step, T_max=10)
    assert sched.optimizer is step.optimizer
    for _ in range(5):
        step(np.ones((2, 3), np.float32), np.array([0, 1]))
        sched.step()
    assert step.lr == pytest.approx(0.1 * (1 + np.cos(np.pi * 5 / 10)) / 2)
    assert step.lr == sched.get_last_lr()[0]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda o: lr_scheduler.StepLR("sgd", 3), "expected a convforge optimizer"),
        (lambda o: lr_scheduler.StepLR(o, 0), "step_size must be a positive int"),
        (lambda o: lr_scheduler.OneCycleLR(o, 0.1), "total_steps, or epochs"),
        (lambda o: lr_scheduler.OneCycleLR(optim.Adagrad(), 0.1, total_steps=3), "momentum or betas"),
        (lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=1.0), "factor must be < 1.0"),
        (lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.StepLR(o, 2)], milestones=[3]), "milestones"),
    ],
)
def test_bad_arguments_are_clear_errors(build, match):
    ours, _ = _pair({"lr": 0.1})
    with pytest.raises(ConvforgeError, match=match):
        build(ours)


def test_one_cycle_past_its_total_steps_is_an_error():
    ours, _ = _pair({"lr": 0.1, "momentum": 0.9})
    sched = lr_scheduler.OneCycleLR(ours, max_lr=0.5, total_steps=2)
    sched.step()
    sched.step()
    with pytest.raises(ConvforgeError, match="total_steps=2"):
        sched.step()
