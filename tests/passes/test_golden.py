"""Golden tests of the fuse and fold-batchnorm passes: IR text in, expected IR text out.

Each ``golden/<case>.ir`` holds the pipeline, the IR before and the IR expected after it
(xDSL-style before/expected files). The test parses the before text, runs the pipeline,
and compares the printed result with the expected text exactly; both graphs then run on
the reference backend and must compute the same function. Cases whose name starts with
``no_`` are patterns the pass must leave alone (the expected text shows what stays).

``CONVFORGE_UPDATE_GOLDEN=1 python -m pytest tests/passes/test_golden.py`` rewrites the
files from the builders below; read the diff before committing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convforge.backends.reference import run_graph
from convforge.ir.graph import Graph
from convforge.ir.parser import parse
from convforge.ir.printer import print_graph
from convforge.ir.types import TensorType as T
from convforge.passes import PassManager

GOLDEN = Path(__file__).parent / "golden"
BEFORE, AFTER = "//-- before\n", "//-- after\n"


# -- builders (used only to (re)write the files) ---------------------------------------------
def _conv_input(g: Graph, c: int = 2, hw: int = 6) -> tuple:
    x = g.add_input("x", T("f64", ("N", c, hw, hw)))
    w = g.add_input("w", T("f64", (3, c, 3, 3)))
    b = g.add_input("b", T("f64", (3,)))
    return x, w, b


def _bn_params(g: Graph, c: int = 3) -> list:
    return [g.add_input(n, T("f64", (c,))) for n in ("gamma", "beta", "running_mean", "running_var")]


def conv_relu_max_pool() -> Graph:
    g = Graph("conv_relu_max_pool")
    x, w, b = _conv_input(g)
    h = g.call("relu", g.call("conv2d", x, w, b, padding=(1, 1)))
    g.set_outputs([g.call("max_pool2d", h, kernel_size=(2, 2))])
    return g


def conv_bn_relu_avg_pool() -> Graph:
    g = Graph("conv_bn_relu_avg_pool")
    x, w, b = _conv_input(g)
    h = g.call("batch_norm", g.call("conv2d", x, w, b, padding=(1, 1)), *_bn_params(g))
    g.set_outputs([g.call("avg_pool2d", g.call("relu", h), kernel_size=(2, 2))])
    return g


def linear_relu_tanh() -> Graph:
    g = Graph("linear_relu_tanh")
    x = g.add_input("x", T("f64", ("N", 5)))
    w, b = g.add_input("w", T("f64", (4, 5))), g.add_input("b", T("f64", (4,)))
    g.set_outputs([g.call("tanh", g.call("relu", g.call("linear", x, w, b)))])
    return g


def no_fuse_value_with_two_users() -> Graph:
    g = Graph("residual")
    x = g.add_input("x", T("f64", ("N", 3, 6, 6)))
    w = g.add_input("w", T("f64", (3, 3, 3, 3)))
    h = g.call("conv2d", x, w, padding=(1, 1))
    g.set_outputs([g.call("add", g.call("relu", h), h)])
    return g


def no_fuse_padded_avg_pool() -> Graph:
    g = Graph("padded_avg_pool")
    x, w, b = _conv_input(g)
    h = g.call("conv2d", x, w, b)
    g.set_outputs([g.call("avg_pool2d", h, kernel_size=(2, 2), padding=(1, 1))])
    return g


def no_fuse_dilated_max_pool() -> Graph:
    g = Graph("dilated_max_pool")
    x, w, b = _conv_input(g, hw=8)
    h = g.call("relu", g.call("conv2d", x, w, b))
    g.set_outputs([g.call("max_pool2d", h, kernel_size=(2, 2), dilation=(2, 2))])
    return g


def no_fuse_graph_output() -> Graph:
    g = Graph("conv_is_an_output")
    x, w, b = _conv_input(g)
    h = g.call("conv2d", x, w, b)
    g.set_outputs([h, g.call("relu", h)])
    return g


def fold_conv_bn_relu() -> Graph:
    g = Graph("conv_bn_relu")
    x, w, b = _conv_input(g)
    h = g.call("batch_norm", g.call("conv2d", x, w, b, padding=(1, 1)), *_bn_params(g), eps=1e-3)
    g.set_outputs([g.call("relu", h)])
    return g


def fold_conv_without_bias() -> Graph:
    g = Graph("conv_no_bias_bn")
    x = g.add_input("x", T("f64", ("N", 2, 6, 6)))
    w = g.add_input("w", T("f64", (3, 2, 3, 3)))
    g.set_outputs([g.call("batch_norm", g.call("conv2d", x, w), *_bn_params(g))])
    return g


def no_fold_bn_after_relu() -> Graph:
    g = Graph("bn_after_relu")
    x, w, b = _conv_input(g)
    h = g.call("relu", g.call("conv2d", x, w, b))
    g.set_outputs([g.call("batch_norm", h, *_bn_params(g))])
    return g


def _training_graph() -> Graph:
    """The joint forward + backward + SGD graph of a conv -> relu -> max pool -> linear net."""
    import convforge as cf
    from convforge import nn, optim

    cf.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    )
    step = cf.compile_train(
        model, (None, 1, 6, 6), optimizer=optim.SGD(lr=0.1), backend="reference", dtype="float64"
    )
    graph = step.graph
    return graph() if callable(graph) else graph


def _bn_training_graph() -> Graph:
    """The joint training graph of conv (no bias) -> BN -> ReLU -> conv -> BN -> linear."""
    import convforge as cf
    from convforge import nn, optim

    cf.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
        nn.Conv2d(2, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    )  # fmt: skip
    step = cf.compile_train(
        model, (None, 1, 4, 4), optimizer=optim.SGD(lr=0.1), backend="reference", dtype="float64"
    )
    graph = step.graph
    return graph() if callable(graph) else graph


def no_fuse_bn_training_conv_output_read_twice() -> Graph:
    """The conv output is also a graph output: the training batch norm stays apart."""
    g = Graph("bn_training_conv_output_read_twice")
    x, w, _b = _conv_input(g)
    h = g.call("conv2d", x, w, padding=(1, 1))
    y = g.call("batch_norm_train", h, *_bn_params(g))
    g.set_outputs([g.call("relu", y[0]), h])
    return g


#: case name -> (pipeline, builder)
CASES: dict[str, tuple[str, Callable[[], Graph]]] = {
    "fuse_conv_relu_max_pool": ("fuse,dce", conv_relu_max_pool),
    "fuse_conv_bn_relu_avg_pool": ("fuse,dce", conv_bn_relu_avg_pool),
    "fuse_linear_relu_tanh": ("fuse,dce", linear_relu_tanh),
    "no_fuse_value_with_two_users": ("fuse,dce", no_fuse_value_with_two_users),
    "no_fuse_padded_avg_pool": ("fuse,dce", no_fuse_padded_avg_pool),
    "no_fuse_dilated_max_pool": ("fuse,dce", no_fuse_dilated_max_pool),
    "no_fuse_graph_output": ("fuse,dce", no_fuse_graph_output),
    "no_fuse_avg_pool_in_training": ("fuse{training=true},dce", conv_bn_relu_avg_pool),
    "fold_conv_bn_relu": ("fold-batchnorm,dce", fold_conv_bn_relu),
    "fold_conv_without_bias": ("fold-batchnorm,dce", fold_conv_without_bias),
    "fold_then_fuse": ("fold-batchnorm,fuse,dce", fold_conv_bn_relu),
    "no_fold_bn_after_relu": ("fold-batchnorm,dce", no_fold_bn_after_relu),
    "fuse_training_argmax": ("fuse{training=true},dce", _training_graph),
    "fuse_training_conv_backward": ("fuse{training=true,conv_backward=true},dce", _training_graph),
    "fuse_training_batch_norm": ("fuse{training=true,conv_backward=true},dce", _bn_training_graph),
    "no_fuse_bn_training_conv_output_read_twice": (
        "fuse{training=true,conv_backward=true},dce",
        no_fuse_bn_training_conv_output_read_twice,
    ),
}


# -- the test ---------------------------------------------------------------------------
def _read(case: str) -> tuple[str, str, str]:
    text = (GOLDEN / f"{case}.ir").read_text()
    head, rest = text.split(BEFORE, 1)
    before, after = rest.split(AFTER, 1)
    pipeline = head.removeprefix("//-- pipeline: ").strip()
    return pipeline, before, after


def _write(case: str) -> None:
    pipeline, build = CASES[case]
    before = print_graph(build())
    graph = parse(before)
    PassManager.from_string(pipeline).run(graph)
    text = f"//-- pipeline: {pipeline}\n{BEFORE}{before}{AFTER}{print_graph(graph)}"
    (GOLDEN / f"{case}.ir").write_text(text)


def _inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        shape = v.type.concrete(2)
        if v.type.dtype == "i64":
            out[v.name] = np.asarray(1) if not shape else rng.integers(0, 3, shape).astype(np.int64)
        else:
            out[v.name] = rng.standard_normal(shape).astype(v.type.np_dtype)
    if "running_var" in out:
        out["running_var"] = np.abs(out["running_var"]) + 0.5
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_pass_output_matches_golden(case: str):
    if os.environ.get("CONVFORGE_UPDATE_GOLDEN") == "1":
        _write(case)
    pipeline, before, after = _read(case)
    assert pipeline == CASES[case][0], f"{case}.ir was written for another pipeline"
    graph = parse(before)
    PassManager.from_string(pipeline).run(graph)
    assert print_graph(graph) == after, f"{case}: the pass output differs from golden/{case}.ir"
    assert print_graph(parse(after)) == after, f"{case}: the expected text does not round-trip"
    original = parse(before)
    inputs = _inputs(original)
    for got, want in zip(run_graph(graph, inputs), run_graph(original, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_no_cases_fuse_nothing():
    """A ``no_fuse_`` case keeps its pool or its shared value out of any region."""
    for case in (c for c in CASES if c.startswith("no_fuse")):
        _, before, after = _read(case)
        kept = {
            "no_fuse_value_with_two_users": "add(",
            "no_fuse_graph_output": "= conv2d(",
            "no_fuse_bn_training_conv_output_read_twice": "= batch_norm_train(",
        }
        marker = kept.get(case, "_pool2d(")
        assert marker in after, f"{case}: expected {marker!r} outside any fusion region"


def test_pass_tests_import_no_numba_backend():
    import subprocess
    import sys

    code = (
        "import sys; import tests.passes.test_golden as t;"
        "[t.test_pass_output_matches_golden(c) for c in sorted(t.CASES)];"
        "bad = [m for m in sys.modules if m.startswith(('convforge.backends.numba', 'numba'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
