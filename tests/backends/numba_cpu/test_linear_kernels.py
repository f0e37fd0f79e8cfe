"""The shared GEMM kernel of linear and matmul (``kernels/linear.py``) on each of its paths:
the row split, the column split through ``?gemm``, one row through ``?gemv``, and the few
rows of small-batch inference through ``blas.skinny_abt``; all four transposes, empty
operands, and a small-batch linear layer against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convforge as cf
from convforge import nn
from convforge.backends.numba_cpu.kernels.blas import SKINNY_ROWS
from convforge.backends.numba_cpu.kernels.linear import matmul
from tests.torch_bridge import to_torch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 2, 3, SKINNY_ROWS, SKINNY_ROWS + 1, 40])
@pytest.mark.parametrize("k, n", [(0, 5), (1, 3), (17, 37), (100, 70), (9, 0)])
def test_every_path_and_transpose_matches_numpy(dtype, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype)
    expected = a.astype(np.float64) @ b.T.astype(np.float64)
    for ta, tb in [(False, True), (False, False), (True, True), (True, False)]:
        aa = np.ascontiguousarray(a.T) if ta else a
        bb = b if tb else np.ascontiguousarray(b.T)
        c = np.full((m, n), np.nan, dtype=dtype)
        matmul(aa, bb, c, ta, tb, 2)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, k), err_msg=f"ta={ta} tb={tb}")


@pytest.mark.parametrize("batch", [1, 3, SKINNY_ROWS])
def test_small_batch_linear_matches_torch(batch):
    cf.manual_seed(3)
    model = nn.Sequential(nn.Linear(300, 129), nn.ReLU(), nn.Linear(129, 7))
    x = np.random.default_rng(batch).standard_normal((batch, 300)).astype(np.float32)
    net = cf.compile(model, (None, 300), backend="numba-cpu", tiered=False)
    with torch.no_grad():
        expected = to_torch(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x), expected, rtol=1e-4, atol=1e-5)
