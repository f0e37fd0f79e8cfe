"""The CUDA executable's resident training step over a HostState (what TrainStep uses)."""

from __future__ import annotations

import numpy as np

from convforge.backends import numba_cuda
from convforge.backends.base import HostState
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType


def _accumulate() -> Graph:
    """out0 = sum(x) + s (fed back into s), out1 = s * 1 (reads the old s)."""
    g = Graph("acc")
    x = g.add_input("x", TensorType("f32", ("N", 3)))
    s = g.add_input("s", TensorType("f32", (3,)))
    g.set_outputs([g.call("add", g.call("reduce_sum", x, dims=(0,)), s), g.call("scale", s, factor=1.0)])
    return g


def test_state_stays_on_the_device_until_synced():
    exe = numba_cuda.compile_graph(_accumulate())
    assert exe.device_resident and not exe.supports_out
    loaded = []
    run_device = exe.run_device

    def spy(inputs=None, **kw):
        loaded.append(sorted(inputs or {}))
        return run_device(inputs, **kw)

    exe.run_device = spy
    x = np.ones((2, 3), np.float32)
    state = HostState({"s": np.zeros(3, np.float32)})
    for expected in (0.0, 2.0, 4.0):
        (old,) = exe.step({"x": x}, state, {0: "s"}, fetch=[1])
        np.testing.assert_array_equal(old, [expected] * 3)
    assert loaded == [["s", "x"], ["x"], ["x"]]  # the state was copied in once
    assert state.holder is exe
    np.testing.assert_array_equal(state.arrays["s"], 0.0)  # the host copy is stale ...
    state.sync()
    np.testing.assert_array_equal(state.arrays["s"], 6.0)  # ... until synced
    assert state.holder is None
    exe.step({"x": x}, state, {0: "s"})
    assert loaded[-1] == ["x"]  # after a sync host and device agree: nothing to reload
    state.sync()
    state.arrays["s"][:] = 100.0
    state.changed()
    (old,) = exe.step({"x": x}, state, {0: "s"}, fetch=[1])
    assert loaded[-1] == ["s", "x"]  # a host change is copied in
    np.testing.assert_array_equal(old, [100.0] * 3)


def test_two_executables_hand_the_state_over():
    first, second = numba_cuda.compile_graph(_accumulate()), numba_cuda.compile_graph(_accumulate())
    x = np.ones((2, 3), np.float32)
    state = HostState({"s": np.zeros(3, np.float32)})
    first.step({"x": x}, state, {0: "s"})
    (old,) = second.step({"x": x}, state, {0: "s"}, fetch=[1])  # first's newer value reaches second
    np.testing.assert_array_equal(old, [2.0] * 3)
    assert state.holder is second
    (old,) = first.step({"x": x}, state, {0: "s"}, fetch=[1])
    np.testing.assert_array_equal(old, [4.0] * 3)
    state.sync()
    np.testing.assert_array_equal(state.arrays["s"], 6.0)
