"""cf.onnx.load: models exported by PyTorch import as nn.Modules that compile, train and
save like any model, and agree with torch forward and backward."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch_bridge import assert_close

import convforge as cf
from convforge.onnx.importer import OnnxModel, state_key

tnn = torch.nn


def torch_onnx(
    module: torch.nn.Module, shape: tuple, opset: int = 17, dynamic: bool = True
) -> onnx.ModelProto:
    """``module`` exported by torch.onnx (the TorchScript exporter, as most files in the wild
    were made), its batch dynamic."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.zeros(2, *shape),), f, dynamo=False, opset_version=opset,
            do_constant_folding=False,  # keep BatchNormalization (and torch's names) in the file
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
        )  # fmt: skip
    return onnx.load_model_from_string(f.getvalue())


def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10),
    )  # fmt: skip


class Block(tnn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.down = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


class SmallResNet(tnn.Module):
    """A ResNet-style net; ``x.view(x.size(0), -1)`` exports as Shape/Gather/Concat/Reshape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU())
        self.block1 = Block(8, 8, 1)
        self.block2 = Block(8, 16, 2)
        self.pool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(16, 5)
        for m in self.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.pool(self.block2(self.block1(self.stem(x))))
        return self.fc(h.view(h.size(0), -1))


def small_alexnet() -> torch.nn.Module:
    """AlexNet's layers at 3x32x32: strided conv, ReLU, overlapping max pool, dropout, linear.

    (torch.onnx writes ``LocalResponseNorm`` as Pow / 3-D AveragePool / Div, not as ONNX
    ``LRN``; the Caffe2 AlexNet of the light models has the ``LRN`` op.)
    """
    torch.manual_seed(2)
    return tnn.Sequential(
        tnn.Conv2d(3, 16, 5, stride=2, padding=2), tnn.ReLU(),
        tnn.MaxPool2d(3, 2), tnn.Conv2d(16, 24, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(3, 2),
        tnn.Flatten(), tnn.Dropout(0.5), tnn.Linear(24 * 3 * 3, 32), tnn.ReLU(), tnn.Dropout(0.5),
        tnn.Linear(32, 10),
    )  # fmt: skip


CASES = {
    "lenet5": (lenet, (1, 28, 28), 10),
    "resnet_style": (SmallResNet, (3, 16, 16), 5),
    "alexnet_style": (small_alexnet, (3, 32, 32), 10),
}


@pytest.fixture(scope="module")
def exported():
    """name -> (torch module, ModelProto)."""
    out = {}
    for name, (build, shape, _) in CASES.items():
        module = build()
        out[name] = (module, torch_onnx(module, shape))
    return out


@pytest.mark.parametrize("name", CASES)
def test_forward_agrees_with_torch(name, exported, backend, rng):
    module, proto = exported[name]
    _, shape, _ = CASES[name]
    model = cf.onnx.load(proto)
    assert isinstance(model, OnnxModel)
    assert model.input_shape == (None, *shape)  # the symbolic batch became None / N
    net = cf.compile(model, model.input_shape, backend=backend)
    assert net.graph.inputs[0].type.shape[0] == "N"
    for batch in (1, 3):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        with torch.no_grad():
            want = module.eval()(torch.from_numpy(x))
        assert_close(net(x), want, what=f"{name} batch {batch}")


@pytest.mark.parametrize("name", CASES)
def test_parameters_are_the_initializers_named_as_in_the_file(name, exported):
    module, proto = exported[name]
    model = cf.onnx.load(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == 1}
    params = dict(model.named_parameters())
    for key, p in params.items():
        assert model.onnx_names[key] in inits
        np.testing.assert_array_equal(p, inits[model.onnx_names[key]])
    # torch keeps its state_dict names in the file: the same keys, BN statistics as buffers
    assert set(params) == {k for k, _ in module.named_parameters()}
    assert set(dict(model.named_buffers())) == {
        k for k, _ in module.named_buffers() if "num_batches" not in k
    }


def test_shape_subgraphs_fold_into_a_batch_free_reshape(exported):
    _, proto = exported["resnet_style"]
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= {n.op_type for n in proto.graph.node}
    graph = cf.compile(cf.onnx.load(proto), (None, 3, 16, 16), backend="reference").graph
    ops = [n.op for n in graph.nodes]
    assert "concat" not in ops and ops.count("reshape") == 1
    (reshape,) = [n for n in graph.nodes if n.op == "reshape"]
    assert reshape.attrs["shape"] == ("N", 16)


def test_dropout_and_identity_vanish_in_inference(rng):
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c"], ["d"], name="drop", ratio=0.3),
        helper.make_node("Identity", ["d"], ["i"], name="same"),
        helper.make_node("Relu", ["i"], ["y"], name="relu"),
    ]
    proto = _graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [w], opset=11,
    )  # fmt: skip
    model = cf.onnx.load(proto)
    net = cf.compile(model, model.input_shape, backend="reference")
    assert [n.op for n in net.graph.nodes] == ["conv2d", "relu"]
    step = cf.compile_train(model, model.input_shape, loss="mse", backend="reference")
    assert "dropout" in {n.op for n in step.graph_for("grad").nodes}  # training draws the mask


@pytest.mark.parametrize("name", ["lenet5", "resnet_style"])
def test_gradients_agree_with_torch(name, exported, backend, rng):
    module, proto = exported[name]
    _, shape, classes = CASES[name]
    model = cf.onnx.load(proto)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=4)
    step = cf.compile_train(model, model.input_shape, loss="cross_entropy", backend=backend)
    step.eval()
    loss, grads = step.gradients(x, y)
    twin = module.eval()
    twin.zero_grad()
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    onnx_to_key = {v: k for k, v in model.onnx_names.items()}
    torch_params = dict(twin.named_parameters())
    checked = 0
    for onnx_name, key in onnx_to_key.items():
        if onnx_name in torch_params and key in grads:
            assert_close(grads[key], torch_params[onnx_name].grad, rtol=1e-3, atol_scale=1e-4, what=key)
            checked += 1
    assert checked >= 4
    assert_close(grads["input"], xt.grad, rtol=1e-3, atol_scale=1e-4, what="input")


def test_training_step_on_imported_alexnet_style_model_agrees_with_torch(exported, rng):
    """compile_train on the imported AlexNet-style model (dropout in eval): the SGD
    step's updated weights are torch's."""
    module, proto = exported["alexnet_style"]
    model = cf.onnx.load(proto)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=4)
    step = cf.compile_train(model, model.input_shape, optimizer=cf.optim.SGD(lr=0.1, momentum=0.9),
                            backend="numba-cpu")  # fmt: skip
    step.eval()
    before = {k: v.copy() for k, v in step.state_dict().items()}
    loss = step(x, y)
    twin = module.eval()
    opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad()
    ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    ref.backward()
    opt.step()
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    after = step.state_dict()
    torch_state = {k: v.detach() for k, v in twin.named_parameters()}
    moved = 0
    for key, onnx_name in model.onnx_names.items():
        if onnx_name in torch_state:
            assert_close(after[key], torch_state[onnx_name], rtol=1e-3, atol_scale=1e-4, what=key)
            moved += not np.array_equal(after[key], before[key])
    assert moved == 8  # every conv and linear weight and bias took the step


def test_training_mode_uses_batch_statistics(exported, rng):
    """In training mode an imported BatchNormalization normalises with the batch statistics
    and updates its running statistics (buffers, as torch's), as torch's train() does."""
    module, proto = exported["resnet_style"]
    model = cf.onnx.load(proto)
    buffers = dict(model.named_buffers())
    assert buffers and all(model.onnx_names[k] for k in buffers)
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 5, size=6)
    step = cf.compile_train(model, model.input_shape, optimizer=cf.optim.SGD(lr=0.0), backend="reference")
    loss = step(x, y)
    twin = SmallResNet().train()
    twin.load_state_dict(module.state_dict())
    ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    assert abs(loss - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    torch_buffers = dict(twin.named_buffers())
    for key in buffers:
        name = model.onnx_names[key]
        if name in torch_buffers:
            assert_close(step.state_dict()[key], torch_buffers[name], what=key)


def test_state_dict_save_and_load_round_trip(exported, tmp_path, rng):
    _, proto = exported["resnet_style"]
    model = cf.onnx.load(proto)
    net = cf.compile(model, model.input_shape, backend="reference")
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = net(x)
    cf.save(net, tmp_path / "w.npz")
    fresh = cf.onnx.load(proto)
    for p in fresh.parameters():
        p[...] = 0
    other = cf.compile(fresh, fresh.input_shape, backend="reference")
    other.load_state_dict(cf.load(tmp_path / "w.npz"))
    np.testing.assert_array_equal(other(x), want)


def test_compiled_for_a_fixed_batch(exported, rng):
    """A model imported with a free batch compiles for a fixed one too (reshapes get it)."""
    module, proto = exported["resnet_style"]
    model = cf.onnx.load(proto)
    net = cf.compile(model, (5, 3, 16, 16), backend="reference")
    x = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        assert_close(net(x), module.eval()(torch.from_numpy(x)), what="batch 5")


def test_eager_call_runs_the_graph(exported, rng):
    module, proto = exported["lenet5"]
    model = cf.onnx.load(proto)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x))
    assert_close(model(x), want, what="eager")


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 20])
def test_opsets(opset, rng):
    module = SmallResNet()
    proto = torch_onnx(module, (3, 16, 16), opset=opset)
    model = cf.onnx.load(proto)
    net = cf.compile(model, model.input_shape, backend="reference")
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        assert_close(net(x), module.eval()(torch.from_numpy(x)), what=f"opset {opset}")


def test_fixed_batch_file_runs_any_batch(rng):
    """A file fixed to batch 1 whose Reshape writes the 1 (the Caffe2 zoo) runs any batch."""
    module = lenet()
    proto = torch_onnx(module, (1, 28, 28), dynamic=False)
    model = cf.onnx.load(proto)
    assert model.input_shape == (None, 1, 28, 28)
    net = cf.compile(model, model.input_shape, backend="reference")
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        assert_close(net(x), module.eval()(torch.from_numpy(x)), what="batch 3")
    fixed = cf.onnx.load(proto, input_shape=(2, 1, 28, 28))
    assert fixed.input_shape == (2, 1, 28, 28)


def _graph_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_state_dict_keys_from_awkward_names(rng):
    names = ["gpu_0/conv1_w_0", "x", "onnx::Conv_5", "forward", "a..b.", "step"]
    w = rng.standard_normal((2, 1, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, n) for n in names]
    nodes, prev = [], "data"
    for i, n in enumerate(names):
        nodes.append(helper.make_node("Conv", [prev, n], [f"y{i}"], name=f"conv{i}"))
        prev = f"y{i}"
        if i < len(names) - 1:
            nodes.append(helper.make_node("Conv", [prev, f"{n}_back"], [f"z{i}"]))
            inits.append(numpy_helper.from_array(np.ones((1, 2, 1, 1), np.float32), f"{n}_back"))
            prev = f"z{i}"
    proto = _graph_model(
        nodes,
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 2, 4, 4])],
        inits,
    )
    model = cf.onnx.load(proto)
    keys = list(model.state_dict())
    assert "gpu_0_conv1_w_0" in keys and "onnx_x" in keys and "onnx__Conv_5" in keys
    assert "onnx_forward" in keys and "a.b" in keys and "onnx_step" in keys
    assert model.onnx_names["gpu_0_conv1_w_0"] == "gpu_0/conv1_w_0"
    assert callable(model.forward)
    assert state_key("conv1.weight") == "conv1.weight"
    net = cf.compile(model, model.input_shape, backend="reference")
    assert net(np.ones((1, 1, 4, 4), np.float32)).shape == (1, 2, 4, 4)
