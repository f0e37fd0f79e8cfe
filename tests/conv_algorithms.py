"""Shared agreement checks and models of the numba-cpu convolution algorithms (Winograd, direct)."""

from __future__ import annotations

import numpy as np
import torch

import convforge as cf
from convforge import nn
from convforge.testing.agree import compare_arrays
from convforge.testing.tolerances import tolerance
from tests.torch_bridge import to_torch


def assert_agree(got, expected, dtype: str, algorithm: str, *backends: str) -> None:
    """``got`` (numba-cpu running ``algorithm``) within the tolerance of ``backends``."""
    mismatch = compare_arrays(got, expected, tolerance(dtype, *backends))
    assert mismatch is None, mismatch.describe(f"numba-cpu {algorithm}", backends[-1])


def assert_matches_reference_f64_and_torch_f32(model: nn.Module, x: np.ndarray, algorithm: str) -> None:
    """``model`` on numba-cpu runs ``algorithm`` and agrees with the reference in float64
    and with its torch twin in float32."""
    shape = (None, *x.shape[1:])
    for dtype in ("float64", "float32"):
        net = cf.compile(model, shape, backend="numba-cpu", dtype=dtype)
        assert f"# conv algorithm: {algorithm}" in net.source()
        got = net(x.astype(dtype))
        if dtype == "float64":
            expected = cf.compile(model, shape, backend="reference", dtype=dtype)(x)
            assert_agree(got, expected, "f64", algorithm, "reference", "numba-cpu")
        else:
            with torch.no_grad():
                expected = to_torch(model)(torch.from_numpy(x.astype(np.float32))).numpy()
            assert_agree(got, expected, "f32", algorithm, "numba-cpu", "torch")


def vgg_block() -> nn.Module:
    """Two 3x3 conv -> BN -> ReLU layers the cost model puts on Winograd in the backward (the
    second's weight and input gradients) on a plane of ragged 2x2 tiles."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 17 * 15, 4),
    )  # fmt: skip
