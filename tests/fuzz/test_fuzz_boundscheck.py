"""One cell of the fuzz suite under ``NUMBA_BOUNDSCHECK=1``: functional calls with hostile
geometry and hostile model inputs, in a worker whose Numba kernels check every index (an
out-of-bounds access is an ``IndexError``, the ``other`` outcome, instead of silent memory
corruption). Bounds checking changes the cache stamp, so the worker compiles into its own
``$CONVFORGE_CACHE_DIR``.
"""

from __future__ import annotations

import harness
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_api import functional_call, geometry_call
from test_fuzz_inputs import model_inputs


@pytest.fixture(scope="module")
def checked_worker(tmp_path_factory):
    cache = tmp_path_factory.mktemp("boundscheck") / "cache"
    w = harness.Worker(env={"NUMBA_BOUNDSCHECK": "1", "CONVFORGE_CACHE_DIR": str(cache)})
    assert w.run("numba_settings") == {"outcome": "ok", "note": "BOUNDSCHECK=1"}
    yield w
    w.close()
    assert any(cache.glob("static-*")), "the cell compiled nothing"


@settings(max_examples=harness.examples(6))
@given(st.one_of(geometry_call(), geometry_call(), functional_call()))
def test_functional_calls_with_bounds_checked_kernels(checked_worker, case):
    name, args, kwargs = case
    result = checked_worker.run("functional", name=name, args=args, kwargs=kwargs)
    harness.check("boundscheck cell", result, case)


@settings(max_examples=harness.examples(6))
@given(model_inputs())
def test_model_inputs_with_bounds_checked_kernels(checked_worker, case):
    model, kind, x, y = case
    harness.check("boundscheck cell", checked_worker.run("inputs", model=model, kind=kind, x=x, y=y), case)
