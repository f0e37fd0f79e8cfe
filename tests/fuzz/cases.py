"""What each fuzz case runs, inside the fuzz worker process (``worker.py``).

A case gets plain data (arguments, arrays, IR text, file bytes) and applies the suite's
oracle: the call returns a result that the reference backend agrees with (NaN for NaN,
inf for inf, finite values within float32 rounding), or it raises a ``ConvforgeError``
whose message names the layer, the node, the call or the file key. :func:`run` turns a case
into an outcome dict:

* ``ok``: it returned, and every backend agreed (``note`` says when a graph was too big to run);
* ``error``: a ``ConvforgeError`` naming what it should;
* ``unnamed``: a ``ConvforgeError`` that names none of the expected things;
* ``disagree``: the backends disagree (values, or one raises where the other returns);
* ``other``: any other exception (``IndexError``, ``MemoryError``, ``NameError``...).

The parent (``harness.py``) adds ``signal`` (the worker died by a signal) and ``timeout``.
Compiled models are kept per worker, so a module compiles each small model once and then
fuzzes its inputs.
"""

from __future__ import annotations

import math
import tempfile
import traceback
from pathlib import Path
from typing import Any

import convforge.functional as F
import numpy as np

import convforge as cf
from convforge import nn, optim
from convforge.errors import ConvforgeError
from convforge.ir.parser import parse
from convforge.ir.printer import print_graph

BACKENDS = ("reference", "numba-cpu")
#: graphs whose values hold more elements than this (for the batch run) compile but do not run
MAX_RUN_ELEMENTS = 400_000


class Unnamed(AssertionError):
    """A ConvforgeError whose message names none of the expected things."""


class Disagreement(AssertionError):
    """The backends disagree, or a round trip is not the identity."""


def run(name: str, kwargs: dict) -> dict:
    """The outcome of case ``name``: see the module docstring."""
    try:
        note = CASES[name](**kwargs)
    except Unnamed as exc:
        return {"outcome": "unnamed", "detail": str(exc)}
    except Disagreement as exc:
        return {"outcome": "disagree", "detail": str(exc)}
    except ConvforgeError as exc:  # raised by a stage that expects nothing particular
        return {"outcome": "error", "detail": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - the oracle: anything else is a bug
        return {
            "outcome": "other",
            "detail": f"{type(exc).__name__}: {str(exc)[:500]}",
            "traceback": traceback.format_exc()[-4000:],
        }
    if isinstance(note, dict):  # a stage raised the expected ConvforgeError
        return note
    return {"outcome": "ok", "note": note or ""}


def expect(fn, names: tuple[str, ...]):
    """``fn()``, or a ConvforgeError that names one of ``names`` (else :class:`Unnamed`)."""
    try:
        return fn()
    except ConvforgeError as exc:
        msg = str(exc)
        if not any(n in msg for n in names):
            raise Unnamed(f"{type(exc).__name__} naming none of {names}: {msg}") from None
        raise


def stages(fn):
    """Decorator: a ConvforgeError that a stage let through (named) is the ``error`` outcome."""

    def wrapped(**kwargs):
        try:
            return fn(**kwargs)
        except (Unnamed, Disagreement):
            raise
        except ConvforgeError as exc:
            return {"outcome": "error", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}

    return wrapped


# -- comparing results ------------------------------------------------------------------------
def same(what: str, got: Any, want: Any, rtol: float = 2e-4) -> None:
    """``got`` equals ``want``: same shape and dtype, NaN where NaN, equal infinities, finite
    values within ``rtol`` of the largest magnitude."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Disagreement(
            f"{what}: {got.dtype}{list(got.shape)} vs reference {want.dtype}{list(want.shape)}"
        )
    if got.dtype.kind != "f":
        if not np.array_equal(got, want):
            raise Disagreement(f"{what}: values differ from the reference")
        return
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)):
        raise Disagreement(f"{what}: NaN at different places than the reference")
    inf = np.isinf(w) | np.isinf(g)
    if not np.array_equal(g[inf], w[inf]):
        raise Disagreement(f"{what}: infinities differ from the reference")
    finite = np.isfinite(w) & np.isfinite(g)
    if finite.any():
        scale = max(1.0, float(np.max(np.abs(w[finite]))))
        err = float(np.max(np.abs(g[finite] - w[finite])))
        # a value near float32's range on one backend may overflow on the other: compare
        # what is representable
        if err > rtol * scale and err > 1e-5 * scale * max(1, w.size) ** 0.5:
            raise Disagreement(f"{what}: max |difference| {err:.3g} (scale {scale:.3g}) from the reference")


def agree(what: str, call, names: tuple[str, ...]):
    """Run ``call(backend)`` on every backend: all raise a named ConvforgeError (of the same
    class) or all return values that agree with the reference's. Returns the reference's."""
    results: dict[str, Any] = {}
    for backend in BACKENDS:
        try:
            results[backend] = ("ok", expect(lambda b=backend: call(b), names))
        except ConvforgeError as exc:
            results[backend] = ("error", exc)
    kinds = {b: r[0] for b, r in results.items()}
    if len(set(kinds.values())) > 1:
        detail = {b: (str(r[1])[:200] if r[0] == "error" else "returned") for b, r in results.items()}
        raise Disagreement(f"{what}: backends disagree: {detail}")
    ref = results["reference"]
    if ref[0] == "error":
        classes = {type(r[1]).__name__ for r in results.values()}
        if len(classes) > 1:
            raise Disagreement(f"{what}: backends raise different errors: {classes}")
        raise ref[1]
    for backend in BACKENDS[1:]:
        _same_tree(f"{what} on {backend}", results[backend][1], ref[1])
    return ref[1]


def _same_tree(what: str, got: Any, want: Any) -> None:
    if isinstance(want, dict):
        if set(got) != set(want):
            raise Disagreement(f"{what}: keys {sorted(got)} vs {sorted(want)}")
        for k in want:
            _same_tree(f"{what}[{k}]", got[k], want[k])
    elif isinstance(want, (tuple, list)):
        if len(got) != len(want):
            raise Disagreement(f"{what}: {len(got)} results vs {len(want)}")
        for i, (a, b) in enumerate(zip(got, want)):
            _same_tree(f"{what}[{i}]", a, b)
    else:
        same(what, got, want)


def too_big(graph, batch: int = 2) -> bool:
    values = [*graph.inputs, *(v for node in graph.nodes for v in node.outputs)]
    return sum(v.type.numel(batch) for v in values) > MAX_RUN_ELEMENTS


# -- inputs as data ---------------------------------------------------------------------------
def materialise(spec: Any) -> Any:
    """An argument from its description: ``("array", values, layout)`` becomes an array laid
    out as said (C order, Fortran order, a strided or reversed view, read-only); other
    values pass through (tuples and lists element-wise)."""
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "array":
        _, values, layout = spec
        arr = np.asarray(values)
        if layout == "fortran":
            return np.asfortranarray(arr)
        if layout == "strided" and arr.ndim:
            wide = np.repeat(arr, 2, axis=-1)
            return wide[..., ::2]
        if layout == "reversed" and arr.ndim:
            return arr[..., ::-1].copy()[..., ::-1]
        if layout == "readonly":
            arr = arr.copy()
            arr.flags.writeable = False
            return arr
        if layout == "list":
            return arr.tolist()
        return np.ascontiguousarray(arr)
    if isinstance(spec, list):
        return [materialise(s) for s in spec]
    if isinstance(spec, tuple):
        return tuple(materialise(s) for s in spec)
    return spec


# -- layer and functional arguments ----------------------------------------------------------
@stages
def layer(kind: str, args: tuple, kwargs: dict, input_shape: tuple, seed: int = 0):
    """Build ``nn.<kind>(*args, **kwargs)``, compile it on every backend for ``input_shape``
    and run it on one random batch."""
    names = (kind,)
    cf.manual_seed(seed)
    module = expect(lambda: getattr(nn, kind)(*args, **kwargs), names)
    model = nn.Sequential(module)
    nets = {}

    def compiled(backend):
        nets[backend] = cf.compile(model, input_shape, backend=backend)
        return 0

    agree(f"nn.{kind} compile", compiled, names)
    if too_big(nets["reference"].graph):
        return "compiled; too big to run"
    x = np.random.default_rng(seed).standard_normal((2, *input_shape[1:])).astype(np.float32)
    agree(f"nn.{kind} run", lambda b: nets[b](x), names)
    return None


#: functional names whose IR op is named otherwise
IR_OPS = {"amax": "reduce_max", "mean": "reduce_mean", "sum": "reduce_sum"}


@stages
def functional(name: str, args: tuple, kwargs: dict):
    """``F.<name>(*args, **kwargs)`` eagerly on every backend (arrays as :func:`materialise`
    describes them)."""
    args, kwargs = materialise(args), {k: materialise(v) for k, v in kwargs.items()}
    shapes = [a.shape for a in args if isinstance(a, np.ndarray)]
    if sum(math.prod(s) for s in shapes) > MAX_RUN_ELEMENTS:
        return "inputs too big to run"
    fn = getattr(F, name)
    names = (f"F.{name}", f"F.{IR_OPS.get(name, name)}")  # F.amax runs as the op reduce_max
    agree(f"F.{name}", lambda b: fn(*args, **kwargs, backend=b), names)
    return None


# -- input arrays given to compiled models ------------------------------------------------------
MODELS = {
    # name: (builder, input shape, loss)
    "convnet": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)
        ),
        (None, 1, 8, 8),
        "cross_entropy",
    ),
    "bnnet": (
        lambda: nn.Sequential(
            nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Dropout(0.25), nn.Linear(3, 2)
        ),
        (None, 4),
        "cross_entropy",
    ),
    "mse": (
        lambda: nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
        (None, 4),
        "mse",
    ),
}
_COMPILED: dict[tuple[str, str, str], Any] = {}


def compiled_model(name: str, backend: str, kind: str):
    """``kind`` "infer" (``cf.compile``) or "grad" (``cf.compile_train``), once per worker."""
    key = (name, backend, kind)
    if key not in _COMPILED:
        build, shape, loss = MODELS[name]
        cf.manual_seed(1)
        model = build()
        if kind == "infer":
            _COMPILED[key] = cf.compile(model, shape, backend=backend)
        else:
            _COMPILED[key] = cf.compile_train(model, shape, loss=loss, backend=backend)
    return _COMPILED[key]


@stages
def inputs(model: str, kind: str, x: Any, y: Any = None):
    """Give the compiled ``model`` the input ``x`` (and labels ``y``): ``net(x)`` or
    ``step.gradients(x, y)`` on every backend; both agree or both refuse, naming the input."""
    x, y = materialise(x), materialise(y)
    names = ("input", "target")  # "Sequential: expected input of shape ...", "input %x: ..."
    if kind == "infer":
        agree(f"{model}(x)", lambda b: compiled_model(model, b, "infer")(x), names)
    else:
        agree(f"{model}.gradients(x, y)", lambda b: compiled_model(model, b, "grad").gradients(x, y), names)
    return None


# -- optimizer settings ---------------------------------------------------------------------
@stages
def optimizer(kind: str, kwargs: dict, steps: int = 2):
    """Build ``optim.<kind>(**kwargs)``; train a tiny model ``steps`` steps with it on every
    backend from the same weights; the weights and optimizer state agree."""
    names = (f"optim.{kind}",)
    opt = expect(lambda: getattr(optim, kind)(**kwargs), names)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0])

    def train(backend):
        cf.manual_seed(4)
        step = cf.compile_train(nn.Sequential(nn.Linear(3, 2)), (None, 3), optimizer=opt, backend=backend)
        losses = [step(x, y) for _ in range(steps)]
        return {"losses": np.array(losses), **step.state_dict(), **step.optimizer_state_dict()}

    agree(f"optim.{kind}", train, names)
    return None


# -- IR text --------------------------------------------------------------------------------
@stages
def ir_text(text: str, seed: int = 0):
    """Parse ``text``: an IRParseError naming line and column, or a graph whose printed form
    round-trips; a graph small enough runs on every backend, which agree."""
    try:
        graph = parse(text)
    except ConvforgeError as exc:
        if "line " not in str(exc) or "column " not in str(exc):
            raise Unnamed(f"{type(exc).__name__} without line and column: {exc}") from None
        raise
    printed = print_graph(graph)
    again = print_graph(parse(printed))
    if again != printed:
        raise Disagreement("print -> parse -> print is not the identity")
    if not graph.inputs or too_big(graph):
        return "parsed; not run"
    rng = np.random.default_rng(seed)
    feed = {}
    for v in graph.inputs:
        shape = v.type.concrete(2)
        if v.type.is_float:
            feed[v.name] = rng.standard_normal(shape).astype(v.type.np_dtype)
        else:
            feed[v.name] = rng.integers(0, 3, size=shape).astype(v.type.np_dtype)
    from convforge.backends import get_backend

    names = ("%", "@")
    executables = {}

    def build(backend):
        executables[backend] = get_backend(backend).compile_graph(graph)
        return 0

    agree("compile", build, names)
    agree("run", lambda b: executables[b].run(feed), names)
    return None


# -- weight files -----------------------------------------------------------------------------
_TMP = Path(tempfile.mkdtemp(prefix="convforge-fuzz-"))


@stages
def weights_file(data: bytes, suffix: str, model: str = "convnet"):
    """Load ``data`` as a weights file: a SerializationError naming the file (or an entry),
    or arrays that either load into the model (then it runs, every backend agreeing) or are
    refused naming the entry."""
    path = _TMP / f"w{suffix}"
    path.write_bytes(data)
    arrays = expect(lambda: cf.load(path), (str(path), "entry"))
    model_sd, optim_sd = cf.serialization.split_state(arrays)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)

    def run_with(backend):
        net = compiled_model(model, backend, "infer")
        saved = net.state_dict()
        try:
            net.load_state_dict(model_sd)
            return net(x)
        finally:
            net.load_state_dict(saved)

    agree("load and run", run_with, ("entry", "key", "state_dict"))
    step = compiled_model(model, "reference", "grad")
    if optim_sd:
        saved = step.optimizer_state_dict()
        try:
            expect(lambda: step.load_optimizer_state_dict(optim_sd), ("optimizer", "step", "entry", "key"))
        finally:
            step.load_optimizer_state_dict(saved)
    return None


def numba_settings():
    """The worker's Numba settings that change generated code (the boundscheck cell checks them)."""
    import numba

    return f"BOUNDSCHECK={numba.config.BOUNDSCHECK}"


CASES = {
    "numba_settings": numba_settings,
    "layer": layer,
    "functional": functional,
    "inputs": inputs,
    "optimizer": optimizer,
    "ir_text": ir_text,
    "weights_file": weights_file,
}
