"""Issue 12, "input that escapes as the wrong exception, or runs silently wrong": each
reproducer of the issue, as a class of bug with a parametrised test.

Classes: non-finite attribute values; sizes bounded at compile and run time; unhashable
attribute values; messages that name the call; backends agreeing on checks (batch norm on
one value per channel); IR parser limits; weight files; the command line's error paths.
The fuzz suite (``tests/fuzz``) searches the same surfaces at random.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import convforge.functional as F
import numpy as np
import pytest

import convforge as cf
from convforge import nn, optim
from convforge.cli import main
from convforge.errors import (
    AttributeValueError,
    ConvforgeError,
    IRParseError,
    SerializationError,
    ShapeError,
    StateDictError,
)
from convforge.ir.parser import parse
from convforge.ir.types import MAX_ELEMENTS, TensorType, check_elements

INF, NAN = math.inf, math.nan
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _same(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, equal_nan=True)


# =========================================================================================
# Non-finite attribute values: run as the reference does, or refused before codegen
# =========================================================================================
@pytest.mark.parametrize("slope", [INF, -INF, NAN])
def test_non_finite_activation_attributes_run_like_the_reference(slope):
    """``nn.LeakyReLU(inf)`` used to fail with ``NameError: name 'inf' is not defined`` in the
    generated numba-cpu code: attribute values are emitted as literals that round-trip."""
    model = nn.Sequential(nn.LeakyReLU(slope))
    x = np.array([[-2.0, -0.0, 0.0, 3.0]], np.float32)
    want = cf.compile(model, (None, 4), backend="reference")(x)
    _same(cf.compile(model, (None, 4), backend="numba-cpu")(x), want)
    torch = pytest.importorskip("torch")
    _same(want, torch.nn.functional.leaky_relu(torch.from_numpy(x), slope).numpy())


@pytest.mark.parametrize(
    "opt",
    [optim.Adam(lr=INF), optim.Adam(eps=INF), optim.Adam(weight_decay=INF), optim.SGD(lr=INF, momentum=INF)],
    ids=["Adam(lr=inf)", "Adam(eps=inf)", "Adam(weight_decay=inf)", "SGD(lr=inf, momentum=inf)"],
)
def test_infinite_optimizer_settings_torch_accepts_train_like_the_reference(opt):
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    states = []
    for backend in ("reference", "numba-cpu"):
        cf.manual_seed(0)
        step = cf.compile_train(nn.Sequential(nn.Linear(3, 2)), (None, 3), optimizer=opt, backend=backend)
        step(x, y)
        step(x, y)
        states.append({**step.state_dict(), **step.optimizer_state_dict()})
    for key in states[0]:
        _same(states[1][key], states[0][key])


def test_non_finite_attributes_parsed_from_ir_text_compile_on_numba_cpu():
    text = (
        "graph @g(%x: f32[N,3]) -> (f32[N,3]) {\n"
        "  %1: f32[N,3] = leaky_relu(%x) {negative_slope=nan}\n"
        "  %2: f32[N,3] = hardtanh(%1) {min_val=-inf, max_val=inf}\n"
        "  return %2\n}"
    )
    from convforge.backends import get_backend

    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    want = get_backend("reference").compile_graph(parse(text)).run({"x": x})[0]
    _same(get_backend("numba-cpu").compile_graph(parse(text)).run({"x": x})[0], want)
    assert np.isnan(want[0, 0]) and want[0, 2] == 2.0


BEYOND_FLOAT32 = {
    "LeakyReLU(3.5e38)": lambda: nn.Sequential(nn.LeakyReLU(3.5e38)),
    "ELU(alpha=3.5e38)": lambda: nn.Sequential(nn.ELU(alpha=3.5e38)),
    "Conv2d -> LeakyReLU(3.5e38), fused": lambda: nn.Sequential(nn.Conv2d(2, 2, 1), nn.LeakyReLU(3.5e38)),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("case", BEYOND_FLOAT32, ids=list(BEYOND_FLOAT32))
def test_attributes_beyond_float32_round_as_the_reference(case):
    """Found by the long fuzz run: a finite attribute beyond float32's range is infinite in
    the reference (``x.dtype.type(alpha)``, as torch) but stayed finite in numba-cpu's float64
    kernel arguments; attributes are rounded to the tensor dtype where they are emitted."""
    model = BEYOND_FLOAT32[case]()
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    want = cf.compile(model, (None, 2, 3, 3), backend="reference")(x)
    _same(cf.compile(model, (None, 2, 3, 3), backend="numba-cpu")(x), want)
    assert np.isinf(want).any()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "opt",
    [optim.Adam(eps=3, weight_decay=1e300), optim.SGD(lr=1e300, momentum=0.5)],
    ids=["Adam(eps=3, weight_decay=1e300)", "SGD(lr=1e300, momentum=0.5)"],
)
def test_optimizer_settings_beyond_float32_train_like_the_reference(opt):
    test_infinite_optimizer_settings_torch_accepts_train_like_the_reference(opt)


NAN_SETTINGS = {
    "Adam(lr=nan)": (optim.Adam, {"lr": NAN}, "lr"),
    "Adam(eps=nan)": (optim.Adam, {"eps": NAN}, "eps"),
    "Adam(betas=(nan, 0.999))": (optim.Adam, {"betas": (NAN, 0.999)}, "beta1"),
    "Adam(betas=(0.9, nan))": (optim.Adam, {"betas": (0.9, NAN)}, "beta2"),
    "Adam(weight_decay=nan)": (optim.Adam, {"weight_decay": NAN}, "weight_decay"),
    "Adam(betas=(inf, 0.999))": (optim.Adam, {"betas": (INF, 0.999)}, "beta1"),
    "Adam(betas=(1.0, 0.999))": (optim.Adam, {"betas": (1.0, 0.999)}, "beta1"),
    "SGD(lr=nan)": (optim.SGD, {"lr": NAN}, "lr"),
    "SGD(weight_decay=nan)": (optim.SGD, {"weight_decay": NAN}, "weight_decay"),
    "SGD(momentum=nan)": (optim.SGD, {"momentum": NAN}, "momentum"),
    "SGD(dampening=nan)": (optim.SGD, {"dampening": NAN}, "dampening"),
    "SGD(lr=-1)": (optim.SGD, {"lr": -1.0}, "lr"),
    "SGD(lr=10**400)": (optim.SGD, {"lr": 10**400}, "lr"),
}


@pytest.mark.parametrize("case", NAN_SETTINGS, ids=list(NAN_SETTINGS))
def test_nan_and_out_of_range_optimizer_settings_are_refused(case):
    """torch.optim.Adam refuses NaN (its checks are ``not 0.0 <= x``); convforge refuses it
    for SGD too, where torch would train to NaN (docs: frontend/optim.py)."""
    cls, kwargs, attr = NAN_SETTINGS[case]
    with pytest.raises(AttributeValueError, match=rf"optim\.{cls.__name__}: {attr} must"):
        cls(**kwargs)


def test_optimizer_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert optim.SGD().lr == torch.optim.SGD(p).defaults["lr"] == 1e-3
    adam = torch.optim.Adam(p).defaults
    assert (optim.Adam().lr, optim.Adam().betas, optim.Adam().eps) == (adam["lr"], adam["betas"], adam["eps"])


def test_nesterov_without_momentum_says_which_values_are_needed():
    with pytest.raises(AttributeValueError) as err:
        optim.SGD(nesterov=True)
    msg = str(err.value)
    assert "optim.SGD: nesterov momentum requires momentum > 0 and dampening 0" in msg
    assert "momentum=0.0" in msg and "dampening=0.0" in msg
    with pytest.raises(AttributeValueError, match="dampening=0.5"):
        optim.SGD(momentum=0.9, dampening=0.5, nesterov=True)


def test_batch_norm_eps_nan_is_refused():
    with pytest.raises(AttributeValueError, match="BatchNorm2d: eps must be > 0, got nan"):
        nn.BatchNorm2d(2, eps=NAN)


# =========================================================================================
# Sizes: every tensor and scratch buffer bounded, refused before anything is allocated
# =========================================================================================
LAYERS_TOO_BIG = {
    "Conv2d(1, 1, kernel_size=2**32)": (lambda: nn.Conv2d(1, 1, kernel_size=2**32), "Conv2d: kernel_size"),
    "Conv2d(1, 1, kernel_size=2**16)": (lambda: nn.Conv2d(1, 1, kernel_size=2**16), "Conv2d: weight"),
    "Conv2d(1, 2**40, 3)": (lambda: nn.Conv2d(1, 2**40, 3), "Conv2d: weight"),
    "Conv2d(1, 1, 2, padding=2**31)": (lambda: nn.Conv2d(1, 1, 2, padding=2**31), "Conv2d: padding"),
    "Conv1d(3, 1, 4, dilation=2**32)": (
        lambda: nn.Conv1d(3, 1, 4, padding="same", dilation=2**32),
        "Conv1d: dilation",
    ),
    "ConvTranspose2d(2**20, 2**20, 3)": (
        lambda: nn.ConvTranspose2d(2**20, 2**20, 3),
        "ConvTranspose2d: weight",
    ),
    "Linear(2**20, 2**20)": (lambda: nn.Linear(2**20, 2**20), "Linear: weight"),
    "BatchNorm2d(2**40)": (lambda: nn.BatchNorm2d(2**40), "BatchNorm2d: weight"),
    "GroupNorm(1, 2**40)": (lambda: nn.GroupNorm(1, 2**40), "GroupNorm: weight"),
}


@pytest.mark.parametrize("case", LAYERS_TOO_BIG, ids=list(LAYERS_TOO_BIG))
def test_layers_too_big_are_refused_before_allocating(case):
    """``nn.Conv2d(1, 2**40, 3)`` used to raise a raw MemoryError, ``kernel_size=2**32`` a
    ZeroDivisionError (an int64 product wrapped to 0)."""
    build, named = LAYERS_TOO_BIG[case]
    with pytest.raises(ConvforgeError, match=named):
        build()


X8 = np.zeros((2, 1, 8, 8), np.float32)
COMPILES_TOO_BIG = {
    "Conv2d(padding=2**29)": (lambda: nn.Conv2d(1, 1, 2, padding=2**29), (None, 1, 8, 8), "output"),
    "Conv2d(padding=2**30)": (lambda: nn.Conv2d(1, 1, 2, padding=2**30), (None, 1, 8, 8), "padded size"),
    "Conv1d(padding='same', dilation=2**28)": (
        lambda: nn.Conv1d(3, 1, 4, padding="same", dilation=2**28),
        (None, 3, 8),
        "scratch buffer",
    ),
    "Conv2d(dilation=2**30)": (lambda: nn.Conv2d(1, 1, 3, dilation=2**30), (None, 1, 8, 8), "kernel extent"),
    "MaxPool2d(3, dilation=2**30)": (
        lambda: nn.MaxPool2d(3, 1, 1, dilation=2**30),
        (None, 1, 8, 8),
        "extent",
    ),
    "Linear on input_shape (None, 2**40)": (lambda: nn.Linear(2, 2), (None, 2**40), "limit"),
    "AdaptiveAvgPool2d(2**30)": (lambda: nn.AdaptiveAvgPool2d(2**30), (None, 1, 8, 8), "output"),
}


@pytest.mark.parametrize("backend", ["reference", "numba-cpu"])
@pytest.mark.parametrize("case", COMPILES_TOO_BIG, ids=list(COMPILES_TOO_BIG))
def test_graphs_too_big_are_refused_at_compile_time_naming_the_layer(case, backend):
    """``Conv2d(1, 1, 2, padding=2**31)`` used to compile to f32[N,1,4294967296,4294967296] and
    fail at run time with ``ValueError: array is too big``; a 'same' conv with a huge
    dilation gave a SystemError from a parallel kernel allocating its padded image."""
    build, shape, what = COMPILES_TOO_BIG[case]
    with pytest.raises(ShapeError) as err:
        cf.compile(nn.Sequential(build()), shape, backend=backend)
    msg = str(err.value)
    assert "0 (" in msg and what in msg and str(MAX_ELEMENTS) in msg, msg


@pytest.mark.parametrize("size", [2**62, 2**30, (2**20, 2**20)])
def test_functional_sizes_are_bounded(size):
    with pytest.raises(ConvforgeError, match="F.adaptive_avg_pool2d"):
        F.adaptive_avg_pool2d(X8, size)


@pytest.mark.parametrize("backend", ["reference", "numba-cpu"])
def test_the_batch_is_bounded_at_run_time_before_any_kernel(backend):
    """A padded image of 32769 x 32769 is within the per-tensor limit for one image, not for
    two: the run is refused before anything is allocated."""
    net = cf.compile(nn.Sequential(nn.ZeroPad2d(2**14)), (None, 1, 1, 1), backend=backend)
    with pytest.raises(ShapeError, match=r"batch size 2 .* use a batch of at most 1"):
        net(np.zeros((2, 1, 1, 1), np.float32))


def test_shape_arithmetic_is_exact():
    assert TensorType("f32", (2**40, 2**40)).numel() == 2**80  # np.prod(int64) wrapped to 0
    assert check_elements(("N", 2**15, 2**15), "x") == 2**30
    with pytest.raises(ShapeError, match=r"x \[2147483648\] would hold 2147483648 elements"):
        check_elements((2**31,), "x")


def _r(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


ZERO_SIZE = {
    "F.conv2d on a batch of 0": lambda b: F.conv2d(
        _r(0, 1, 4, 4), _r(2, 1, 3, 3), _r(2), padding=1, backend=b
    ),
    "F.linear with 0 input features": lambda b: F.linear(_r(3, 0), _r(2, 0), _r(2), backend=b),
    "F.linear on 0 rows": lambda b: F.linear(_r(0, 3), _r(2, 3), backend=b),
    "F.batch_norm on a batch of 0": lambda b: F.batch_norm(
        _r(0, 2, 3, 3), np.zeros(2, np.float32), np.ones(2, np.float32), backend=b
    ),
    "F.log_softmax over an empty dim": lambda b: F.log_softmax(_r(3, 0), dim=1, backend=b),
    "F.softmax of an empty batch": lambda b: F.softmax(_r(0, 3), dim=1, backend=b),
}


@pytest.mark.parametrize("case", ZERO_SIZE, ids=list(ZERO_SIZE))
def test_zero_size_tensors_run_like_the_reference(case):
    """Found by the fuzz suite: numba-cpu reshaped empty arrays with -1 (which NumPy cannot
    infer), BLAS was called with an empty inner dimension, and the softmax references took
    the max of an empty axis; as torch, an empty input gives an empty (or zero) result."""
    want = ZERO_SIZE[case]("reference")
    _same(ZERO_SIZE[case]("numba-cpu"), want)


# =========================================================================================
# Unhashable attribute values: a ConvforgeError naming the call, not a TypeError
# =========================================================================================
UNHASHABLE = {
    "max_pool2d(kernel_size={})": lambda: F.max_pool2d(X8, kernel_size={}),
    "max_pool2d(kernel_size=[2, {}])": lambda: F.max_pool2d(X8, kernel_size=[2, {}]),
    "avg_pool2d(stride={})": lambda: F.avg_pool2d(X8, 2, stride={}),
    "conv2d(padding={})": lambda: F.conv2d(X8, np.ones((1, 1, 3, 3), np.float32), padding={}),
    "leaky_relu({})": lambda: F.leaky_relu(X8, {}),
    "softmax(dim={})": lambda: F.softmax(X8, dim={}),
    "adaptive_avg_pool2d({})": lambda: F.adaptive_avg_pool2d(X8, {}),
    "dropout(p={})": lambda: F.dropout(X8, p={}, seed=0),
    "reshape(shape={})": lambda: F.reshape(X8, {}),
}


@pytest.mark.parametrize("case", UNHASHABLE, ids=list(UNHASHABLE))
def test_unhashable_attribute_values_name_the_call(case):
    with pytest.raises(ConvforgeError, match=rf"F\.{case.split('(')[0]}"):
        UNHASHABLE[case]()


# =========================================================================================
# Messages name the call or the layer
# =========================================================================================
NAMED = {
    "F.conv2d(x, w, dilation=(1, 1, 1))": (
        lambda: F.conv2d(X8, np.ones((1, 1, 3, 3), np.float32), dilation=(1, 1, 1)),
        "F.conv2d: dilation must be an int or a tuple of 2 ints",
    ),
    "F.dropout(x, p=2.0)": (
        lambda: F.dropout(X8, p=2.0),
        "F.dropout: dropout probability has to be between 0 and 1, but got 2.0",
    ),
    "F.reshape mismatch": (
        lambda: F.reshape(np.zeros((2, 3, 4), np.float32), (5, -1)),
        "F.reshape: cannot reshape [2, 3, 4] to [5, -1]",
    ),
}


@pytest.mark.parametrize("case", NAMED, ids=list(NAMED))
def test_messages_name_the_call(case):
    call, message = NAMED[case]
    with pytest.raises(ConvforgeError) as err:
        call()
    assert message in str(err.value)


class _BadReshape(nn.Module):
    def forward(self, x):
        return F.reshape(x, (5, -1))


class _BadDilation(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.ones((1, 1, 3, 3), np.float32))

    def forward(self, x):
        return F.conv2d(x, self.weight, dilation=(1, 1, 1))


@pytest.mark.parametrize("layer", [_BadReshape, _BadDilation])
def test_messages_while_tracing_name_the_layer(layer):
    model = nn.Sequential(nn.Identity(), layer())
    with pytest.raises(ConvforgeError, match=rf"1 \({layer.__name__}\)"):
        cf.compile(model, (None, 1, 4, 6), backend="reference")


# =========================================================================================
# Backends agree on every check: batch norm on one value per channel
# =========================================================================================
BN_MODELS = {
    "BatchNorm1d, batch 1": (
        lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)),
        (4,),
    ),
    "BatchNorm2d, 1x1 image, batch 1": (
        lambda: nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2)),
        (1, 1, 1),
    ),
}


@pytest.mark.parametrize("backend", ["reference", "numba-cpu", "numba-cuda"])
@pytest.mark.parametrize("case", BN_MODELS, ids=list(BN_MODELS))
def test_batch_norm_on_one_value_per_channel_is_refused_on_every_backend(case, backend):
    """numba-cpu used to train on a batch of 1 and set running_var to NaN; the reference and
    PyTorch raise "Expected more than 1 value per channel when training"."""
    build, shape = BN_MODELS[case]
    cf.manual_seed(0)
    step = cf.compile_train(build(), (None, *shape), optimizer=optim.SGD(lr=0.1), backend=backend)
    before = step.state_dict()
    with pytest.raises(ShapeError, match="expected more than 1 value per channel when training"):
        step(np.ones((1, *shape), np.float32), np.array([0]))
    for key, value in step.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    if backend != "numba-cuda":  # two images train (the simulator is slow)
        step(np.random.default_rng(0).random((2, *shape), dtype=np.float32), np.array([0, 1]))
        assert np.all(np.isfinite(step.state_dict()["1.running_var"]))


# =========================================================================================
# IR parser limits: IRParseError with line and column
# =========================================================================================
PARSER = {
    "[ x 2000 in an attribute": "graph @g(%x: f32[2]) -> (f32[2]) {\n  %1: f32[2] = relu(%x) {a="
    + "[" * 2000
    + "}\n  return %1\n}",
    "[ x 2000 in a type": "graph @g(%x: f32[" + "[" * 2000 + "]) -> () {\n}",
    "5,000-digit dimension": "graph @g(%x: f32[" + "9" * 5000 + "]) -> (f32[1]) {\n  return %x\n}",
    "attribute 2**63": "graph @g(%x: f32[2]) -> (f32[2]) {\n  %1: f32[2] = leaky_relu(%x) "
    "{negative_slope=9223372036854775808}\n  return %1\n}",
    "dimension over the limit": "graph @g(%x: f32[4294967296]) -> (f32[4294967296]) {\n"
    "  %1: f32[4294967296] = relu(%x)\n  return %1\n}",
}


@pytest.mark.parametrize("case", PARSER, ids=list(PARSER))
def test_parser_limits_are_parse_errors_with_line_and_column(case):
    with pytest.raises(IRParseError, match=r"line \d+, column \d+: "):
        parse(PARSER[case])


# =========================================================================================
# Weight files: a SerializationError naming the file and the entry
# =========================================================================================
def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _huge_header() -> bytes:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 16


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _unsupported_compression(path: Path) -> Path:
    _zip(path, {"0.weight.npy": _npy_bytes(np.zeros(3, np.float32))}, zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = raw.find(signature) + offset
        raw[at : at + 2] = (99).to_bytes(2, "little")
    path.write_bytes(raw)
    return path


def _damaged_deflate(path: Path) -> Path:
    """A compressed member whose deflate stream is damaged (zlib.error: found by the fuzz run)."""
    _zip(path, {"0.weight.npy": _npy_bytes(np.arange(1000, dtype=np.float32))}, zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    raw[65:69] = b"\xff\xff\xff\xff"  # 30 bytes into the member's data
    path.write_bytes(raw)
    return path


def _central_directory_edit(offset: int, value: int):
    """A valid .npz with one field of its central directory entry rewritten."""

    def make(path: Path) -> Path:
        _zip(path, {"0.weight.npy": _npy_bytes(np.zeros(3, np.float32))})
        raw = bytearray(path.read_bytes())
        at = raw.find(b"PK\x01\x02") + offset
        raw[at : at + 2] = value.to_bytes(2, "little")
        path.write_bytes(raw)
        return path

    return make


FILES = {
    "non-.npy member": (lambda p: _zip(p, {"notes.txt": b"hello"}), "member 'notes.txt' is not a .npy array"),
    ".npy named .npz": (
        lambda p: (np.save(p.with_suffix(".npy"), np.zeros(3)), p.with_suffix(".npy").rename(p))[1],
        "is a single .npy array, not an .npz archive",
    ),
    "unsupported compression": (
        _unsupported_compression,
        "entry '0.weight' uses an unsupported zip compression",
    ),
    "header declaring 10**12 elements": (
        lambda p: _zip(p, {"0.weight.npy": _huge_header()}),
        "entry '0.weight' declares shape [1000000, 1000000]",
    ),
    "truncated member": (
        lambda p: _zip(p, {"0.weight.npy": _npy_bytes(np.arange(100, dtype=np.float32))[:200]}),
        "entry '0.weight' is truncated",
    ),
    "object array": (
        lambda p: _zip(p, {"0.weight.npy": _npy_bytes(np.array([None, 1], dtype=object))}),
        "entry '0.weight' holds Python objects",
    ),
    "damaged deflate stream": (_damaged_deflate, "entry '0.weight' "),
    "zip version 8.7 needed (found by the fuzz run)": (
        _central_directory_edit(6, 87),
        "unsupported zip feature: zip file version 8.7",
    ),
    "encrypted member": (_central_directory_edit(8, 1), "entry '0.weight' cannot be read"),
    "optimizer/step = 2**63 - 1": (
        lambda p: cf.save({"0.weight": np.zeros(2, np.float32), "optimizer/step": np.array(2**63 - 1)}, p),
        "entry 'optimizer/step' must be an integer in [0, 2**62]",
    ),
}


@pytest.mark.parametrize("case", FILES, ids=list(FILES))
def test_malformed_weight_files_name_the_file_and_entry(case, tmp_path):
    make, message = FILES[case]
    path = make(tmp_path / "weights.npz")
    with pytest.raises(SerializationError) as err:
        cf.load(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_an_overflowing_step_counter_is_refused_in_safetensors_too(tmp_path):
    path = FILES["optimizer/step = 2**63 - 1"][0](tmp_path / "weights.safetensors")
    with pytest.raises(SerializationError, match=r"'optimizer/step' must be an integer in \[0, 2\*\*62\]"):
        cf.load(path)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_float64_weights_beyond_float32_are_refused_naming_the_entry(suffix, tmp_path):
    """1e300 is finite in float64: it used to pass the finiteness check and become inf."""
    path = cf.save({"weight": np.full((2, 3), 1e300), "bias": np.zeros(2)}, tmp_path / f"w{suffix}")
    model = nn.Linear(3, 2)
    for target in (model, cf.compile(model, (None, 3), backend="reference")):
        with pytest.raises(StateDictError, match="entry 'weight' holds values beyond the float32 range"):
            target.load_state_dict(cf.load(path))
    assert np.all(np.isfinite(model.weight))


def test_evaluate_reports_a_file_declaring_a_huge_array(tmp_path, capsys):
    path = _zip(tmp_path / "w.npz", {"0.weight.npy": _huge_header()})
    assert main(["evaluate", str(path), "--backend", "reference"]) == 1
    assert "declares shape [1000000, 1000000]" in capsys.readouterr().err


# =========================================================================================
# The command line's error paths
# =========================================================================================
def test_train_to_an_unwritable_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["train", "--out", str(blocker / "run"), "--epochs", "1", "--limit", "32", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "convforge: error: convforge train --out: cannot create folder" in err and "Traceback" not in err


def test_show_graph_into_an_impossible_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["show", "lenet5", "--backend", "reference", "--graph", str(blocker / "dir" / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "convforge show --graph: cannot create folder" in err


def test_show_graph_creates_a_missing_folder(tmp_path, capsys):
    picture = tmp_path / "new" / "dir" / "x.png"
    assert main(["show", "lenet5", "--backend", "reference", "--graph", str(picture)]) == 0
    assert picture.stat().st_size > 0


def test_show_piped_to_head_prints_no_traceback():
    cmd = f"{sys.executable} -m convforge.cli show lenet5 --backend reference | head -2"
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=300
    )
    assert proc.stdout.startswith("graph @sequential") and len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141)


@pytest.mark.parametrize("flag", ["--epochs", "--limit", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_must_be_at_least_one(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", flag, value, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert f"argument {flag}: must be >= 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluate_on_a_test_set_missing_classes(tmp_path, capsys):
    from convforge.data import write_idx
    from convforge.models import get_model

    rng = np.random.default_rng(0)
    for prefix, n, classes in (("train", 20, 10), ("t10k", 30, 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % classes).astype(np.uint8))
    model, _ = get_model("lenet5")
    weights = cf.save(model, tmp_path / "w.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0 / 0
        assert main(["evaluate", str(weights), "--backend", "reference", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    recall = next(line for line in out.splitlines() if line.startswith("per-class recall"))
    assert "nan" not in recall and recall.split()[-5:] == ["n/a"] * 5
    assert "no test images of class 5, 6, 7, 8, 9" in out


@pytest.mark.parametrize("name", ["a\nimport os; os._exit(3)", "nul\x00byte", "cr\rx\u2028y"])
def test_layer_names_reach_generated_code_only_as_comments(name):
    """Layer names and locations are printed into the numba-cpu driver as comments: a
    newline, NUL or line separator in one (from a module, an IR or an ONNX file) stays inside
    its comment line (the fuzz suite found a NUL giving a SyntaxError)."""
    model = nn.Sequential()
    model.add_module(name, nn.Linear(3, 2))
    net = cf.compile(model, (None, 3), backend="numba-cpu")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(net(x), cf.compile(model, (None, 3), backend="reference")(x), rtol=1e-6)
    assert "os._exit" not in "".join(
        line for line in net.source().splitlines() if not line.lstrip().startswith("#")
    )
