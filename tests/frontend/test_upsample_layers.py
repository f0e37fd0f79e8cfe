"""``F.interpolate`` / ``nn.Upsample`` against torch: nearest, nearest-exact and bilinear (both
``align_corners``), by size or scale factor, forward and gradients."""

from __future__ import annotations

import convforge.functional as F
import numpy as np
import pytest
import torch
from torch_bridge import assert_close, assert_gradients_match_torch, to_torch

import convforge as cf
from convforge import nn
from convforge.errors import AttributeValueError, ShapeError

CASES = [
    dict(scale_factor=2),
    dict(size=(7, 5)),
    dict(scale_factor=(1.5, 0.75), mode="nearest-exact"),
    dict(scale_factor=2.5, mode="bilinear"),
    dict(size=(9, 4), mode="bilinear", align_corners=True),
    dict(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_interpolate_matches_torch_eagerly(kw):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 6)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), **kw)
    assert_close(F.interpolate(x, **kw), want, what=str(kw))


def test_upsampling_decoder_trains_as_torch(backend):
    cf.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Conv2d(4, 3, 3), nn.UpsamplingNearest2d(size=(7, 9)), nn.UpsamplingBilinear2d(scale_factor=1.5),
        nn.Flatten(), nn.Linear(3 * 10 * 13, 2),
    )  # fmt: skip
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 5)).astype(np.float32)
    y = np.array([1, 0])
    twin = to_torch(model)
    net = cf.compile(model, (None, 2, 4, 5), backend=backend)
    assert_close(net(x), twin(torch.from_numpy(x)), what="forward")
    step = cf.compile_train(model, (None, 2, 4, 5), loss="cross_entropy", backend=backend)
    loss, grads = step.gradients(x, y)
    assert_gradients_match_torch(loss, grads, twin, x, y)


def test_interpolate_refuses_what_torch_refuses_and_what_it_cannot_do():
    x = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(AttributeValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(AttributeValueError, match="align_corners applies to mode 'bilinear' only"):
        F.interpolate(x, scale_factor=2, align_corners=True)
    with pytest.raises(AttributeValueError, match="mode must be 'nearest', 'nearest-exact' or 'bilinear'"):
        nn.Upsample(scale_factor=2, mode="bicubic")
    with pytest.raises(ShapeError, match="expected input \\[N,C,H,W\\] of rank 4"):
        F.interpolate(np.zeros((1, 2, 5), np.float32), scale_factor=2)
