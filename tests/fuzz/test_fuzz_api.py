"""Fuzz the API a user calls: layer constructors, functional calls and optimizer settings
with hostile arguments (huge, negative, bool, float, None, str, dict and NaN/inf values).

Oracle (``cases.py``): a result that every backend computes alike, or a ``ConvforgeError``
naming the layer (``Conv2d``), the call (``F.max_pool2d``) or the optimizer
(``optim.Adam``); the worker process running it never dies by a signal.
"""

from __future__ import annotations

import harness
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import array, hostile_float, hostile_int, labels, maybe

# kind -> (positional args, keyword args, input shape); every value may be replaced
INT_LAYERS = {
    "Conv2d": ((2, 3, 3), {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}, (None, 2, 7, 7)),
    "Conv1d": ((2, 4, 3), {"stride": 1, "padding": 1, "dilation": 1, "groups": 2}, (None, 2, 9)),
    "ConvTranspose2d": (
        (2, 2, 3),
        {"stride": 2, "padding": 1, "output_padding": 1, "dilation": 1},
        (None, 2, 4, 4),
    ),
    "MaxPool2d": ((2,), {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}, (None, 2, 7, 7)),
    "AvgPool2d": (
        (3,),
        {"stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": None},
        (None, 2, 7, 7),
    ),
    "AdaptiveAvgPool2d": ((2,), {}, (None, 2, 6, 6)),
    "Linear": ((8, 3), {}, (None, 8)),
    "Flatten": ((), {"start_dim": 1, "end_dim": -1}, (None, 2, 3, 3)),
    "Softmax": ((), {"dim": 1}, (None, 2, 3)),
    "BatchNorm2d": ((2,), {"eps": 1e-5, "momentum": 0.1}, (None, 2, 3, 3)),
}
# activations bake their attributes into generated kernels: a few values, each compiled once
FLOAT_LAYERS = {
    "LeakyReLU": {"negative_slope": 0.01},
    "ELU": {"alpha": 1.0},
    "Hardtanh": {"min_val": -1.0, "max_val": 1.0},
    "Softplus": {"beta": 1.0, "threshold": 20.0},
    "Dropout": {"p": 0.5},
}
BAKED = st.sampled_from([0.5, -2.0, float("inf"), float("-inf"), float("nan"), 0.0, 1e30])


@st.composite
def int_layer(draw):
    kind = draw(st.sampled_from(sorted(INT_LAYERS)))
    args, kwargs, shape = INT_LAYERS[kind]
    args = tuple(draw(maybe(a, hostile_int)) for a in args)
    kwargs = {
        k: draw(maybe(v, hostile_int if not isinstance(v, float) else hostile_float))
        for k, v in kwargs.items()
    }
    return kind, args, kwargs, shape


@settings(max_examples=harness.examples(30))
@given(int_layer())
def test_layer_arguments(worker, case):
    kind, args, kwargs, shape = case
    harness.check(
        "layer arguments", worker.run("layer", kind=kind, args=args, kwargs=kwargs, input_shape=shape), case
    )


@st.composite
def float_layer(draw):
    kind = draw(st.sampled_from(sorted(FLOAT_LAYERS)))
    kwargs = {k: draw(st.one_of(st.just(v), BAKED, hostile_float)) for k, v in FLOAT_LAYERS[kind].items()}
    return kind, kwargs


@settings(max_examples=harness.examples(10))
@given(float_layer())
def test_activation_attributes(worker, case):
    kind, kwargs = case
    result = worker.run("layer", kind=kind, args=(), kwargs=kwargs, input_shape=(None, 2, 3, 3))
    harness.check("layer arguments", result, case)


X4 = (2, 2, 6, 6)


@st.composite
def functional_call(draw):
    """One ``F.*`` call: its tensors (mostly well formed) and hostile attributes."""
    name = draw(
        st.sampled_from(
            ["conv2d", "conv1d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
             "dropout", "linear", "softmax", "log_softmax", "reshape", "flatten", "cross_entropy", "mse_loss"]
        )
    )  # fmt: skip
    i = lambda v: draw(maybe(v, hostile_int))  # noqa: E731
    if name in ("conv2d", "conv1d"):
        nd = 2 if name == "conv2d" else 1
        x = draw(array(X4[: 2 + nd]))
        w = draw(array((4, 1, *(3,) * nd)))
        b = draw(st.one_of(st.none(), array((4,))))
        return name, (x, w, b), {"stride": i(1), "padding": i(1), "dilation": i(1), "groups": i(2)}
    x = draw(array(X4))
    if name == "max_pool2d":
        return name, (x, i(2)), {"stride": i(None), "padding": i(0), "dilation": i(1), "ceil_mode": i(False)}
    if name == "avg_pool2d":
        kw = {"stride": i(1), "padding": i(1), "ceil_mode": i(False), "count_include_pad": i(True)}
        return name, (x, i(3)), {**kw, "divisor_override": i(None)}
    if name.startswith("adaptive"):
        return name, (x, i(3)), {}
    if name == "dropout":
        seed = draw(st.one_of(st.just(3), st.sampled_from([0, 2**40, 2**63, -1, 2**64])))
        return name, (x,), {"p": draw(maybe(0.5, hostile_float)), "training": True, "seed": seed}
    if name == "linear":
        return name, (draw(array((3, 5))), draw(array((4, 5)))), {}
    if name in ("softmax", "log_softmax"):
        return name, (x,), {"dim": i(1)}
    if name == "reshape":
        return name, (x,), {"shape": draw(maybe((2, -1), hostile_int))}
    if name == "flatten":
        return name, (x,), {"start_dim": i(1), "end_dim": i(-1)}
    logits = draw(array((3, 4)))
    if name == "cross_entropy":
        return name, (logits, draw(labels(3, 4))), {"reduction": draw(maybe("mean", hostile_int))}
    return name, (logits, draw(array((3, 4)))), {"reduction": draw(maybe("sum", hostile_int))}


@settings(max_examples=harness.examples(40))
@given(functional_call())
def test_functional_arguments(worker, case):
    name, args, kwargs = case
    harness.check("functional arguments", worker.run("functional", name=name, args=args, kwargs=kwargs), case)


@st.composite
def optimizer_settings(draw):
    kind = draw(st.sampled_from(["SGD", "Adam"]))
    f = lambda v: draw(st.one_of(st.just(v), hostile_float))  # noqa: E731
    if kind == "SGD":
        kwargs = {"lr": f(0.1), "momentum": f(0.9), "dampening": f(0.0), "weight_decay": f(0.0)}
        kwargs["nesterov"] = draw(st.one_of(st.booleans(), st.just("yes"), st.none()))
    else:
        betas = draw(
            st.one_of(st.just((0.9, 0.999)), st.tuples(hostile_float, st.just(0.999)), hostile_float)
        )
        kwargs = {"lr": f(1e-3), "betas": betas, "eps": f(1e-8), "weight_decay": f(0.0)}
    drop = draw(st.sets(st.sampled_from(sorted(kwargs))))
    return kind, {k: v for k, v in kwargs.items() if k not in drop}


@st.composite
def geometry_call(draw):
    """A well-formed windowed call (conv or pool) with random small geometry: every backend
    must compute it alike (shapes, strides, padding and dilation are kernel run-time
    arguments, so this compiles each kernel once)."""
    name = draw(st.sampled_from(["conv2d", "conv1d", "max_pool2d", "avg_pool2d"]))
    nd = 1 if name == "conv1d" else 2
    k = draw(st.integers(1, 4))
    size = draw(st.integers(k, 9))
    batch, groups = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2]))
    x = draw(array((batch, 2 * groups, *(size,) * nd), hostile=False))
    stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    if name.startswith("conv"):
        w = draw(array((2 * groups, 2, *(k,) * nd), hostile=False))
        b = draw(st.one_of(st.none(), array((2 * groups,), hostile=False)))
        pad = draw(st.integers(0, 3))
        kwargs = {"stride": stride, "padding": pad, "dilation": dilation, "groups": groups}
        return name, (x, w, b), kwargs
    pad = draw(st.integers(0, k // 2))
    kwargs = {"stride": stride, "padding": pad, "ceil_mode": draw(st.booleans())}
    if name == "max_pool2d":
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
    return name, (x, k), kwargs


@settings(max_examples=harness.examples(25))
@given(geometry_call())
def test_windowed_geometry(worker, case):
    name, args, kwargs = case
    harness.check("functional arguments", worker.run("functional", name=name, args=args, kwargs=kwargs), case)


@settings(max_examples=harness.examples(20))
@given(optimizer_settings())
def test_optimizer_settings(worker, case):
    kind, kwargs = case
    harness.check("optimizer settings", worker.run("optimizer", kind=kind, kwargs=kwargs), case)


def test_the_worker_reports_a_crash_as_a_signal():
    """The harness itself: a case that kills its process is the ``signal`` outcome, and the
    next case runs in a fresh worker."""
    import os
    import signal

    worker = harness.Worker()
    try:
        relu = {"name": "relu", "args": (np.zeros(2, np.float32),), "kwargs": {}}
        assert worker.run("functional", **relu)["outcome"] == "ok"
        os.kill(worker.proc.pid, signal.SIGSEGV)
        died = worker.run("functional", **relu)
        assert died["outcome"] == "signal" and "signal 11" in died["detail"], died
        assert worker.run("functional", **relu)["outcome"] == "ok" and worker.starts == 2
    finally:
        worker.close()
