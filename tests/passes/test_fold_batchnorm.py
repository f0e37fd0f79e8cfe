"""fold-batchnorm: conv -> batch_norm (eval) folds into the conv's weight and bias."""

from __future__ import annotations

import numpy as np

from convforge.backends import numba_cpu, reference
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T
from convforge.passes import PassManager
from tests.backends.numba_cpu.graphs import random_inputs


def _graph(bias: bool) -> Graph:
    g = Graph("bn")
    x = g.add_input("x", T("f64", ("N", 2, 6, 6)))
    w = g.add_input("w", T("f64", (3, 2, 3, 3)))
    extra = [g.add_input("b", T("f64", (3,)))] if bias else []
    p = [g.add_input(n, T("f64", (3,))) for n in ("gamma", "beta", "running_mean", "running_var")]
    h = g.call("conv2d", x, w, *extra, padding=(1, 1))
    g.set_outputs([g.call("relu", g.call("batch_norm", h, *p, eps=1e-3))])
    return g


def test_fold_matches_reference():
    for bias in (True, False):
        g = _graph(bias)
        folded = g.copy()
        PassManager.from_string("fold-batchnorm,dce").run(folded)
        assert "batch_norm" not in [n.op for n in folded.nodes]
        inputs = random_inputs(g, 2)
        want = reference.run_graph(g, inputs)[0]
        np.testing.assert_allclose(reference.run_graph(folded, inputs)[0], want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(numba_cpu.compile_graph(g).run(inputs)[0], want, rtol=1e-10, atol=1e-12)
