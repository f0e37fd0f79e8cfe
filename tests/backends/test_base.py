"""The backend contract (``backends/base.py``): Backend, Executable capabilities, HostState,
class-label inputs from the ops' ``labels`` fact, and the shared lowering table."""

from __future__ import annotations

import numpy as np
import pytest

from convforge.backends import get_backend, numba_cpu, reference
from convforge.backends.base import Backend, Executable, HostState, label_inputs
from convforge.backends.lowering import LoweringTable
from convforge.errors import BackendError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T


def _ce_graph() -> Graph:
    g = Graph("ce")
    logits = g.add_input("logits", T("f64", ("N", 3)))
    target = g.add_input("target", T("i64", ("N",)))
    g.set_outputs([g.call("cross_entropy", logits, target)])
    return g


def _conv_relu_pool() -> Graph:
    g = Graph("crp")
    x = g.add_input("x", T("f64", ("N", 1, 6, 6)))
    w = g.add_input("w", T("f64", (2, 1, 3, 3)))
    b = g.add_input("b", T("f64", (2,)))
    y = g.call("max_pool2d", g.call("relu", g.call("conv2d", x, w, b, padding=1)), kernel_size=2, stride=2)
    g.set_outputs([y])
    return g


def test_every_backend_is_a_backend_with_its_pipelines():
    for name in ("reference", "numba-cpu", "numba-cuda"):
        backend = get_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
        assert backend.pipeline(training=False) == backend.inference_pipeline
        assert backend.pipeline(training=True) == backend.training_pipeline
    assert get_backend("reference").pipeline(True) == get_backend("reference").pipeline(False) == ""
    assert get_backend("numba-cpu") is numba_cpu.BACKEND
    assert numba_cpu.BACKEND.training_pipeline == numba_cpu.PIPELINE_TRAINING


def test_a_module_without_a_backend_is_not_available(monkeypatch):
    from convforge import backends

    monkeypatch.setitem(backends.BACKENDS, "nothing", "convforge.errors")
    with pytest.raises(BackendError, match="'nothing' is not available"):
        get_backend("nothing")


def test_capabilities_are_declared():
    assert numba_cpu.NumbaCpuExecutable.supports_out and not numba_cpu.NumbaCpuExecutable.device_resident
    assert not reference.ReferenceExecutable.supports_out
    assert not reference.ReferenceExecutable.device_resident
    assert issubclass(reference.ReferenceExecutable, Executable)


def test_compile_graph_copies_and_runs_the_chosen_pipeline(rng):
    g = _conv_relu_pool()
    before = str(g)
    plain = reference.compile_graph(g)
    fused = reference.compile_graph(g, pipeline="fuse,dce")
    assert str(g) == before and plain.graph is not g and fused.graph is not g
    assert str(plain.graph) == before
    assert [n.op for n in fused.graph.nodes] == ["fusion"]
    inputs = {"x": rng.standard_normal((2, 1, 6, 6)), "w": rng.standard_normal((2, 1, 3, 3)), "b": np.ones(2)}
    np.testing.assert_allclose(fused.run(inputs)[0], plain.run(inputs)[0], rtol=1e-12)


def test_require_runs_before_any_pass():
    def unavailable():
        raise BackendError("no such device")

    backend = Backend(
        "nowhere", reference.ReferenceExecutable, inference_pipeline="no-such-pass", require=unavailable
    )
    with pytest.raises(BackendError, match="no such device"):
        backend.compile_graph(_ce_graph())


def test_reference_checks_class_labels():
    exe = reference.compile_graph(_ce_graph())
    logits = np.zeros((2, 3))
    assert np.isfinite(exe.run({"logits": logits, "target": np.array([0, 2])})[0])
    for bad in (3, -1):
        with pytest.raises(ShapeError, match=rf"%target: class labels must lie in \[0, 3\), got {bad}"):
            exe.run({"logits": logits, "target": np.array([0, bad])})


def test_label_inputs_read_the_labels_fact_also_inside_regions():
    g = Graph("g")
    gy = g.add_input("gy", T("f32", ()))
    logits = g.add_input("logits", T("f32", ("N", 5)))
    target = g.add_input("target", T("i64", ("N",)))
    other = g.add_input("other", T("i64", ("N",)))
    region = Graph("region")
    r_gy, r_logits, r_target = (region.add_input(v.name, v.type) for v in (gy, logits, other))
    region.set_outputs([region.call("cross_entropy_backward", r_gy, r_logits, r_target)])
    fused = g.create_node("fusion", [gy, logits, other], output_types=[logits.type], region=region)
    g.set_outputs([g.call("cross_entropy", logits, target), fused.outputs[0]])
    assert label_inputs(g) == [("other", 5), ("target", 5)]


def test_host_state_versions_and_holder():
    calls = []

    class Holder(reference.ReferenceExecutable):
        def write_back(self, state):
            calls.append(state)

    state = HostState({"w": np.zeros(2)})
    assert state.version == 0
    state.sync()  # nobody holds newer values
    holder = Holder(_ce_graph())
    state.holder = holder
    state.sync()
    assert calls == [state] and state.holder is None
    state.holder = holder
    assert state.changed() == 1 and state.holder is None  # the host wins after a change
    state.sync()
    assert calls == [state]


def test_host_step_updates_the_state_in_place(rng):
    g = Graph("upd")
    w = g.add_input("w", T("f32", (3,)))
    gw = g.add_input("g", T("f32", (3,)))
    buf = g.add_input("buf", T("f32", (3,)))
    step = g.add_input("step", T("i64", ()))
    new_w, new_buf = g.call("sgd_update", w, gw, buf, step, lr=0.5, momentum=0.9)
    g.set_outputs([g.call("mse_loss", new_w, gw), new_w, new_buf])
    grad = np.array([1.0, 2.0, 3.0], np.float32)
    for exe in (reference.compile_graph(g), numba_cpu.compile_graph(g)):
        state = HostState({"w": np.ones(3, np.float32), "buf": np.zeros(3, np.float32)})
        arrays = dict(state.arrays)
        (loss,) = exe.step({"g": grad, "step": np.asarray(1, np.int64)}, state, {1: "w", 2: "buf"})
        assert state.arrays["w"] is arrays["w"] and state.version == 1
        np.testing.assert_allclose(state.arrays["w"], 1 - 0.5 * grad)
        np.testing.assert_allclose(state.arrays["buf"], grad)
        np.testing.assert_allclose(loss, np.mean((1 - 0.5 * grad - grad) ** 2), rtol=1e-6)
    assert numba_cpu.compile_graph(g).in_place_outputs({1: "w", 2: "buf"}) == {1: "w", 2: "buf"}
    assert reference.compile_graph(g).in_place_outputs({1: "w", 2: "buf"}) == {}


def test_lowering_table():
    table = LoweringTable("toy", "convforge.backends.numba_cpu.kernels", ("shape",))

    @table.register("a", "b")
    def lower_ab(ctx, node):
        return "ab"

    assert table["a"] is table["b"] is lower_ab and "c" not in table and len(table) == 2
    assert table.register("a")(lower_ab) is lower_ab  # the same function again (a re-import) is fine
    with pytest.raises(ValueError, match="'a' is lowered twice"):
        table.register("a")(lambda ctx, node: None)
    with pytest.raises(BackendError, match="toy has no kernel for op 'relu' \\(at %"):
        g = Graph("g")
        g.set_outputs([g.call("relu", g.add_input("x", T("f32", (2,))))])
        table.lookup(g.nodes[0])
    with pytest.raises(BackendError, match="toy has no kernel for op 'c'$"):
        table.lookup("c")
    del table["b"]
    assert list(table) == ["a"]


def test_both_numba_backends_share_the_lowering_table_type():
    from convforge.backends.numba_cpu import kernels as cpu
    from convforge.backends.numba_cuda import kernels as cuda

    for kernels, name in ((cpu, "numba-cpu"), (cuda, "numba-cuda")):
        table = kernels.load_all()
        assert isinstance(table, LoweringTable) and table is kernels.LOWERINGS
        assert table.backend_name == name and "relu" in table
        assert kernels.lowering.__self__ is table
