"""The numba-cuda tests run on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

On a GPU machine run them on the hardware with ``NUMBA_ENABLE_CUDASIM=0``. The variable
must take effect before ``numba.cuda`` is first imported; ``numba`` itself may already be
imported by other test modules, so ``load_cuda`` (which re-reads numba's configuration)
imports ``numba.cuda`` here, at collection, before any test can.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from convforge.backends.numba_cuda.runtime import load_cuda  # noqa: E402

load_cuda()

from convforge.backends.reference import run_graph  # noqa: E402
from convforge.ir.graph import Graph  # noqa: E402
from convforge.ir.types import TensorType  # noqa: E402

#: batch size substituted for N in every test graph
BATCH = 2


def op_graph(op: str, inputs: dict[str, tuple[str, tuple]], **attrs) -> Graph:
    """A graph of one ``op`` node over named inputs ``{name: (dtype, shape)}``, all outputs returned."""
    g = Graph(op)
    values = [g.add_input(name, TensorType(dtype, shape)) for name, (dtype, shape) in inputs.items()]
    out = g.call(op, *values, **attrs)
    g.set_outputs(list(out) if isinstance(out, tuple) else [out])
    return g


def random_inputs(graph: Graph, rng: np.random.Generator, batch: int = BATCH) -> dict[str, np.ndarray]:
    """Standard-normal floats, small non-negative ints; shapes with N = ``batch``."""
    out = {}
    for v in graph.inputs:
        shape = v.type.concrete(batch)
        if v.type.is_float:
            out[v.name] = rng.standard_normal(shape).astype(v.type.np_dtype)
        else:
            out[v.name] = rng.integers(0, 3, size=shape).astype(v.type.np_dtype)
    return out


def assert_matches_reference(
    graph: Graph,
    inputs: dict[str, np.ndarray],
    *,
    pipeline: str | None = "",
    rtol: float = 1e-4,
    atol: float = 1e-5,
    training: bool = False,
) -> list[np.ndarray]:
    """Compile ``graph`` on numba-cuda (no passes unless ``pipeline``) and compare with the reference."""
    from convforge.backends.numba_cuda import compile_graph

    exe = compile_graph(graph, training=training, pipeline=pipeline)
    got = exe.run(inputs)
    want = run_graph(graph, inputs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"output {i}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"output {i}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i} of {graph.name}")
    return got


@pytest.fixture(autouse=True)
def cuda_cache(tmp_path_factory, monkeypatch):
    """Kernel files go to one temporary cache shared by the session's tests."""
    root = tmp_path_factory.getbasetemp() / "convforge-cuda-cache"
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(root))
    return root


@pytest.fixture
def cu() -> SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable by name)."""
    return SimpleNamespace(
        op_graph=op_graph, inputs=random_inputs, check=assert_matches_reference, batch=BATCH
    )
