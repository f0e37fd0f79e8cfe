"""cf.onnx.export: zoo models written as checked ONNX files that onnxruntime runs with
convforge's outputs, from modules, compiled models and training steps."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx_models import ort_run

import convforge as cf
from convforge import nn
from convforge.models import alexnet, deep_mnist, lenet5, resnet_small
from convforge.onnx.reader import OnnxError

ZOO = {
    "lenet5": (lenet5, (1, 28, 28)),
    "deep_mnist": (lambda: deep_mnist(seed=0), (1, 28, 28)),
    "resnet_small": (resnet_small, (1, 28, 28)),
    "alexnet": (alexnet, (3, 227, 227)),
}


def _bn_statistics(model, rng):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.normal(size=m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, size=m.num_features)
            m.bias[...] = rng.normal(size=m.num_features)


def _agree(ours, theirs, what):
    scale = float(np.abs(theirs).max())
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * scale + 1e-4 * np.abs(theirs).max(), what


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_exports_a_checked_file_onnxruntime_agrees_with(name, tmp_path, rng):
    build, shape = ZOO[name]
    model = build()
    _bn_statistics(model, rng)
    path = tmp_path / f"{name}.onnx"
    proto = cf.onnx.export(model, path, input_shape=(None, *shape))
    onnx.checker.check_model(str(path), full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {t.name for t in proto.graph.initializer} >= {k for k, _ in model.named_parameters()}
    batch = 1 if name == "alexnet" else 3
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    want = cf.compile(model, (None, *shape), backend="reference")(x)
    _agree(ort_run(str(path), x), want, name)
    if name != "alexnet":  # the round trip: the file imports with the same keys and outputs
        back = cf.onnx.load(path)
        assert set(back.state_dict()) <= set(model.state_dict())
        _agree(cf.compile(back, back.input_shape, backend="reference")(x), want, f"{name} round trip")


@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_compiled_models_export_what_their_backend_runs(name, tmp_path, rng):
    """numba-cpu's graph has fused regions and batch norm folded into the convs: the file
    holds their ops and the folded weights, and agrees with the model."""
    build, shape = ZOO[name]
    model = build()
    _bn_statistics(model, rng)
    net = cf.compile(model, (None, *shape), backend="numba-cpu")
    assert any(n.op == "fusion" for n in net.graph.nodes)
    path = tmp_path / "net.onnx"
    proto = cf.onnx.export(net, path)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    _agree(ort_run(str(path), x), net(x), name)


def test_training_step_exports_its_trained_weights(tmp_path, rng):
    model = lenet5()
    step = cf.compile_train(model, (None, 1, 28, 28), optimizer=cf.optim.SGD(lr=0.1), backend="reference")
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    step(x, rng.integers(0, 10, size=8))
    path = tmp_path / "trained.onnx"
    cf.onnx.export(step, path)
    _agree(ort_run(str(path), x), step.inference()(x), "trained")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(init["0.weight"], step.state_dict()["0.weight"])


class Everything(nn.Module):
    """The exporter's op set on one small input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 6)

    def forward(self, x):
        import convforge.functional as F

        h = F.relu(self.bn(self.conv(x)))
        h = F.leaky_relu(h, 0.2) + F.sigmoid(h) * F.tanh(h)
        h = self.pool(F.max_pool2d(h, 3, 1, 1))
        h = cf.concat([h, F.relu6(h)], dim=1)
        return F.log_softmax(self.fc(F.flatten(h, 1)), dim=1)


def test_more_ops_round_trip_through_onnxruntime(tmp_path, rng):
    model = Everything()
    _bn_statistics(model, rng)
    path = tmp_path / "all.onnx"
    cf.onnx.export(model, path, input_shape=(None, 3, 8, 8))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    _agree(ort_run(str(path), x), cf.compile(model, (None, 3, 8, 8), backend="reference")(x), "ops")


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opsets(opset, tmp_path, rng):
    model = resnet_small()
    path = tmp_path / f"o{opset}.onnx"
    proto = cf.onnx.export(model, path, input_shape=(None, 1, 28, 28), opset=opset)
    assert proto.opset_import[0].version == opset
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    _agree(
        ort_run(str(path), x), cf.compile(model, (None, 1, 28, 28), backend="reference")(x), f"opset {opset}"
    )


def test_bad_requests(tmp_path):
    with pytest.raises(OnnxError, match="opset must be an int from 13"):
        cf.onnx.export(lenet5(), tmp_path / "a.onnx", (None, 1, 28, 28), opset=7)
    with pytest.raises(OnnxError, match="input_shape is required"):
        cf.onnx.export(lenet5(), tmp_path / "a.onnx")
    with pytest.raises(OnnxError, match="expects an nn.Module"):
        cf.onnx.export("lenet5", tmp_path / "a.onnx", (None, 1, 28, 28))
    assert not os.listdir(tmp_path)


def test_the_file_is_written_atomically(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    cf.onnx.export(lenet5(), path, (None, 1, 28, 28))
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary file left next to it
    onnx.checker.check_model(str(path), full_check=True)
