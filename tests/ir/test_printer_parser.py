"""The IR text form: golden prints, print -> parse -> print identity, errors, fusion regions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convforge.errors import IRParseError
from convforge.ir.graph import Graph, Value
from convforge.ir.parser import parse
from convforge.ir.printer import format_attr_value, print_graph
from convforge.ir.types import TensorType


def t(dtype: str, *shape) -> TensorType:
    return TensorType(dtype, shape)


def roundtrip(g: Graph) -> Graph:
    text = print_graph(g)
    g2 = parse(text)
    assert print_graph(g2) == text
    g2.verify()
    return g2


# -- golden prints -----------------------------------------------------------------------------
def test_golden_activations():
    g = Graph("tiny")
    x = g.add_input("x", t("f32", "N", 4))
    y = g.call("relu", x, meta={"layer": "0 (ReLU)", "loc": "model.py:7"})
    z = g.call("leaky_relu", y, negative_slope=0.2, meta={"layer": "1 (LeakyReLU)"})
    s = g.call("softmax", z, dim=-1, meta={"loc": "model.py:9"})
    g.set_outputs([s, y])
    assert str(g) == (
        "graph @tiny(%x: f32[N,4]) -> (f32[N,4], f32[N,4]) {\n"
        "  %1: f32[N,4] = relu(%x)  # 0 (ReLU) at model.py:7\n"
        "  %2: f32[N,4] = leaky_relu(%1) {negative_slope=0.2}  # 1 (LeakyReLU)\n"
        "  %3: f32[N,4] = softmax(%2) {dim=-1}  # at model.py:9\n"
        "  return %3, %1\n"
        "}\n"
    )
    roundtrip(g)


def test_golden_conv_and_dotted_names():
    g = Graph("lenet")
    x = g.add_input("x", t("f32", "N", 1, 28, 28))
    w = g.add_input("0.weight", t("f32", 6, 1, 5, 5))
    b = g.add_input("0.bias", t("f32", 6))
    y = g.call("conv2d", x, w, b, padding=2, meta={"layer": "0 (Conv2d)", "loc": "lenet.py:4"})
    r = g.call("reshape", g.call("relu", y), shape=("N", 6 * 28 * 28))
    g.set_outputs([r])
    assert print_graph(g) == (
        "graph @lenet(%x: f32[N,1,28,28], %0.weight: f32[6,1,5,5], %0.bias: f32[6]) -> (f32[N,4704]) {\n"
        "  %1: f32[N,6,28,28] = conv2d(%x, %0.weight, %0.bias) "
        "{stride=[1,1], padding=[2,2], dilation=[1,1], groups=1}  # 0 (Conv2d) at lenet.py:4\n"
        "  %2: f32[N,6,28,28] = relu(%1)\n"
        "  %3: f32[N,4704] = reshape(%2) {shape=[N,4704]}\n"
        "  return %3\n"
        "}\n"
    )
    g2 = roundtrip(g)
    assert g2.nodes[2].attrs["shape"] == ("N", 4704)
    assert g2.nodes[0].meta == {"layer": "0 (Conv2d)", "loc": "lenet.py:4"}


def test_no_outputs_and_scalars():
    g = Graph("empty")
    g.add_input("s", t("i64"))
    g.set_outputs([])
    assert print_graph(g) == "graph @empty(%s: i64[]) -> () {\n  return\n}\n"
    roundtrip(g)


def test_float_attrs_stay_floats():
    g = Graph("f")
    x = g.add_input("x", t("f64", 3))
    g.set_outputs([g.call("scale", x, factor=1.0), g.call("leaky_relu", x, negative_slope=1e-05)])
    text = print_graph(g)
    assert "{factor=1.0}" in text and "{negative_slope=1e-05}" in text
    g2 = roundtrip(g)
    assert type(g2.nodes[0].attrs["factor"]) is float


@pytest.mark.parametrize(
    "value, text",
    [
        (1, "1"),
        (-3, "-3"),
        (1.0, "1.0"),
        (0.01, "0.01"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (-math.inf, "-inf"),
        (True, "true"),
        (None, "none"),
        ("mean", '"mean"'),
        ('a "b"\n\\', '"a \\"b\\"\\n\\\\"'),
        ((1, 1), "[1,1]"),
        (((1, 2), (), "N"), "[[1,2],[],N]"),
    ],
)
def test_attr_values_print_and_parse(value, text):
    assert format_attr_value(value) == text
    g = Graph("attrs")
    x = g.add_input("x", t("f32", 2))
    region = Graph("region")
    rx = region.add_input("x", x.type)
    region.set_outputs([region.call("relu", rx)])
    node = g.create_node("fusion", [x], {"v": value}, output_types=[x.type], region=region)
    g.set_outputs(node.outputs)
    g2 = roundtrip(g)
    got = g2.nodes[0].attrs["v"]
    assert got == value and type(got) is type(value)


def test_nan_attr_round_trips():
    g = Graph("nan")
    x = g.add_input("x", t("f32", 2))
    g.set_outputs([g.call("scale", x, factor=math.nan)])
    assert "{factor=nan}" in print_graph(g)
    assert math.isnan(roundtrip(g).nodes[0].attrs["factor"])


def test_quoted_names_and_meta():
    g = Graph("my model")
    x = g.add_input("input image", t("f32", "N", 3))
    y = g.call("relu", x, meta={"layer": 'a at b "c"', "loc": "at\nhere"})
    g.set_outputs([y])
    text = print_graph(g)
    assert text.startswith('graph @"my model"(%"input image": f32[N,3])')
    g2 = roundtrip(g)
    assert g2.name == "my model"
    assert g2.inputs[0].name == "input image"
    assert g2.nodes[0].meta == {"layer": 'a at b "c"', "loc": "at\nhere"}


def test_multi_output_names_follow_the_text():
    g = Graph("sgd")
    p = g.add_input("w", t("f32", 4))
    grad = g.add_input("w.grad", t("f32", 4))
    buf = g.add_input("w.buf", t("f32", 4))
    step = g.add_input("step", t("i64"))
    node = g.create_node("sgd_update", [p, grad, buf, step], {"lr": 0.1, "momentum": 0.9}, name="w.new")
    g.set_outputs(node.outputs)
    text = print_graph(g)
    assert "%w.new: f32[4], %w.new.momentum_buffer: f32[4] = sgd_update(%w, %w.grad, %w.buf, %step)" in text
    roundtrip(g)
    renamed = text.replace("%w.new.momentum_buffer", "%buf2")
    g2 = parse(renamed)
    assert [v.name for v in g2.nodes[0].outputs] == ["w.new", "buf2"]
    assert g2.outputs[1].name == "buf2"
    assert print_graph(g2) == renamed
    g2.verify()


def test_comments_and_blank_lines_are_skipped():
    text = "\n# a graph\ngraph @g(%x: f32[2]) -> (f32[2]) {\n\n  %y: f32[2] = relu(%x)\n\n  return %y\n}\n\n"
    g = parse(text)
    assert print_graph(g) == "graph @g(%x: f32[2]) -> (f32[2]) {\n  %y: f32[2] = relu(%x)\n  return %y\n}\n"


def test_copy_is_deep_and_keeps_meta():
    g = Graph("c")
    x = g.add_input("x", t("f32", 2))
    y = g.call("tanh", x, meta={"layer": "t", "phase": "forward"})
    g.set_outputs([y])
    c = g.copy()
    assert print_graph(c) == print_graph(g)
    assert c.nodes[0] is not g.nodes[0]
    assert c.nodes[0].meta == {"layer": "t", "phase": "forward"}


# -- fusion ------------------------------------------------------------------------------------
def _fused_graph(extra_output: bool = False, attrs: dict | None = None) -> Graph:
    g = Graph("fused")
    x = g.add_input("x", t("f32", "N", 3))
    other = g.add_input("0.other", t("f32", "N", 3))
    region = Graph("region")
    rx = region.add_input("x", x.type)
    ro = region.add_input("0.other", other.type)
    a = region.call("relu", rx)
    b = region.call("leaky_relu", a, negative_slope=0.5)
    c = region.call("relu_backward", b, ro)
    outs = [c]
    if extra_output:
        grad = region.add_input("g", x.type)
        buf = region.add_input("buf", x.type)
        step = region.add_input("step", t("i64"))
        outs = list(region.call("sgd_update", c, grad, buf, step, lr=0.5))
        extra = [g.add_input("g", x.type), g.add_input("buf", x.type), g.add_input("step", t("i64"))]
    else:
        extra = []
    region.set_outputs(outs)
    node = g.create_node(
        "fusion",
        [x, other, *extra],
        attrs or {},
        {"layer": "block", "loc": "m.py:3", "fused_from": ["relu", "leaky_relu"]},
        output_types=[v.type for v in outs],
        region=region,
    )
    if extra_output:
        g._names.discard(node.outputs[1].name)
        node.outputs[1].name = "1.buffer"
        g._names.add("1.buffer")
    g.set_outputs(node.outputs)
    return g


def test_fusion_golden_and_round_trip():
    g = _fused_graph()
    text = print_graph(g)
    assert text == (
        "graph @fused(%x: f32[N,3], %0.other: f32[N,3]) -> (f32[N,3]) {\n"
        "  %1: f32[N,3] = fusion(%x, %0.other) {  # block at m.py:3\n"
        "      relu(%x) -> leaky_relu {negative_slope=0.5} -> relu_backward(%0.other)\n"
        "  }\n"
        "  return %1\n"
        "}\n"
    )
    g2 = roundtrip(g)
    node = g2.nodes[0]
    assert [n.op for n in node.region.nodes] == ["relu", "leaky_relu", "relu_backward"]
    assert node.region.inputs[1] is node.region.nodes[2].inputs[1]
    assert node.meta == {"layer": "block", "loc": "m.py:3"}


def test_fusion_with_attrs_and_extra_outputs():
    g = _fused_graph(extra_output=True, attrs={"epilogue": "relu", "tile": (8, 8)})
    text = print_graph(g)
    assert (
        "  %1: f32[N,3], %1.buffer: f32[N,3] = fusion(%x, %0.other, %g, %buf, %step) "
        '{epilogue="relu", tile=[8,8]} {  # block at m.py:3\n'
    ) in text
    assert "-> sgd_update(%g, %buf, %step) {lr=0.5, " in text
    g2 = roundtrip(g)
    assert [v.name for v in g2.nodes[0].outputs] == ["1", "1.buffer"]


def test_fusion_with_a_repeated_operand():
    g = Graph("rep")
    x = g.add_input("x", t("f32", 2))
    region = Graph("region")
    r0, r1 = region.add_input("a", x.type), region.add_input("b", x.type)
    region.set_outputs([region.call("add", region.call("relu", r0), r1)])
    node = g.create_node("fusion", [x, x], output_types=[x.type], region=region)
    g.set_outputs(node.outputs)
    assert "relu(%x) -> add(%x)" in print_graph(g)
    roundtrip(g)


def _dag_region_graph() -> Graph:
    """A region that is not a chain: ``relu(x)`` read by two steps, two outputs."""
    g = Graph("dag")
    x = g.add_input("x", t("f32", 2))
    region = Graph("region")
    rx = region.add_input("x", x.type)
    a = region.call("relu", rx)
    region.set_outputs([region.call("add", a, rx), region.call("tanh", a)])
    node = g.create_node("fusion", [x], output_types=[x.type, x.type], region=region)
    g.set_outputs(node.outputs)
    return g


def test_a_region_that_is_not_a_chain_prints_as_a_block():
    text = print_graph(_dag_region_graph())
    assert text == (
        "graph @dag(%x: f32[2]) -> (f32[2], f32[2]) {\n"
        "  %1: f32[2], %1.out1: f32[2] = fusion(%x) {\n"
        "      %r0: f32[2] = relu(%x)\n"
        "      %r1: f32[2] = add(%r0, %x)\n"
        "      %r2: f32[2] = tanh(%r0)\n"
        "      yield %r1, %r2\n"
        "  }\n"
        "  return %1, %1.out1\n"
        "}\n"
    )
    g2 = roundtrip(_dag_region_graph())
    region = g2.nodes[0].region
    assert [n.op for n in region.nodes] == ["relu", "add", "tanh"]
    assert region.nodes[1].inputs[0] is region.nodes[0].outputs[0] is region.nodes[2].inputs[0]


def test_block_names_avoid_the_operands():
    g = Graph("dag")
    x = g.add_input("r0", t("f32", 2))
    region = Graph("region")
    rx = region.add_input("x", x.type)
    a = region.call("relu", rx)
    region.set_outputs([region.call("add", a, rx), a])
    node = g.create_node("fusion", [x], output_types=[x.type, x.type], region=region)
    g.set_outputs(node.outputs)
    assert "%r_0: f32[2] = relu(%r0)" in print_graph(g)
    roundtrip(g)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("      yield %r1, %r2\n", "", "expected 'yield' ending the fusion region"),
        ("yield %r1, %r2", "yield %r1, %r9", "undefined value %r9"),
        ("yield", "return", "expected 'yield' ending the fusion region, got 'return'"),
    ],
)
def test_block_parse_errors(old, new, message):
    text = print_graph(_dag_region_graph())
    with pytest.raises(IRParseError, match=message):
        parse(text.replace(old, new))


# -- errors ------------------------------------------------------------------------------------
GOOD = "graph @g(%x: f32[N,2]) -> (f32[N,2]) {\n  %1: f32[N,2] = relu(%x)\n  return %1\n}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("graf @g() -> () {\n  return\n}\n", "line 1, column 1: expected 'graph', got 'graf'"),
        ("graph g() -> () {\n  return\n}\n", "line 1, column 7: expected a graph name like @main, got 'g'"),
        (GOOD.replace("f32[N,2])", "f32[N,2]"), "line 1, column 23: expected ',' or ')', got '->'"),
        (GOOD.replace("%x: f32", "%x f32"), "line 1, column 13: expected ':', got 'f32'"),
        (GOOD.replace("%x: f32", "%x: f33"), "line 1, column 14: expected a dtype"),
        (GOOD.replace("relu(%x)", "relu(%x"), "line 2, column 25: expected ',' or ')', got end of line"),
        (GOOD.replace("relu(%x)", "relu(%x) {a=}"), "line 2, column 30: expected an attribute value"),
        (
            GOOD.replace("relu(%x)", "relu(%x) {a=1,}"),
            "line 2, column 32: expected an attribute name, got '}'",
        ),
        (GOOD.replace("= relu", "relu"), "line 2, column 16: expected ',' or '=', got 'relu'"),
        (
            GOOD.replace("%1: f32[N,2] = relu", "%1: f32[N,2] = $relu"),
            "line 2, column 18: expected a token, got '$'",
        ),
        (GOOD.replace("%1: f32[N,2]", '%"1: f32[N,2]'), "line 2, column 4: expected a closing"),
        (
            GOOD.replace("f32[N,2]) {", "f32[N,2.5]) {"),
            "line 1, column 34: expected a dimension (an int or N), got '2.5'",
        ),
        (GOOD.replace("return %1\n}\n", "return %1\n"), "line 4, column 1: expected '}', got end of input"),
        (GOOD + "junk", "line 5, column 1: expected end of input, got 'junk'"),
        (GOOD.replace("  %1: f32[N,2] = relu(%x)\n", ""), "line 2, column 10: undefined value %1"),
        (GOOD.replace("relu(%x)", "relu(%y)"), "line 2, column 23: undefined value %y"),
        (GOOD.replace("relu(%x)", "frobnicate(%x)"), "line 2, column 18: unknown op 'frobnicate'"),
        (
            GOOD.replace("%1: f32[N,2] =", "%1: f32[N,3] ="),
            "line 2, column 3: expected relu to produce (f32[N,2])",
        ),
        (GOOD.replace("%1: f32[N,2] =", "%1: f32[N,2], %1.b: f32[2] ="), "line 2, column 3: expected relu"),
        (GOOD.replace("%1: f32[N,2] =", "%x: f32[N,2] ="), "line 2, column 3: value %x is defined twice"),
        (
            GOOD.replace("relu(%x)", "relu(%x) {alpha=1}"),
            "line 2, column 18: relu: unknown attribute(s) alpha",
        ),
        (
            GOOD.replace("relu(%x)", "softmax(%x) {dim=5}"),
            "line 2, column 18: softmax: dim 5 is out of range",
        ),
        (
            GOOD.replace("-> (f32[N,2])", "-> (f32[2])"),
            "line 3, column 3: expected return values of the header's",
        ),
        (GOOD.replace("relu(%x)", "relu(%x) {a=1e}"), "line 2, column 32: expected a digit, got '}'"),
        (
            GOOD.replace("relu(%x)", "relu(%x) {a=12ab}"),
            "line 2, column 32: expected the end of the number, got 'a'",
        ),
        (GOOD.replace("relu(%x)", "relu(%x) {a=[1,2}"), "line 2, column 34: expected ',' or ']', got '}'"),
    ],
)
def test_parse_errors_name_line_and_column(text, message):
    with pytest.raises(IRParseError) as info:
        parse(text)
    assert message in str(info.value)


FUSED = (
    "graph @f(%x: f32[2], %y: f32[2]) -> (f32[2]) {\n"
    "  %1: f32[2] = fusion(%x, %y) {\n"
    "      relu(%x) -> add(%y)\n"
    "  }\n"
    "  return %1\n"
    "}\n"
)


def test_fusion_text_parses():
    g = parse(FUSED)
    assert print_graph(g) == FUSED
    g.verify()


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("relu(%x) -> add(%y)", "relu(%x) -> add(%z)", "line 3, column 23: undefined value %z"),
        (
            "relu(%x) -> add(%y)",
            "relu(%x) add(%y)",
            "line 3, column 16: expected '->' or '}' closing the fusion",
        ),
        ("relu(%x) -> add(%y)", "relu(%x) -> fusion(%y)", "line 3, column 19: a fusion region cannot hold"),
        ("relu(%x) -> add(%y)", "relu -> add(%y)", "line 3, column 12: expected '(', got '->'"),
        (
            "relu(%x) -> add(%y)",
            "relu(%x) -> softmax {dim=3}",
            "line 3, column 19: softmax: dim 3 is out of range",
        ),
        (
            "%1: f32[2] = fusion",
            "%1: f32[3] = fusion",
            "line 2, column 3: expected the fusion's result types",
        ),
        (
            "fusion(%x, %y) {\n",
            "fusion(%x, %y)\n",
            "line 2, column 30: expected '{' opening the fusion region",
        ),
    ],
)
def test_fusion_parse_errors(old, new, message):
    with pytest.raises(IRParseError) as info:
        parse(FUSED.replace(old, new))
    assert message in str(info.value)


# -- property: print -> parse -> print is the identity ------------------------------------------
UNARY = ["relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax", "scale"]
BINARY = [
    "relu_backward",
    "sigmoid_backward",
    "tanh_backward",
    "leaky_relu_backward",
    "softmax_backward",
    "log_softmax_backward",
    "add",
    "mul",
]

names = st.one_of(
    st.from_regex(r"[a-z0-9_]{1,3}(\.[a-z0-9_]{1,3}){0,2}", fullmatch=True),
    st.text(min_size=1, max_size=6),
)
meta_text = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["features.3 (Conv2d)", "lenet.py:4", "at", "at x", "a at b", " x ", '"', "#"]),
)
shapes = st.tuples(st.sampled_from(["N", 1, 2, 3]), st.lists(st.integers(1, 3), max_size=2).map(tuple)).map(
    lambda p: (p[0], *p[1])
)
floats = st.one_of(st.floats(-10, 10), st.sampled_from([1.0, 0.0, -0.0, 1e-05, 0.1, 1e300]))


@st.composite
def graphs(draw) -> Graph:
    g = Graph(draw(names))
    values: list[Value] = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(names.filter(lambda n: n not in g._names))
        values.append(g.add_input(name, TensorType(draw(st.sampled_from(["f32", "f64"])), draw(shapes))))
    for _ in range(draw(st.integers(0, 8))):
        x = draw(st.sampled_from(values))
        meta = {}
        if draw(st.booleans()):
            meta["layer"] = draw(meta_text)
        if draw(st.booleans()):
            meta["loc"] = draw(meta_text)
        name = draw(st.one_of(st.none(), names))
        partners = [v for v in values if v.type == x.type]
        if draw(st.booleans()):
            op = draw(st.sampled_from(UNARY))
            inputs = [x]
        else:
            op = draw(st.sampled_from(BINARY))
            inputs = [x, draw(st.sampled_from(partners))]
        attrs: dict = {}
        if op.startswith("leaky_relu"):
            attrs["negative_slope"] = draw(floats)
        elif op == "scale":
            attrs["factor"] = draw(floats)
        elif "softmax" in op:
            rank = x.type.rank
            attrs["dim"] = draw(st.integers(-rank, rank - 1))
        node = g.create_node(op, inputs, attrs, meta, name=name)
        values.extend(node.outputs)
    g.set_outputs(draw(st.lists(st.sampled_from(values), max_size=3)))
    return g


@settings(max_examples=50, deadline=None)
@given(graphs())
def test_print_parse_print_is_identity(g):
    text = print_graph(g)
    g2 = parse(text)
    assert print_graph(g2) == text
    g2.verify()
    assert g2.name == g.name
    assert [v.name for v in g2.values()] == [v.name for v in g.values()]
    for a, b in zip(g.nodes, g2.nodes):
        assert (a.op, a.attrs) == (b.op, b.attrs)
        assert b.meta == {k: a.meta[k] for k in ("layer", "loc") if k in a.meta}
