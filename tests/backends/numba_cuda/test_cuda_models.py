"""numba-cuda end to end: fused regions, whole models, training, device arrays, errors."""

from __future__ import annotations

import numpy as np
import pytest

import convforge as cf
from convforge import functional as F
from convforge import nn, optim
from convforge.backends import numba_cuda
from convforge.backends.numba_cuda import codegen, kernels, runtime
from convforge.backends.reference import run_graph
from convforge.errors import BackendError, ConvforgeError, ShapeError
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _conv_chain(pool: str = "max_pool2d", bn: bool = False) -> Graph:
    g = Graph("chain")
    x = g.add_input("x", TensorType("f32", ("N", 2, 6, 6)))
    w = g.add_input("w", TensorType("f32", (3, 2, 3, 3)))
    b = g.add_input("b", TensorType("f32", (3,)))
    y = g.call("conv2d", x, w, b, padding=(1, 1))
    if bn:
        params = [g.add_input(n, TensorType("f32", (3,))) for n in ("bw", "bb", "bm", "bv")]
        y = g.call("batch_norm", y, *params)
    y = g.call("relu", y)
    y = g.call(pool, y, kernel_size=(2, 2))
    g.set_outputs([y])
    return g


def _launches(exe, batch: int = 2) -> list:
    return exe._bound_for(batch).program.launches


@pytest.mark.parametrize("pool, bn", [("max_pool2d", False), ("avg_pool2d", True)])
def test_fused_conv_chain_is_one_launch(cu, rng, pool, bn):
    graph = _conv_chain(pool, bn)
    arrays = cu.inputs(graph, rng)
    if bn:
        arrays["bv"] = np.abs(arrays["bv"]) + 0.5
    exe = numba_cuda.compile_graph(graph, pipeline="fuse,dce")
    assert [n.op for n in exe.graph.nodes] == ["fusion"]
    assert len(_launches(exe)) == 1
    np.testing.assert_allclose(exe.run(arrays)[0], run_graph(graph, arrays)[0], **TOL)
    assert "conv2d" in exe.source() and pool in exe.source()


def test_inference_pipeline_folds_batchnorm(cu, rng):
    graph = _conv_chain("max_pool2d", bn=True)
    arrays = cu.inputs(graph, rng)
    arrays["bv"] = np.abs(arrays["bv"]) + 0.5
    cu.check(graph, arrays, pipeline=None)


def test_fused_linear_epilogue(cu, rng):
    g = Graph("dense")
    x = g.add_input("x", TensorType("f32", ("N", 5)))
    w = g.add_input("w", TensorType("f32", (3, 5)))
    b = g.add_input("b", TensorType("f32", (3,)))
    g.set_outputs([g.call("leaky_relu", g.call("linear", x, w, b), negative_slope=0.1)])
    exe = numba_cuda.compile_graph(g, pipeline="fuse,dce")
    assert [n.op for n in exe.graph.nodes] == ["fusion"] and len(_launches(exe)) == 1
    arrays = cu.inputs(g, rng)
    np.testing.assert_allclose(exe.run(arrays)[0], run_graph(g, arrays)[0], **TOL)


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(27, 4),
    )


def test_compiled_model_forward(rng):
    model = _small_cnn()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    want = cf.compile(model, (None, 1, 6, 6), backend="reference")(x)
    net = cf.compile(model, (None, 1, 6, 6), backend="numba-cuda")
    np.testing.assert_allclose(net(x), want, **TOL)
    x3 = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)  # a new batch size
    np.testing.assert_allclose(net(x3), cf.compile(model, (None, 1, 6, 6), backend="reference")(x3), **TOL)


def _assert_same_gradients(model, x, y, **kw):
    ref_loss, ref = cf.compile_train(model, (None, *x.shape[1:]), backend="reference", **kw).gradients(x, y)
    step = cf.compile_train(model, (None, *x.shape[1:]), backend="numba-cuda", **kw)
    loss, grads = step.gradients(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref.keys()
    for name in ref:
        np.testing.assert_allclose(grads[name], ref[name], err_msg=name, **TOL)
    return step


def test_training_gradients_match_reference(rng):
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    step = _assert_same_gradients(_small_cnn(), x, np.array([1, 3]))
    ops = [n.op for n in step.graph_for("grad").nodes]
    assert "fusion" in ops and "max_pool2d" not in ops  # conv -> relu -> pool(argmax) and its backward fused


def test_training_gradients_batchnorm_dropout(rng):
    model = nn.Sequential(
        nn.Conv2d(2, 2, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Dropout(0.4),
        nn.Linear(18, 3),
        nn.LogSoftmax(dim=1),
    )
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    _assert_same_gradients(model, x, rng.standard_normal((2, 3)).astype(np.float32), loss="mse")


def test_training_steps_match_reference(rng):
    model = _small_cnn()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    steps = {
        b: cf.compile_train(model, (None, 1, 6, 6), optimizer=optim.SGD(lr=0.1, momentum=0.9), backend=b)
        for b in ("reference", "numba-cuda")
    }
    for _ in range(2):
        losses = {b: s(x, y) for b, s in steps.items()}
        assert losses["numba-cuda"] == pytest.approx(losses["reference"], rel=1e-5)
    ref, got = steps["reference"].state_dict(), steps["numba-cuda"].state_dict()
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], err_msg=name, **TOL)


def test_adam_training_step_matches_reference(rng):
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 1, 1])
    losses = {}
    for b in ("reference", "numba-cuda"):
        step = cf.compile_train(model, (None, 4), optimizer=optim.Adam(lr=0.01), backend=b)
        losses[b] = [step(x, y) for _ in range(2)]
    np.testing.assert_allclose(losses["numba-cuda"], losses["reference"], rtol=1e-5)


# -- device arrays and resident execution --------------------------------------------------
def _exe_and_inputs(rng):
    graph = _conv_chain()
    arrays = {v.name: rng.standard_normal(v.type.concrete(2)).astype(np.float32) for v in graph.inputs}
    return numba_cuda.compile_graph(graph), graph, arrays


def test_device_arrays_in_device_arrays_out(rng):
    cuda, _ = runtime.load_cuda()

    exe, graph, arrays = _exe_and_inputs(rng)
    host = exe.run(arrays)[0]
    assert isinstance(host, np.ndarray)
    device_in = {**arrays, "x": cuda.to_device(arrays["x"])}
    (out,) = exe.run(device_in)
    assert runtime.is_device_array(out)
    np.testing.assert_array_equal(out.copy_to_host(), host)
    out2 = exe.run(device_in)[0]
    assert out2 is not out  # outputs belong to the caller: a later call never overwrites them


def test_run_device_keeps_inputs_resident_and_feeds_back(rng):
    cuda, _ = runtime.load_cuda()

    g = Graph("acc")
    x = g.add_input("x", TensorType("f32", ("N", 3)))
    s = g.add_input("s", TensorType("f32", (3,)))
    g.set_outputs([g.call("add", g.call("reduce_sum", x, dims=(0,)), s)])
    exe = numba_cuda.compile_graph(g)
    xs = np.ones((2, 3), dtype=np.float32)
    exe.run_device({"x": cuda.to_device(xs), "s": np.zeros(3, dtype=np.float32)}, fetch=[], feedback={0: "s"})
    (total,) = exe.run_device({}, feedback={0: "s"})  # x and s stay on the device
    np.testing.assert_array_equal(total.copy_to_host(), [4.0, 4.0, 4.0])
    with pytest.raises(ConvforgeError, match="cannot feed"):
        exe.run_device({}, feedback={0: "x"})


# -- errors --------------------------------------------------------------------------------
def test_inputs_checked_before_any_kernel(rng):
    exe, _, arrays = _exe_and_inputs(rng)
    with pytest.raises(ShapeError, match="x"):
        exe.run({**arrays, "x": arrays["x"][:, :1]})
    with pytest.raises(ConvforgeError, match="missing input"):
        exe.run({k: v for k, v in arrays.items() if k != "w"})
    g = Graph("ce")
    logits = g.add_input("logits", TensorType("f32", ("N", 3)))
    target = g.add_input("target", TensorType("i64", ("N",)))
    g.set_outputs([g.call("cross_entropy", logits, target)])
    exe = numba_cuda.compile_graph(g)
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        exe.run({"logits": np.zeros((2, 3), np.float32), "target": np.array([0, 3])})


def test_missing_kernel_names_the_op(monkeypatch):
    monkeypatch.delitem(kernels.load_all(), "tanh")
    g = Graph("t")
    g.set_outputs([g.call("tanh", g.add_input("x", TensorType("f32", ("N", 2))))])
    with pytest.raises(BackendError, match="tanh"):
        numba_cuda.compile_graph(g)


def test_no_gpu_and_no_simulator_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "is_simulator", lambda cuda: False)
    monkeypatch.setattr(runtime, "gpu_available", lambda cuda: False)
    g = Graph("t")
    g.set_outputs([g.call("relu", g.add_input("x", TensorType("f32", ("N", 2))))])
    with pytest.raises(BackendError, match="NUMBA_ENABLE_CUDASIM=1") as err:
        numba_cuda.compile_graph(g)
    assert "driver" in str(err.value)
    with pytest.raises(BackendError, match="NUMBA_ENABLE_CUDASIM"):
        F.relu(np.zeros((2, 2), np.float32), backend="numba-cuda")


def test_source_names_the_ir_and_batch_size_compiles_nothing_new(rng):
    exe, _, _ = _exe_and_inputs(rng)
    source = exe.source()
    files = source.split("# ---- ")[1:]
    assert files and all("\n# convforge numba-cuda kernel: " in f for f in files)
    assert "conv2d" in source and "max_pool2d" in source and "%" in source  # names the node it implements
    assert exe._bound_for(2).program.files.keys() == exe._bound_for(5).program.files.keys()
    assert isinstance(codegen.SIMULATOR, codegen.Geometry)


def test_training_keeps_weights_on_the_device_between_steps(rng, monkeypatch):
    model = _small_cnn()
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    ref, step = (
        cf.compile_train(model, (None, 1, 6, 6), optimizer=optim.SGD(lr=0.1, momentum=0.9), backend=b)
        for b in ("reference", "numba-cuda")
    )
    net = step.inference()
    step(x, y)
    ref(x, y)
    exe = step._program("train").executable
    loaded = []
    original = type(exe).run_device

    def spy(self, inputs=None, **kw):
        loaded.append(sorted(inputs or {}))
        return original(self, inputs, **kw)

    monkeypatch.setattr(type(exe), "run_device", spy)
    step(x, y)
    ref(x, y)
    assert loaded == [["step", "target", "x"]]  # weights and optimizer state stayed resident
    np.testing.assert_allclose(net(x), ref.inference()(x), **TOL)  # the shared model sees the new weights
    step.set_lr(0.05)
    ref.set_lr(0.05)
    step.load_state_dict(ref.state_dict())  # host -> device again on the next step
    assert step(x, y) == pytest.approx(ref(x, y), rel=1e-5)
    assert loaded[-1] != ["step", "target", "x"]
    for name, value in ref.state_dict().items():
        np.testing.assert_allclose(step.state_dict()[name], value, err_msg=name, **TOL)
