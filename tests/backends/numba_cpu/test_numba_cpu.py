"""The numba-cpu backend against the reference interpreter (kernels shared across tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convforge.backends import cache, numba_cpu, reference
from convforge.backends.numba_cpu import kernels
from convforge.errors import BackendError, ConvforgeError
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T
from tests.backends.numba_cpu.graphs import lenet, random_inputs


@pytest.fixture(scope="module")
def lenet_fused():
    g = lenet()
    return g, numba_cpu.compile_graph(g)


def test_lenet_inference_matches_reference(lenet_fused):
    g, ex = lenet_fused
    inputs = random_inputs(g, 3)
    np.testing.assert_allclose(ex.run(inputs)[0], reference.run_graph(g, inputs)[0], rtol=1e-4, atol=1e-5)


def test_new_batch_size_compiles_nothing(lenet_fused):
    g, ex = lenet_fused
    ex.run(random_inputs(g, 2))
    before = cache.stats()["compiled"]
    inputs = random_inputs(g, 5, seed=1)
    out = ex.run(inputs)[0]
    assert cache.stats()["compiled"] == before
    np.testing.assert_allclose(out, reference.run_graph(g, inputs)[0], rtol=1e-4, atol=1e-5)


def test_fused_and_unfused_agree(lenet_fused):
    g, ex = lenet_fused
    assert sum(n.op == "fusion" for n in ex.graph.nodes) == 4
    unfused = numba_cpu.compile_graph(g, pipeline="")
    inputs = random_inputs(g, 4)
    np.testing.assert_allclose(ex.run(inputs)[0], unfused.run(inputs)[0], rtol=1e-5, atol=1e-6)


def test_outputs_are_fresh(lenet_fused):
    g, ex = lenet_fused
    inputs = random_inputs(g, 2)
    a = ex.run(inputs)[0]
    kept = a.copy()
    b = ex.run(random_inputs(g, 2, seed=3))[0]
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, kept)


def test_inputs_checked_before_kernels(lenet_fused):
    g, ex = lenet_fused
    inputs = random_inputs(g, 2)
    inputs["x"] = inputs["x"][:, :, :27]
    with pytest.raises(ConvforgeError, match=r"%x.*expected shape f32\[N,1,28,28\]"):
        ex.run(inputs)
    inputs = random_inputs(g, 2)
    inputs["0.weight"] = inputs["0.weight"].astype(np.float64)
    with pytest.raises(ConvforgeError, match="0.weight"):
        ex.run(inputs)


def test_source_names_the_ir(lenet_fused):
    _, ex = lenet_fused
    src = ex.source()
    assert src.startswith("# convforge numba-cpu driver for graph @lenet")
    assert "# convforge numba-cpu kernel for IR pattern: conv2d -> relu -> max_pool2d" in src


def test_f64_and_losses():
    g = Graph("loss")
    x = g.add_input("x", T("f64", ("N", 5)))
    t = g.add_input("target", T("i64", ("N",)))
    h = g.call("log_softmax", g.call("tanh", x), dim=1)
    loss = g.call("cross_entropy", h, t)
    gl = g.call("cross_entropy_backward", g.call("ones_like", loss), h, t)
    g.set_outputs([loss, gl, g.call("reduce_sum", gl, dims=(0,))])
    ex = numba_cpu.compile_graph(g)
    inputs = {"x": np.random.default_rng(0).standard_normal((4, 5)), "target": np.array([0, 4, 2, 1])}
    for got, want in zip(ex.run(inputs), reference.run_graph(g, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    inputs["target"] = np.array([0, 5, 2, 1])
    with pytest.raises(ConvforgeError, match=r"\[0, 5\), got 5"):
        ex.run(inputs)


def test_missing_kernel_is_an_error(monkeypatch):
    kernels.load_all()
    monkeypatch.delitem(kernels.LOWERINGS, "sigmoid")
    g = Graph("g")
    g.set_outputs([g.call("sigmoid", g.add_input("x", T("f32", ("N", 3))))])
    with pytest.raises(BackendError, match="sigmoid"):
        numba_cpu.compile_graph(g)


def test_training_gradients_match_reference():
    import convforge as cf
    from convforge import nn, optim

    def model():
        return nn.Sequential(
            nn.Conv2d(1, 2, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * 4 * 4, 3),
        )  # fmt: skip

    kw = dict(input_shape=(None, 1, 8, 8), loss="cross_entropy", optimizer=optim.SGD(lr=0.1, momentum=0.9))
    step = cf.compile_train(model(), backend="numba-cpu", **kw)
    ref = cf.compile_train(model(), backend="reference", **kw)
    ref.load_state_dict(step.state_dict())
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    loss, grads = step.gradients(x, y)
    rloss, rgrads = ref.gradients(x, y)
    assert loss == pytest.approx(rloss, rel=1e-5)
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for _ in range(2):
        assert step(x, y) == pytest.approx(ref(x, y), rel=1e-4)


def test_second_process_loads_from_cache(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np
        from convforge.backends import cache, numba_cpu
        from convforge.ir.graph import Graph
        from convforge.ir.types import TensorType as T
        g = Graph("g")
        g.set_outputs([g.call("leaky_relu", g.add_input("x", T("f32", ("N", 3))), negative_slope=0.2)])
        numba_cpu.compile_graph(g).run({"x": np.ones((2, 3), np.float32)})
        s = cache.stats()
        print(s["compiled"], s["loaded"])
        """
    )
    env = {**os.environ, "CONVFORGE_CACHE_DIR": str(tmp_path), "CONVFORGE_DEBUG": "1"}
    runs = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    compiled_first, _ = map(int, runs[0].stdout.split())
    compiled_second, loaded_second = map(int, runs[1].stdout.split())
    assert compiled_first >= 1
    assert (compiled_second, loaded_second) == (0, compiled_first)
    assert "loaded from cache" in runs[1].stderr


def test_training_step_updates_weights_in_place_and_keeps_returned_arrays():
    import convforge as cf
    from convforge.models import lenet5

    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), np.array([0, 1, 2, 3])
    sgd = cf.optim.SGD(lr=0.1, momentum=0.9)
    steps = {
        b: cf.compile_train(lenet5(), (None, 1, 28, 28), optimizer=sgd, backend=b)
        for b in ("reference", "numba-cpu")
    }
    steps["numba-cpu"].load_state_dict(steps["reference"].state_dict())
    before = steps["numba-cpu"].state_dict()
    for _ in range(2):
        losses = {b: s(x, y) for b, s in steps.items()}
        assert losses["numba-cpu"] == pytest.approx(losses["reference"], rel=1e-5)
    program = steps["numba-cpu"]._program("train")
    updated = {program.roles[j][1] for j in program.in_place}
    assert {"0.weight", "optim.0.weight.momentum_buffer", "11.bias"} <= updated
    for name, value in steps["reference"].state_dict().items():
        np.testing.assert_allclose(steps["numba-cpu"].state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert not np.allclose(before["0.weight"], steps["numba-cpu"].state_dict()["0.weight"])


def test_static_kernels_are_stamped_with_every_kernel_source():
    """Numba alone would key conv.py's cached kernels on conv.py only, and keep serving them
    after an edit to blas.py (which they call); one stamp over all kernel files prevents that."""
    from convforge.backends import cache
    from convforge.backends.numba_cpu import kernels
    from convforge.backends.numba_cpu.kernels import blas, conv

    for fn in (conv.conv2d_backward_input, blas.gemm):
        locator = fn._cache._impl.locator
        assert locator.get_source_stamp() == kernels.SOURCES_HASH
        assert locator.get_cache_path() == str(cache.cache_dir() / f"static-{kernels.SOURCES_HASH}")
