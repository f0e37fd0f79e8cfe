"""Losses as PyTorch has them: ``F.*`` eagerly, ``nn.*Loss`` modules, and the loss of a
compiled training step (a name, a module or a traced callable), each against torch 2.x.

Gradients with respect to the input come from ``step.gradients`` of a one-layer model, so
they run the loss's backward op (and ``compile_train``'s loss tracing) on every backend.
"""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch_bridge import assert_close

import convforge as cf
from convforge import nn, optim
from convforge.errors import ConvforgeError

BACKENDS = ["reference", "numba-cpu", "numba-cuda"]
N, C = 5, 4
_RNG = np.random.default_rng(7)
WEIGHT = _RNG.uniform(0.5, 2.0, C).astype(np.float32)
LABELS = np.array([0, 3, -100, 1, 2])
PROBS = _RNG.dirichlet(np.ones(C), N).astype(np.float32)
REAL = _RNG.standard_normal((N, C)).astype(np.float32)
TWOS = np.array([0, 3, 2, 1, 2])


def _t(a):
    return None if a is None else torch.from_numpy(np.asarray(a))


#: (id, convforge module, torch module, target)
MODULES = [
    ("ce", nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), LABELS),
    (
        "ce-weight-smooth-sum",
        nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.2, reduction="sum"),
        torch.nn.CrossEntropyLoss(weight=_t(WEIGHT), label_smoothing=0.2, reduction="sum"),
        LABELS,
    ),
    (
        "ce-weight-smooth-ignore1",
        nn.CrossEntropyLoss(weight=WEIGHT, ignore_index=1, label_smoothing=0.1),
        torch.nn.CrossEntropyLoss(weight=_t(WEIGHT), ignore_index=1, label_smoothing=0.1),
        np.array([0, 1, 1, 3, 2]),
    ),
    (
        "ce-probs-weight-smooth",
        nn.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.3),
        torch.nn.CrossEntropyLoss(weight=_t(WEIGHT), label_smoothing=0.3),
        PROBS,
    ),
    (
        "nll-weight",
        nn.NLLLoss(weight=WEIGHT),
        torch.nn.NLLLoss(weight=_t(WEIGHT)),
        LABELS,
    ),
    ("mse-sum", nn.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum"), REAL),
    ("l1", nn.L1Loss(), torch.nn.L1Loss(), REAL),
    ("smooth_l1", nn.SmoothL1Loss(beta=0.5), torch.nn.SmoothL1Loss(beta=0.5), REAL),
    (
        "huber-sum",
        nn.HuberLoss(reduction="sum", delta=0.4),
        torch.nn.HuberLoss(reduction="sum", delta=0.4),
        REAL,
    ),
    (
        "bce-weight-pos",
        nn.BCEWithLogitsLoss(weight=WEIGHT, pos_weight=WEIGHT[::-1].copy()),
        torch.nn.BCEWithLogitsLoss(weight=_t(WEIGHT), pos_weight=_t(WEIGHT[::-1].copy())),
        PROBS,
    ),
]


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, C))
    model[0].weight[...] = _RNG.standard_normal((C, 3)).astype(np.float32) * 0.5
    return model


def _twin(model: nn.Module) -> torch.nn.Module:
    twin = torch.nn.Linear(3, C)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(np.array(model[0].weight)))
        twin.bias.copy_(torch.from_numpy(np.array(model[0].bias)))
    return twin


X = _RNG.standard_normal((N, 3)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("ours", "theirs", "target"), [m[1:] for m in MODULES], ids=[m[0] for m in MODULES])
def test_loss_module_and_its_gradient_match_torch(backend, ours, theirs, target):
    """The loss and its gradients (the input's and the layer's) in a compiled step."""
    model = _model()
    step = cf.compile_train(model, (None, 3), loss=ours, backend=backend)
    loss, grads = step.gradients(X, target)
    twin = _twin(model)
    xt = torch.from_numpy(X).requires_grad_(True)
    ref = theirs(twin(xt), _t(target))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert_close(grads["input"], xt.grad, rtol=1e-4, what="input")
    assert_close(grads["0.weight"], twin.weight.grad, rtol=1e-4, what="weight")


@pytest.mark.parametrize("backend", ["reference", "numba-cpu"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_functional_losses_match_torch_for_every_reduction(backend, reduction):
    x, xt = REAL, _t(REAL)
    w = dict(backend=backend, reduction=reduction)
    cases = [
        (
            F.cross_entropy(x, LABELS, weight=WEIGHT, label_smoothing=0.1, **w),
            TF.cross_entropy(xt, _t(LABELS), weight=_t(WEIGHT), label_smoothing=0.1, reduction=reduction),
        ),
        (
            F.cross_entropy(x, PROBS, label_smoothing=0.1, **w),
            TF.cross_entropy(xt, _t(PROBS), label_smoothing=0.1, reduction=reduction),
        ),
        (
            F.nll_loss(x, TWOS, ignore_index=2, **w),
            TF.nll_loss(xt, _t(TWOS), ignore_index=2, reduction=reduction),
        ),
        (F.mse_loss(x, PROBS, **w), TF.mse_loss(xt, _t(PROBS), reduction=reduction)),
        (F.l1_loss(x, PROBS, **w), TF.l1_loss(xt, _t(PROBS), reduction=reduction)),
        (
            F.smooth_l1_loss(x, PROBS, beta=0.0, **w),
            TF.smooth_l1_loss(xt, _t(PROBS), beta=0.0, reduction=reduction),
        ),
        (
            F.huber_loss(x, PROBS, delta=2.0, **w),
            TF.huber_loss(xt, _t(PROBS), delta=2.0, reduction=reduction),
        ),
        (
            F.binary_cross_entropy_with_logits(x * 30, PROBS, weight=WEIGHT[:, None][:1], **w),
            TF.binary_cross_entropy_with_logits(
                xt * 30, _t(PROBS), weight=_t(WEIGHT[:, None][:1]), reduction=reduction
            ),
        ),
    ]
    for k, (ours, theirs) in enumerate(cases):
        assert_close(ours, theirs, rtol=1e-5, what=f"case {k}")


def _sgd_trajectory(loss_fn, target, steps=3):
    model = _model()
    twin = _twin(model)
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(twin(torch.from_numpy(X)), _t(target))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, twin, losses


@pytest.mark.parametrize("backend", ["reference", "numba-cpu"])
@pytest.mark.parametrize(
    ("loss", "torch_loss", "target"),
    [
        ("smooth_l1", torch.nn.SmoothL1Loss(), REAL),
        (nn.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(label_smoothing=0.1), LABELS),
        (
            lambda out, y: F.mse_loss(out.relu(), y) + 0.5 * F.l1_loss(out, y, reduction="sum"),
            lambda out, y: TF.mse_loss(out.relu(), y) + 0.5 * TF.l1_loss(out, y, reduction="sum"),
            REAL,
        ),
    ],
    ids=["string", "module", "callable"],
)
def test_compile_train_follows_torch_sgd_for_3_steps(backend, loss, torch_loss, target):
    model, twin, want = _sgd_trajectory(torch_loss, target)
    step = cf.compile_train(model, (None, 3), loss=loss, optimizer=optim.SGD(lr=0.5), backend=backend)
    got = [step(X, target) for _ in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_close(step.state_dict()["0.weight"], twin.weight, rtol=1e-4)


def test_cross_entropy_builds_a_program_per_target_kind():
    model = _model()
    step = cf.compile_train(model, (None, 3), loss=nn.CrossEntropyLoss(), backend="reference")
    twin = _twin(model)
    for target in (LABELS, PROBS):
        loss, _ = step.gradients(X, target)
        assert abs(loss - TF.cross_entropy(twin(torch.from_numpy(X)), _t(target)).item()) < 1e-5
    assert {key[2] for key in step._programs} == {True, False}


def test_loss_errors_are_clear():
    model = _model()
    with pytest.raises(ConvforgeError, match='reduction="none".*needs a scalar'):
        cf.compile_train(model, (None, 3), loss=nn.L1Loss(reduction="none"))
    with pytest.raises(ConvforgeError, match="needs a scalar|must return a scalar"):
        cf.compile_train(
            model, (None, 3), loss=lambda o, y: F.l1_loss(o, y, reduction="none"), backend="reference"
        ).gradients(X, REAL)
    with pytest.raises(ConvforgeError, match="loss must be .* one of cross_entropy, mse, l1"):
        cf.compile_train(model, (None, 3), loss="hinge")
    step = cf.compile_train(model, (None, 3), loss="nll", backend="reference")
    with pytest.raises(ConvforgeError, match=r"Sequential: target y must hold integer class labels"):
        step(X, REAL)
    with pytest.raises(
        ConvforgeError, match=r"class labels must lie in \[0, 4\), got 7 \(or be the ignore_index"
    ):
        step(X, np.array([0, 1, 7, 2, -100]))
    with pytest.raises(ConvforgeError, match="label_smoothing must be in"):
        F.cross_entropy(REAL, LABELS, label_smoothing=1.5, backend="reference")
    with pytest.raises(ConvforgeError, match="huber_loss.*delta must be"):
        F.huber_loss(REAL, REAL, delta=0.0, backend="reference")
    with pytest.raises(ConvforgeError, match="does not broadcast"):
        F.binary_cross_entropy_with_logits(REAL, PROBS, weight=np.ones(3), backend="reference")
