"""Bad input: every file, op, attribute, dtype or shape convforge cannot run is a
ConvforgeError that names the ONNX node or input, raised before anything runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import light_path

import convforge as cf
from convforge.errors import ConvforgeError, DTypeError, ShapeError
from convforge.onnx.reader import OnnxError, UnsupportedError

F32 = TensorProto.FLOAT


def model_of(nodes, inputs, outputs, initializers=(), opset=17, ir_version=None):
    graph = helper.make_graph(nodes, "bad", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def value(name, shape, elem=F32):
    return helper.make_tensor_value_info(name, elem, shape)


def conv_model(**conv_attrs):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **conv_attrs)
    return model_of([node], [value("x", ["N", 1, 8, 8])], [value("y", ["N", 2, 6, 6])], [w])


# -- files --------------------------------------------------------------------------------
def test_truncated_file(tmp_path):
    data = open(light_path("squeezenet"), "rb").read()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(OnnxError, match="truncated or corrupt|not a valid ONNX model"):
        cf.onnx.load(path)


@pytest.mark.parametrize("data", [b"", b"\x00\x01\x02 not protobuf \xff" * 20, b"\x0a\xff\xff\xff\xff"])
def test_corrupt_bytes(tmp_path, data):
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    with pytest.raises(ConvforgeError):
        cf.onnx.load(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(OnnxError, match="does not exist"):
        cf.onnx.load(tmp_path / "nope.onnx")


def test_not_a_model_object():
    with pytest.raises(OnnxError, match="path, bytes or an onnx.ModelProto"):
        cf.onnx.load(42)


def _external_model(tmp_path, location):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for key, val in (("location", location), ("offset", "0"), ("length", str(2 * 9 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, val
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")
    model = model_of([node], [value("x", ["N", 1, 8, 8])], [value("y", ["N", 2, 6, 6])], [w])
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(18, np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(OnnxError, match="external data location"):
        cf.onnx.load(path)


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.full(18, 0.5, np.float32).tobytes())
    model = cf.onnx.load(path)
    np.testing.assert_array_equal(model.state_dict()["w"], np.full((2, 1, 3, 3), 0.5, np.float32))


def test_external_data_needs_a_path(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    with pytest.raises(OnnxError, match="load it from its path"):
        cf.onnx.load(path.read_bytes())


# -- ops and attributes ----------------------------------------------------------------------
def test_unsupported_op_names_the_node_and_the_supported_ops():
    node = helper.make_node("Erf", ["x"], ["y"], name="my_erf")
    with pytest.raises(UnsupportedError) as info:
        cf.onnx.load(model_of([node], [value("x", ["N", 4])], [value("y", ["N", 4])]))
    msg = str(info.value)
    assert "ONNX node 'my_erf' (Erf)" in msg and "op Erf is not supported" in msg and "Conv" in msg


def test_other_domains_are_refused():
    node = helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")
    model = model_of([node], [value("x", ["N", 4])], [value("y", ["N", 4])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedError, match="'fc' .*domain 'com.microsoft'"):
        cf.onnx.load(model)


@pytest.mark.parametrize(
    "attrs, match",
    [
        (
            {"auto_pad": "SAME_SIDEWAYS"},
            "auto_pad='SAME_SIDEWAYS' is not supported; supported: NOTSET, VALID",
        ),
        (
            {"kernel_shape": [5, 5]},
            r"kernel_shape=\[5, 5\] is not supported; supported: the weight's \[3, 3\]",
        ),
        ({"strides": [0, 1]}, r"strides=\[0, 1\] is not supported; supported: 2 positive ints"),
        ({"group": 3}, "conv2d: groups=3"),
    ],
)
def test_bad_conv_attributes_name_node_attribute_and_what_is_supported(attrs, match):
    with pytest.raises(ConvforgeError, match=match) as info:
        cf.onnx.load(conv_model(**attrs))
    assert str(info.value).startswith("ONNX node 'conv1' (Conv): ")


def test_attribute_out_of_range():
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], dilations=[2, 2])
    with pytest.raises(
        UnsupportedError, match=r"'pool' \(AveragePool\): attribute dilations=\[2, 2\].*supported: 1"
    ):
        cf.onnx.load(model_of([node], [value("x", ["N", 1, 9, 9])], [value("y", ["N", 1, 5, 5])], opset=19))
    node = helper.make_node("Gelu", ["x"], ["y"], name="g", approximate="erfc")
    with pytest.raises(
        UnsupportedError, match="approximate='erfc' is not supported; supported: 'none', 'tanh'"
    ):
        cf.onnx.load(model_of([node], [value("x", ["N", 4])], [value("y", ["N", 4])], opset=20))


def test_old_and_future_opsets():
    node = helper.make_node("Relu", ["x"], ["y"])
    with pytest.raises(UnsupportedError, match="opset 5; convforge imports opsets 6 to"):
        cf.onnx.load(model_of([node], [value("x", ["N", 4])], [value("y", ["N", 4])], opset=5, ir_version=3))


# -- dtypes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "elem", [TensorProto.FLOAT16, TensorProto.INT8, TensorProto.COMPLEX64, TensorProto.BFLOAT16]
)
def test_input_dtypes_convforge_does_not_run(elem):
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    with pytest.raises(DTypeError, match="ONNX input 'x': dtype .* is not supported"):
        cf.onnx.load(model_of([node], [value("x", ["N", 4], elem)], [value("y", ["N", 4], elem)]))


def test_float16_initializer():
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float16), "w16")
    cast = helper.make_node("Cast", ["w16"], ["w"], to=F32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")
    model = model_of([cast, conv], [value("x", ["N", 1, 8, 8])], [value("y", ["N", 2, 6, 6])], [w])
    with pytest.raises(DTypeError, match="ONNX initializer 'w16': dtype FLOAT16 is not supported"):
        cf.onnx.load(model)


def test_integer_tensor_at_run_time():
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "idx")
    node = helper.make_node("Gather", ["x", "idx"], ["y"], name="pick", axis=1)
    with pytest.raises(UnsupportedError, match="'pick' \\(Gather\\): op Gather is not supported"):
        cf.onnx.load(model_of([node], [value("x", ["N", 4])], [value("y", ["N", 2])], [idx]))


# -- shapes -------------------------------------------------------------------------------
def test_unresolvable_dynamic_dims_name_the_input():
    node = helper.make_node("Relu", ["x"], ["y"])
    model = model_of([node], [value("x", ["N", 3, "H", "W"])], [value("y", ["N", 3, "H", "W"])])
    with pytest.raises(ConvforgeError, match="ONNX input 'x': dim 2 is 'H' .*pass input_shape"):
        cf.onnx.load(model)
    assert cf.onnx.load(model, input_shape=(None, 3, 8, 8)).input_shape == (None, 3, 8, 8)


def test_input_shape_that_contradicts_the_file():
    with pytest.raises(ShapeError, match="ONNX input 'x': dim 2 is 8 in the file, input_shape gives 9"):
        cf.onnx.load(conv_model(), input_shape=(None, 1, 9, 8))


def test_reshape_that_folds_the_batch_into_rows():
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "s")
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="fold")
    model = model_of([node], [value("x", ["N", 2, 4])], [value("y", [None, 4])], [shape])
    with pytest.raises(ConvforgeError, match="'fold' \\(Reshape\\).*keep the batch.*fixed batch"):
        cf.onnx.load(model)
    fixed = cf.onnx.load(model, input_shape=(3, 2, 4))  # a fixed batch resolves it
    net = cf.compile(fixed, fixed.input_shape, backend="reference")
    np.testing.assert_array_equal(net(np.arange(24, dtype=np.float32).reshape(3, 2, 4)).shape, (6, 4))


def test_wrong_shapes_at_compile_and_call_time(rng):
    model = cf.onnx.load(conv_model())
    with pytest.raises(
        ShapeError, match=r"ONNX input 'x': expected shape \[N, 1, 8, 8\], got \[N, 1, 9, 9\]"
    ):
        cf.compile(model, (None, 1, 9, 9), backend="reference")
    net = cf.compile(model, model.input_shape, backend="reference")
    with pytest.raises(ShapeError, match=r"expected input of shape \[N, 1, 8, 8\], got \[2, 1, 9, 9\]"):
        net(rng.standard_normal((2, 1, 9, 9)).astype(np.float32))
    with pytest.raises(ShapeError, match="ONNX input 'x'"):
        model(rng.standard_normal((2, 1, 9, 9)).astype(np.float32))  # eager


def test_multiple_inputs_or_outputs_are_refused_by_load_but_run_in_the_backend(rng):
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
    model = model_of([node], [value("a", [2, 3]), value("b", [2, 3])], [value("y", [2, 3])])
    with pytest.raises(UnsupportedError, match="2 input\\(s\\) \\(a, b\\)"):
        cf.onnx.load(model)
    from convforge.onnx.backend import backend_for

    a, b = rng.standard_normal((2, 2, 3)).astype(np.float32)
    (y,) = backend_for("reference").prepare(model).run([a, b])
    np.testing.assert_allclose(y, a + b)


def test_malformed_graph_is_refused_by_the_checker():
    node = helper.make_node("Relu", ["nowhere"], ["y"], name="r")
    with pytest.raises(OnnxError, match="not a valid ONNX model"):
        cf.onnx.load(model_of([node], [value("x", ["N", 4])], [value("y", ["N", 4])]))


def test_constant_output_is_refused():
    c = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32)))
    r = helper.make_node("Relu", ["x"], ["z"])
    model = model_of([c, r], [value("x", ["N", 3])], [value("y", [3])])
    with pytest.raises(UnsupportedError, match="ONNX output 'y' is a constant"):
        cf.onnx.load(model)


def test_errors_are_raised_before_anything_runs(monkeypatch):
    """A bad node late in the graph fails at load: no kernel was compiled or run."""
    from convforge.backends import reference

    calls = []
    monkeypatch.setattr(reference.BACKEND, "compile_graph", lambda *a, **k: calls.append(a))
    bad = helper.make_node("Erf", ["y"], ["z"], name="late")
    model = conv_model()
    model.graph.node.append(bad)
    model.graph.output[0].name = "z"
    with pytest.raises(UnsupportedError, match="'late'"):
        cf.onnx.load(model)
    assert calls == []


def test_onnx_error_is_a_convforge_error():
    assert issubclass(OnnxError, ConvforgeError) and issubclass(UnsupportedError, OnnxError)
    _ = onnx  # the parser used is onnx's own
