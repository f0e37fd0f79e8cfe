"""Optimizers in torch's form: every update rule's trajectory equals torch.optim's, param
groups with their own options, clip_grad_norm inside the step, and a schedule that changes
a compiled step's rate without compiling a kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_bridge import assert_close, to_torch

import convforge as cf
from convforge import nn, optim
from convforge.backends import cache
from convforge.errors import AttributeValueError, ConvforgeError
from convforge.testing import available_backends

SHAPE = (1, 6, 6)


def _model() -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


#: name -> (convforge options, torch optimizer class, torch options); both built on params
RULES = {
    "sgd-nesterov-wd": (
        optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    ),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    "adamw-wd": (optim.AdamW, torch.optim.AdamW, dict(lr=0.02, betas=(0.7, 0.9), eps=1e-6, weight_decay=0.3)),
    "rmsprop": (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    "rmsprop-all": (
        optim.RMSprop, torch.optim.RMSprop,
        dict(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.8, centered=True),
    ),
    "rmsprop-centered": (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True)),
    "rmsprop-momentum": (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5)),
    "adagrad": (optim.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    "adagrad-all": (
        optim.Adagrad, torch.optim.Adagrad,
        dict(lr=0.1, lr_decay=0.3, weight_decay=0.05, initial_accumulator_value=0.2, eps=1e-6),
    ),
}  # fmt: skip


def _batches(n: int, dtype: str = "float32") -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((4, *SHAPE)).astype(dtype), rng.integers(0, 3, size=4)) for _ in range(n)]


def _torch_run(twin, opt, batches, clip: float | None = None, sched=None) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


def _compare(step, twin, losses, ref_losses, dtype: str, what: str) -> None:
    tol = dict(rtol=1e-9, atol_scale=1e-10) if dtype == "float64" else dict(rtol=2e-3, atol_scale=2e-3)
    np.testing.assert_allclose(losses, ref_losses, rtol=tol["rtol"] * 10, atol=1e-12, err_msg=what)
    ours = step.state_dict()
    for key, value in twin.state_dict().items():
        assert_close(ours[key], value, **tol, what=f"{what} {key}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", RULES)
def test_update_rule_trajectory_matches_torch(name, dtype, backend):
    ours, theirs, options = RULES[name]
    model = _model()
    twin = to_torch(model).to(getattr(torch, dtype))
    step = cf.compile_train(model, (None, *SHAPE), optimizer=ours(model.parameters(), **options),
                            backend=backend, dtype=dtype)  # fmt: skip
    batches = _batches(4, dtype)
    losses = [step(x, y) for x, y in batches]
    ref = _torch_run(twin, theirs(twin.parameters(), **options), batches)
    _compare(step, twin, losses, ref, dtype, name)


def test_optimizer_state_dict_keys_name_the_parameter_and_buffer():
    model = _model()
    step = cf.compile_train(model, (None, *SHAPE), optimizer=optim.RMSprop(lr=0.01), backend="reference")
    keys = set(step.optimizer_state_dict())
    assert "0.weight.square_avg" in keys and "3.bias.grad_avg" in keys and "step" in keys
    opt = optim.Adagrad(initial_accumulator_value=0.5)
    adagrad = cf.compile_train(_model(), (None, *SHAPE), optimizer=opt, backend="reference")
    assert np.all(adagrad.optimizer_state_dict()["0.weight.sum"] == 0.5)


def test_defaults_are_torchs():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for ours, theirs in [(optim.AdamW, torch.optim.AdamW), (optim.RMSprop, torch.optim.RMSprop),
                         (optim.Adagrad, torch.optim.Adagrad)]:  # fmt: skip
        defaults = theirs(p).defaults
        for key, value in ours().defaults.items():
            if key in defaults:
                assert defaults[key] == value, (ours.__name__, key)


# =========================================================================================
# Param groups
# =========================================================================================
def test_param_groups_with_their_own_lr_and_weight_decay_match_torch(backend):
    model = _model()
    twin = to_torch(model)
    groups = [
        {"params": model[0].parameters(), "lr": 0.3, "weight_decay": 0.1},
        {"params": model[3].parameters()},
    ]
    step = cf.compile_train(model, (None, *SHAPE), optimizer=optim.SGD(groups, lr=0.1, momentum=0.9),
                            backend=backend)  # fmt: skip
    opt = torch.optim.SGD(
        [{"params": twin[0].parameters(), "lr": 0.3, "weight_decay": 0.1}, {"params": twin[3].parameters()}],
        lr=0.1,
        momentum=0.9,
    )
    batches = _batches(3)
    losses = [step(x, y) for x, y in batches]
    _compare(step, twin, losses, _torch_run(twin, opt, batches), "float32", "groups")
    assert step.get_lr() == [0.3, 0.1]


def test_parameters_left_out_of_the_optimizer_are_not_trained():
    model = _model()
    step = cf.compile_train(model, (None, *SHAPE), optimizer=optim.SGD(model[3].parameters(), lr=0.5),
                            backend="reference")  # fmt: skip
    before = step.state_dict()
    x, y = _batches(1)[0]
    step(x, y)
    after = step.state_dict()
    np.testing.assert_array_equal(after["0.weight"], before["0.weight"])
    assert not np.array_equal(after["3.weight"], before["3.weight"])
    assert "0.weight.momentum_buffer" not in step.optimizer_state_dict()


def test_todays_form_still_trains_every_parameter():
    opt = optim.SGD(lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["params"] is None and opt.lr == 0.1
    step = cf.compile_train(_model(), (None, *SHAPE), optimizer=opt, backend="reference")
    assert len(step.optimizer_state_dict()) == 5  # four parameters' buffers + step


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda m: optim.SGD(nn.Linear(2, 2).parameters()), "not a parameter of Sequential"),
        (lambda m: optim.SGD([{"params": m[0].parameters()}, {"params": [m[0].weight]}]), "more than one"),
        (lambda m: optim.SGD([m[0].weight, m[0].weight]), "more than one"),
        (lambda m: optim.SGD([]), "empty parameter list"),
        (lambda m: optim.SGD(0.1), "params must be an iterable"),
        (lambda m: optim.SGD([{"params": m[0].parameters(), "betas": (0.9, 0.9)}]), "unknown option"),
        (lambda m: optim.SGD([{"lr": 0.1}]), "'params' entry"),
        (lambda m: optim.Adam([{"params": m.parameters(), "lr": -1.0}]), r"param_groups\[0\]: lr must"),
    ],
)
def test_bad_parameters_and_groups_are_clear_errors(build, match):
    model = _model()
    with pytest.raises(ConvforgeError, match=match):
        cf.compile_train(model, (None, *SHAPE), optimizer=build(model), backend="reference")


def test_bad_settings_name_the_optimizer():
    with pytest.raises(AttributeValueError, match=r"optim\.RMSprop: alpha must"):
        optim.RMSprop(alpha=-0.1)
    with pytest.raises(AttributeValueError, match=r"optim\.Adagrad: initial_accumulator_value must"):
        optim.Adagrad(initial_accumulator_value=-1.0)
    with pytest.raises(AttributeValueError, match=r"compile_train: clip_grad_norm must"):
        cf.compile_train(_model(), (None, *SHAPE), clip_grad_norm=float("nan"), backend="reference")
    with pytest.raises(AttributeValueError, match=r"lr must"):
        optim.SGD(lr=0.1).set_lr(-1.0)


# =========================================================================================
# Gradient clipping
# =========================================================================================
@pytest.mark.parametrize("max_norm", [0.05, 100.0])
def test_clip_grad_norm_trajectory_matches_torch(max_norm, backend):
    model = _model()
    twin = to_torch(model).double()
    step = cf.compile_train(model, (None, *SHAPE), optimizer=optim.Adam(lr=0.05), backend=backend,
                            dtype="float64", clip_grad_norm=max_norm)  # fmt: skip
    batches = _batches(3, "float64")
    losses = [step(x, y) for x, y in batches]
    ref = _torch_run(twin, torch.optim.Adam(twin.parameters(), lr=0.05), batches, clip=max_norm)
    _compare(step, twin, losses, ref, "float64", f"clip {max_norm}")
    assert "clip_grad_norm_coef" in str(step.graph)


# =========================================================================================
# Schedules on a compiled step
# =========================================================================================
def test_scheduler_on_the_optimizer_matches_torch_and_compiles_nothing():
    model = _model()
    twin = to_torch(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = cf.compile_train(model, (None, *SHAPE), optimizer=opt, backend="numba-cpu")
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.5)
    batches = _batches(4)
    x, y = batches[0]
    losses = [step(x, y)]
    sched.step()
    kernels = [k.dispatcher for k in step._program("train").executable.program.kernels]
    compiled = cache.stats()["compiled"]
    for x, y in batches[1:]:
        losses.append(step(x, y))
        sched.step()
    assert cache.stats()["compiled"] == compiled, "a new learning rate compiled a kernel"
    again = [k.dispatcher for k in step._program("train").executable.program.kernels]
    assert all(a is b for a, b in zip(again, kernels)) and len(again) == len(kernels)
    ref = _torch_run(twin, topt, batches, sched=tsched)
    _compare(step, twin, losses, ref, "float32", "StepLR")
    assert step.lr == sched.get_last_lr()[0] == tsched.get_last_lr()[0]


def test_scheduler_takes_the_train_step_and_cycles_momentum(backend):
    model = _model()
    twin = to_torch(model)
    step = cf.compile_train(model, (None, *SHAPE), optimizer=optim.Adam(lr=0.01), backend=backend)
    sched = optim.lr_scheduler.OneCycleLR(step, max_lr=0.05, total_steps=5)
    topt = torch.optim.Adam(twin.parameters(), lr=0.01)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.05, total_steps=5)
    batches = _batches(4)
    losses = []
    for x, y in batches:
        losses.append(step(x, y))
        sched.step()
    ref = _torch_run(twin, topt, batches, sched=tsched)
    _compare(step, twin, losses, ref, "float32", "OneCycleLR")
    assert step.optimizer.param_groups[0]["betas"] == topt.param_groups[0]["betas"]


def test_set_lr_per_group():
    model = _model()
    opt = optim.SGD([{"params": model[0].parameters()}, {"params": model[3].parameters(), "lr": 0.2}], lr=0.1)
    step = cf.compile_train(model, (None, *SHAPE), optimizer=opt, backend="reference")
    step.set_lr([0.01, 0.02])
    assert step.get_lr() == [0.01, 0.02] and step.lr == 0.01
    x, y = _batches(1)[0]
    step(x, y)
    lrs = {n.attrs["lr"] for n in step.graph.nodes if n.op == "sgd_update"}
    assert lrs == {0.01, 0.02}
    with pytest.raises(ConvforgeError, match="expected 2 learning rates"):
        step.set_lr([0.1])


# =========================================================================================
# numba-cuda (Numba's simulator here: the smallest model, few steps)
# =========================================================================================
@pytest.mark.parametrize("name", ["adamw-wd", "rmsprop-all", "adagrad-all"])
def test_update_rules_and_clipping_on_numba_cuda(name, tmp_path_factory, monkeypatch):
    if "numba-cuda" not in available_backends():
        pytest.skip("numba-cuda is not available here")
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "convforge-cuda-cache"))
    ours, theirs, options = RULES[name]
    cf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    twin = to_torch(model)
    opt = ours(model.parameters(), **options)
    step = cf.compile_train(model, (None, 1, 2, 2), optimizer=opt, backend="numba-cuda", clip_grad_norm=0.1)
    topt = theirs(twin.parameters(), **options)
    rng = np.random.default_rng(2)
    batches = [
        (rng.standard_normal((2, 1, 2, 2)).astype(np.float32), rng.integers(0, 3, size=2)) for _ in range(3)
    ]
    losses, ref = [], []
    for k, (x, y) in enumerate(batches):
        losses.append(step(x, y))
        ref += _torch_run(twin, topt, [(x, y)], clip=0.1)
        if k == 0:  # a new rate: the same kernels, the rate is a launch argument
            step.set_lr(options["lr"] / 2)
            for group in topt.param_groups:
                group["lr"] = options["lr"] / 2
    _compare(step, twin, losses, ref, "float32", f"{name} on numba-cuda")
