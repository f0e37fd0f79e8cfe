"""``assert_backends_agree``: compile one model (or graph) on several backends and compare.

The first backend is the oracle. Outputs, the loss and every gradient are compared with
the tolerances of :mod:`convforge.testing.tolerances`; on a mismatch the graph is run
again on both backends with every intermediate value exposed, and the error names the
first IR node (in program order) whose values differ, with its max abs / rel error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import convforge as cf
from convforge.backends import get_backend, resolve
from convforge.errors import ConvforgeError
from convforge.frontend.compile import FRONT_PIPELINE, trace_model
from convforge.frontend.nn import Module
from convforge.ir.graph import Graph, Node, Value
from convforge.ir.ops import registry
from convforge.ir.printer import format_attrs, format_meta, format_value
from convforge.ir.types import BATCH, TensorType
from convforge.passes import PassManager
from convforge.passes.autodiff import Autodiff
from convforge.testing.tolerances import Tolerance, tolerance

__all__ = ["assert_backends_agree", "available_backends", "compare_arrays"]

_DTYPES = {"float32": "f32", "f32": "f32", "float64": "f64", "f64": "f64"}


def available_backends(candidates: Sequence[str] = ("reference", "numba-cpu", "numba-cuda")) -> list[str]:
    """The backends of ``candidates`` that this build and machine can run.

    ``numba-cuda`` counts only with a GPU or Numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1``).
    """
    found = []
    for name in candidates:
        try:
            get_backend(name)
        except (ConvforgeError, ImportError):
            continue
        if name == "numba-cuda" and not _cuda_usable():
            continue
        found.append(name)
    return found


def _cuda_usable() -> bool:
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure to load the driver means "not usable"
        return False


# =========================================================================================
# Comparing arrays
# =========================================================================================
@dataclass
class Mismatch:
    """Why two arrays disagree."""

    max_abs: float
    max_rel: float
    index: tuple[int, ...]
    got: Any
    expected: Any
    bound: str

    def describe(self, got_name: str, expected_name: str) -> str:
        where = f"[{', '.join(map(str, self.index))}]" if self.index else "the scalar"
        return (
            f"max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} ({self.bound}); "
            f"worst element {where}: {got_name} gave {self.got!r}, {expected_name} gave {self.expected!r}"
        )


def compare_arrays(got: Any, expected: Any, tol: Tolerance, context: float = 0.0) -> Mismatch | None:
    """``None`` when ``got`` agrees with ``expected`` within ``tol`` (see ``tolerances``), else why not.

    Shapes and dtypes must match; integer arrays must be equal; NaNs must sit in the
    same places.
    """
    got_arr, exp_arr = np.asarray(got), np.asarray(expected)
    if got_arr.shape != exp_arr.shape:
        return Mismatch(float("inf"), float("inf"), (), f"shape {list(got_arr.shape)}",
                        f"shape {list(exp_arr.shape)}", "shapes differ")  # fmt: skip
    if got_arr.size == 0:
        return None
    if exp_arr.dtype.kind not in "fc" or got_arr.dtype.kind not in "fc":
        diff = got_arr != exp_arr
        if not diff.any():
            return None
        index = tuple(int(i) for i in np.argwhere(diff)[0])
        return Mismatch(float("nan"), float("nan"), index, got_arr[index].item(), exp_arr[index].item(),
                        "integers must be equal")  # fmt: skip
    g = got_arr.astype(np.float64)
    e = exp_arr.astype(np.float64)
    same_special = (np.isnan(g) & np.isnan(e)) | (np.isinf(e) & (g == e))
    finite_e = np.abs(e[np.isfinite(e)])
    scale = float(finite_e.max()) if finite_e.size else 0.0
    scale = max(scale, tol.floor * context)
    err = np.where(same_special, 0.0, np.abs(g - e))
    err = np.where(np.isnan(err), np.inf, err)
    bound = tol.atol * scale + tol.rtol * np.abs(np.where(np.isfinite(e), e, 0.0))
    excess = err - bound
    if not (excess > 0).any():
        return None
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.abs(e) > 0, err / np.abs(e), np.where(err > 0, np.inf, 0.0))
    return Mismatch(
        float(err.max()),
        float(rel.max()),
        tuple(int(i) for i in index),
        got_arr[index].item(),
        exp_arr[index].item(),
        f"allowed {tol.atol:g} x scale {scale:.3g} + {tol.rtol:g} x |expected|",
    )


def _max_abs(arrays: Sequence[np.ndarray]) -> float:
    best = 0.0
    for a in arrays:
        a = np.asarray(a)
        if a.size and a.dtype.kind == "f":
            finite = np.abs(a[np.isfinite(a)])
            if finite.size:
                best = max(best, float(finite.max()))
    return best


# =========================================================================================
# What gets compared: results of a model or of a graph
# =========================================================================================
@dataclass
class _Result:
    label: str  # "output", "loss", "gradient of '0.weight'", ...
    value: np.ndarray
    group: str  # results of one group share a context scale
    program: str  # which program (key of _Case.programs) computes it


class _Case:
    """Runs one subject on a backend and knows the backend-independent graphs behind it."""

    dtype: str
    training: bool

    def results(self, backend: str) -> list[_Result]:
        raise NotImplementedError

    def program(self, key: str) -> tuple[Graph, dict[str, np.ndarray]]:
        """The graph (as every backend receives it) and its inputs, for locating a mismatch."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _ModelCase(_Case):
    """A model: ``cf.compile`` for outputs, ``cf.compile_train(...).gradients`` for gradients.

    The gradients are those of the batch-mean squared error against a random target.
    """

    def __init__(self, model: Module, input_shape: Sequence[int], dtype: str, training: bool, grads: bool,
                 seed: int) -> None:  # fmt: skip
        if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) for d in input_shape
        ):
            raise ConvforgeError(
                f"assert_backends_agree: input_shape must be a tuple of ints, got {input_shape!r}"
            )
        self.model, self.dtype, self.training, self.grads = model, dtype, training, grads
        self.input_shape = tuple(int(d) for d in input_shape)
        self.compile_shape = (None, *self.input_shape[1:])
        self.input_type = TensorType(dtype, (BATCH, *self.input_shape[1:]))
        rng = np.random.default_rng(seed)
        np_dtype = self.input_type.np_dtype
        self.x = rng.standard_normal(self.input_shape).astype(np_dtype)
        forward, _ = trace_model(model, self.input_type, training=training)
        PassManager.from_string(FRONT_PIPELINE).run(forward)
        self.forward = forward
        out_shape = forward.outputs[0].type.concrete(self.input_shape[0])
        self.target = rng.standard_normal(out_shape).astype(np_dtype)
        self.state = {k: np.ascontiguousarray(v, dtype=np_dtype if v.dtype.kind == "f" else v.dtype)
                      for k, v in model.state_dict().items()}  # fmt: skip
        self._joint: Graph | None = None

    def describe(self) -> str:
        return f"{type(self.model).__name__} on input {list(self.input_shape)}"

    def _train_step(self, backend: str) -> cf.TrainStep:
        step = cf.compile_train(self.model, self.compile_shape, loss="mse", backend=backend, dtype=self.dtype)
        return step.train(self.training)

    def results(self, backend: str) -> list[_Result]:
        if self.training:
            # cf.compile is inference only; the training forward is the traced graph itself
            graph, inputs = self.program("forward")
            executable = get_backend(backend).compile_graph(graph.copy(), training=True)
            out = executable.run(inputs)[0]
        else:
            net = cf.compile(self.model, self.compile_shape, backend=backend, dtype=self.dtype)
            out = net(self.x)
        results = [_Result("output", np.asarray(out), "output", "forward")]
        if self.grads:
            loss, grads = self._train_step(backend).gradients(self.x, self.target)
            results.append(_Result("loss", np.asarray(loss), "loss", "grad"))
            for name in sorted(grads):
                results.append(_Result(f"gradient of {name!r}", grads[name], "grads", "grad"))
        return results

    def program(self, key: str) -> tuple[Graph, dict[str, np.ndarray]]:
        if key == "forward":
            graph = self.forward
        else:
            if self._joint is None:
                self._joint = self._train_step("reference").graph_for("grad")
            graph = self._joint
        inputs: dict[str, np.ndarray] = {}
        for v in graph.inputs:
            if v.name == "x":
                inputs[v.name] = self.x
            elif v.name == "target":
                inputs[v.name] = self.target
            elif v.name == "step":
                inputs[v.name] = np.asarray(1, dtype=np.int64)  # gradients() of a fresh step uses step 1
            else:
                inputs[v.name] = self.state[v.name]
        return graph, inputs


class _GraphCase(_Case):
    """A graph: each backend's ``compile_graph`` on a copy; outputs compared one by one.

    With ``grads``, a graph that is not differentiated yet gets a loss (its scalar output
    0, else the mean squared error of output 0 against a random target) and the
    ``autodiff`` pass, so gradients of every float input are compared too.
    """

    def __init__(self, graph: Graph, input_shape: Sequence[int] | None,
                 inputs: Mapping[str, np.ndarray] | None, training: bool, grads: bool,
                 seed: int) -> None:  # fmt: skip
        self.training = training
        self.graph = graph.copy()
        self.grad_outputs: set[int] = set()
        rng = np.random.default_rng(seed)
        batch = int(input_shape[0]) if input_shape else 2
        given = dict(inputs or {})
        if grads and "grads" not in self.graph.meta:
            self._differentiate(rng, batch)
        elif "grads" in self.graph.meta:
            self.grad_outputs = set(self.graph.meta["grads"].values())
        self.inputs = {v.name: given[v.name] if v.name in given else _random_input(v, batch, rng)
                       for v in self.graph.inputs}  # fmt: skip
        floats = {v.dtype for v in self.graph.inputs if v.type.is_float}
        self.dtype = "f64" if floats == {"f64"} else "f32"

    def _differentiate(self, rng: np.random.Generator, batch: int) -> None:
        g = self.graph
        out = g.outputs[0]
        if out.type.shape == () and out.type.is_float:
            loss = out
            extra: list[Value] = []
        else:
            target = g.add_input(g.fresh_name("grad_probe_target"), out.type)
            g.meta["no_grad"] = sorted(set(g.meta.get("no_grad", ())) | {target.name})
            with g.meta_scope(layer="assert_backends_agree loss"):
                loss = g.call("mse_loss", out, target)
            extra = [loss]
        g.set_outputs(extra + g.outputs)
        before = len(g.outputs)
        Autodiff().run(g)
        self.grad_outputs = set(range(before, len(g.outputs)))

    def describe(self) -> str:
        return f"graph @{self.graph.name}"

    def results(self, backend: str) -> list[_Result]:
        executable = get_backend(backend).compile_graph(self.graph.copy(), training=self.training)
        outs = executable.run(self.inputs)
        grad_names = {i: name for name, i in self.graph.meta.get("grads", {}).items()}
        results = []
        for i, (v, arr) in enumerate(zip(self.graph.outputs, outs)):
            if i in self.grad_outputs:
                label = f"gradient of %{grad_names.get(i, v.name)}"
                group = "grads"
            else:
                label, group = f"output {i} (%{v.name})", f"output {i}"
            results.append(_Result(label, np.asarray(arr), group, "graph"))
        return results

    def program(self, key: str) -> tuple[Graph, dict[str, np.ndarray]]:
        return self.graph, self.inputs


def _random_input(v: Value, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible value for graph input ``v``: normals, positive where an op says so (a
    variance: its ``positive`` fact), valid class labels (its ``labels`` fact), step 1."""
    shape = v.type.concrete(batch)
    uses = [(user, registry.get(user.op), i) for user in v.users for i, u in enumerate(user.inputs) if u is v]
    if v.type.is_float:
        if any(i in op.positive for _, op, i in uses):
            return rng.uniform(0.5, 2.0, shape).astype(v.type.np_dtype)
        return rng.standard_normal(shape).astype(v.type.np_dtype)
    for user, op, i in uses:
        if i in op.labels:
            classes = user.inputs[op.labels[i]].type.shape[1]
            return rng.integers(0, classes, shape).astype(v.type.np_dtype)
    if v.type.shape == () and v.dtype == "i64":
        return np.asarray(1, dtype=np.int64)
    return np.zeros(shape, dtype=v.type.np_dtype)


# =========================================================================================
# Locating the first differing node
# =========================================================================================
def _all_values(
    graph: Graph, inputs: Mapping[str, np.ndarray], backend: str, training: bool
) -> dict[str, Any]:
    """Every node output of ``graph`` computed by ``backend``, by value name."""
    if backend == "reference":
        from convforge.backends.reference import run_graph

        trace: dict[str, Any] = {}
        run_graph(graph, inputs, trace=trace)
        return trace
    clone = graph.copy()
    clone.meta.pop("grads", None)  # output positions change below
    values = [v for node in clone.nodes for v in node.outputs]
    clone.set_outputs(values)
    outs = get_backend(backend).compile_graph(clone, training=training).run(dict(inputs))
    return {v.name: arr for v, arr in zip(values, outs)}


def _node_text(node: Node) -> str:
    outs = ", ".join(f"{format_value(v)}: {v.type}" for v in node.outputs)
    args = ", ".join(format_value(v) for v in node.inputs)
    return f"{outs} = {node.op}({args}){format_attrs(node.attrs)}{format_meta(node.meta)}"


def _locate(case: _Case, key: str, expected_backend: str, backend: str, tol: Tolerance) -> str:
    graph, inputs = case.program(key)
    try:
        expected = _all_values(graph, inputs, expected_backend, case.training)
        got = _all_values(graph, inputs, backend, case.training)
    except ConvforgeError as exc:
        return f"could not run the graph node by node to locate the difference: {exc}"
    context = _max_abs(list(expected.values()))
    for node in graph.nodes:
        for v in node.outputs:
            if v.name not in expected or v.name not in got:
                continue
            mismatch = compare_arrays(got[v.name], expected[v.name], tol, context)
            if mismatch is not None:
                where = node.describe()
                if "loc" in node.meta:
                    where += f" at {node.meta['loc']}"
                return (
                    f"first IR node whose values differ: {where}\n"
                    f"    {_node_text(node)}\n"
                    f"    output %{v.name}: {mismatch.describe(backend, expected_backend)}\n"
                    f"    (every value before it agrees)"
                )
    return (
        "no single IR node differs when every intermediate value is a graph output, so the "
        f"difference comes from how {backend} compiles the whole program (fusion, buffer reuse); "
        f"compare the graphs each backend runs after its passes"
    )


# =========================================================================================
# The assertion
# =========================================================================================
def assert_backends_agree(
    model_or_graph: Module | Graph,
    input_shape: Sequence[int] | None = None,
    backends: Sequence[str] = ("reference", "numba-cpu"),
    grads: bool = True,
    training: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    *,
    dtype: str = "float32",
    inputs: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Assert that every backend computes what the first one does.

    A model is compiled with ``cf.compile`` (outputs; in ``training`` mode the traced
    training forward is compiled directly) and ``cf.compile_train(..., loss="mse")``
    (the loss and the gradients of every parameter and of the input, through
    ``step.gradients`` after ``.train()`` / ``.eval()``). The input and the regression
    target are drawn from ``seed``; dropout draws the same mask on every backend.

    A graph is compiled with each backend's ``compile_graph`` and its outputs compared;
    ``input_shape[0]`` (default 2) is the batch size, ``inputs`` overrides any generated
    input. With ``grads`` an undifferentiated graph gets a loss and the autodiff pass.

    ``rtol`` / ``atol`` override the table in :mod:`convforge.testing.tolerances`. On a
    mismatch the ``AssertionError`` names the quantity, the max abs / rel error, and the
    first IR node whose values differ.
    """
    backends = [resolve(b) for b in backends]  # "cpu" is "numba-cpu" here too
    if not backends:
        raise ValueError("assert_backends_agree needs at least one backend")
    if isinstance(model_or_graph, Graph):
        case: _Case = _GraphCase(model_or_graph, input_shape, inputs, training, grads, seed)
    elif isinstance(model_or_graph, Module):
        if dtype not in _DTYPES:
            raise ConvforgeError(
                f"assert_backends_agree: dtype must be 'float32' or 'float64', got {dtype!r}"
            )
        if input_shape is None:
            raise ConvforgeError("assert_backends_agree: a model needs input_shape, e.g. (2, 1, 28, 28)")
        case = _ModelCase(model_or_graph, input_shape, _DTYPES[dtype], training, grads, seed)
    else:
        raise ConvforgeError(
            "assert_backends_agree expects a convforge.nn.Module or an IR Graph, "
            f"got {type(model_or_graph).__name__}"
        )
    oracle = backends[0]
    expected = case.results(oracle)
    context: dict[str, float] = {}
    for r in expected:
        context[r.group] = max(context.get(r.group, 0.0), _max_abs([r.value]))
    for backend in backends[1:]:
        tol = tolerance(case.dtype, oracle, backend)
        tol = Tolerance(tol.rtol if rtol is None else rtol, tol.atol if atol is None else atol, tol.floor)
        got = case.results(backend)
        if [r.label for r in got] != [r.label for r in expected]:
            raise AssertionError(
                f"{case.describe()}: {backend} returned {[r.label for r in got]}, "
                f"{oracle} returned {[r.label for r in expected]}"
            )
        for want, have in zip(expected, got):
            mismatch = compare_arrays(have.value, want.value, tol, context[want.group])
            if mismatch is None:
                continue
            mode = "training" if case.training else "eval"
            header = (
                f"{case.describe()} ({case.dtype}, {mode} mode): {backend} disagrees with {oracle} "
                f"on the {want.label}: {mismatch.describe(backend, oracle)}"
            )
            raise AssertionError(header + "\n" + _locate(case, want.program, oracle, backend, tol))
