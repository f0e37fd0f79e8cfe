"""``cf.compile`` and ``cf.compile_train``: trace a model, run the passes, hand the graph
to a backend, and wrap the result in an object that checks every input first.

Inputs are cast to the compiled dtype (float32 unless ``dtype="float64"``); a float64
array given to a float32 model is therefore computed in float32.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convforge.backends import get_backend, resolve
from convforge.backends.base import Executable, HostState, check_labels
from convforge.errors import ConvforgeError, DTypeError, ShapeError
from convforge.frontend.nn import Module, check_state_dict
from convforge.frontend.optim import SGD, Optimizer
from convforge.frontend.trace import SymbolicTensor, Tracer, tracing
from convforge.ir.graph import Graph
from convforge.ir.types import BATCH, TensorType
from convforge.passes import PassManager
from convforge.passes.training import LOSSES as _LOSS_OPS
from convforge.passes.training import Role, UpdateRule, build_training_graph, state_key

#: passes every graph gets before the backend's own pipeline
FRONT_PIPELINE = "canonicalize,cse,dce"
LOSSES = tuple(_LOSS_OPS)
_DTYPES = {"float32": "f32", "f32": "f32", "float64": "f64", "f64": "f64"}


# =========================================================================================
# Public entry points
# =========================================================================================
def compile(
    model: Module, input_shape: Sequence[int | None], backend: str | None = None, dtype: str = "float32"
) -> CompiledModel:
    """Compile ``model`` for inference; ``None`` as the first dim accepts any batch size.

    >>> net = cf.compile(model, input_shape=(None, 1, 28, 28), backend="reference")
    >>> logits = net(x)
    """
    _check_model(model)
    ir_dtype = _ir_dtype(dtype)
    store = ParamStore.from_model(model, ir_dtype)
    return CompiledModel(model, input_shape, store, resolve(backend), ir_dtype)


def compile_train(
    model: Module,
    input_shape: Sequence[int | None],
    loss: str = "cross_entropy",
    optimizer: Optimizer | None = None,
    backend: str | None = None,
    dtype: str = "float32",
) -> TrainStep:
    """Compile forward + backward + optimizer update into one training-step program.

    >>> step = cf.compile_train(model, (None, 1, 28, 28), loss="cross_entropy",
    ...                         optimizer=optim.SGD(lr=0.01, momentum=0.9))
    >>> loss = step(x, y)
    """
    _check_model(model)
    if loss not in LOSSES:
        raise ConvforgeError(f"compile_train: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    optimizer = optimizer if optimizer is not None else SGD()
    if not isinstance(optimizer, Optimizer):
        raise ConvforgeError(f"compile_train: optimizer must be optim.SGD or optim.Adam, got {optimizer!r}")
    ir_dtype = _ir_dtype(dtype)
    return TrainStep(model, input_shape, loss, optimizer, resolve(backend), ir_dtype)


# =========================================================================================
# Parameter storage shared by compiled programs
# =========================================================================================
class ParamStore(HostState):
    """Named arrays (parameters, buffers, optimizer state) that compiled programs read.

    Programs update arrays in place, so a training step and the inference model it
    hands out see the same weights. A device-resident backend may hold newer values
    between steps: ``sync()`` (inherited from :class:`HostState`) brings them back, and
    every read here syncs first.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], trainable: Sequence[str]):
        super().__init__(arrays)
        self.trainable = list(trainable)

    @classmethod
    def from_model(cls, model: Module, dtype: str) -> ParamStore:
        np_dtype = TensorType(dtype, ()).np_dtype
        arrays = OrderedDict()
        for key, arr in model.state_dict().items():
            arrays[key] = np.array(arr, dtype=np_dtype if arr.dtype.kind == "f" else arr.dtype, order="C")
        return cls(arrays, [k for k, _ in model.named_parameters()])

    def state_dict(self, keys: Sequence[str] | None = None) -> OrderedDict[str, np.ndarray]:
        self.sync()
        keys = list(self.arrays) if keys is None else keys
        return OrderedDict((k, self.arrays[k].copy()) for k in keys)

    def load(self, state_dict: Mapping[str, Any], keys: Sequence[str], owner: str) -> None:
        self.sync()
        targets = {k: self.arrays[k] for k in keys}
        for key, arr in check_state_dict(targets, state_dict, owner).items():
            np.copyto(self.arrays[key], arr, casting="unsafe")
        self.changed()


# =========================================================================================
# Inference
# =========================================================================================
class CompiledModel:
    """A model compiled for inference: ``net(x)``, ``net.graph``, ``net.source()``."""

    def __init__(
        self, model: Module, input_shape: Sequence[int | None], store: ParamStore, backend: str, dtype: str
    ) -> None:
        self.backend = backend
        self.dtype = dtype
        self.name = type(model).__name__
        self._store = store
        self._model_keys = list(model.state_dict())
        self.input_type = _input_type(input_shape, dtype, self.name)
        graph, _ = trace_model(model, self.input_type, training=False)
        PassManager.from_string(FRONT_PIPELINE).run(graph)
        self._executable = get_backend(backend).compile_graph(graph, training=False)
        self._graph = self._executable.graph

    @property
    def graph(self) -> Graph:
        """The IR after all passes."""
        return self._graph

    def source(self) -> str:
        """The generated code (for ``reference``, the interpreted graph)."""
        return self._executable.source()

    def __call__(self, x: Any) -> np.ndarray:
        arr = check_input(x, self.input_type, self.name)
        self._store.sync()
        inputs = {v.name: self._store.arrays[v.name] for v in self._graph.inputs if v.name != "x"}
        inputs["x"] = arr
        return self._executable.run(inputs)[0]

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        return self._store.state_dict(self._model_keys)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._store.load(state_dict, self._model_keys, self.name)

    def __repr__(self) -> str:
        return f"<CompiledModel {self.name} {self.input_type} on {self.backend}>"


# =========================================================================================
# Training
# =========================================================================================
class _Program:
    """A compiled training graph and what each of its outputs means."""

    def __init__(self, executable: Executable, roles: list[Role]):
        self.executable = executable
        self.graph = executable.graph
        self.roles = roles  # per output: ("loss", ""), ("grad", name), ("store", key)
        #: output index -> the stored array it replaces
        self.feedback = {j: name for j, (kind, name) in enumerate(roles) if kind == "store"}

    @property
    def in_place(self) -> dict[int, str]:
        """Outputs the backend writes straight into the store array they replace."""
        return self.executable.in_place_outputs(self.feedback)


class TrainingGraph:
    """``step.graph``: the joint IR of the training step, used as the :class:`Graph` it
    stands for (attributes, ``str``, equality).

    ``step.graph()`` and ``step.graph("grad")`` (``graph`` was a method) still work, with
    a DeprecationWarning; use ``step.graph`` and ``step.graph_for("grad")``.
    """

    __slots__ = ("_graph", "_step")

    def __init__(self, graph: Graph, step: TrainStep):
        self._graph = graph
        self._step = step

    def __call__(self, kind: str = "train") -> Graph:
        warnings.warn(
            "TrainStep.graph is a property now: use step.graph for the training graph and "
            'step.graph_for(kind) for another program (step.graph_for("grad"))',
            DeprecationWarning,
            stacklevel=2,
        )
        return self._step.graph_for(kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._graph)) | {"__call__"})

    def __str__(self) -> str:
        return str(self._graph)

    def __repr__(self) -> str:
        return repr(self._graph)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TrainingGraph):
            other = other._graph
        return self._graph == other

    def __hash__(self) -> int:
        return hash(self._graph)


class TrainStep:
    """A compiled training step: ``step(x, y)`` runs forward, backward and the update."""

    def __init__(
        self,
        model: Module,
        input_shape: Sequence[int | None],
        loss: str,
        optimizer: Optimizer,
        backend: str,
        dtype: str,
    ) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.backend = backend
        self.dtype = dtype
        self.name = type(model).__name__
        self.input_type = _input_type(input_shape, dtype, self.name)
        self._store = ParamStore.from_model(model, dtype)
        self._model_keys = list(self._store.arrays)
        for key in self._store.trainable:
            for state in optimizer.state:
                self._store.arrays[state_key(key, state)] = np.zeros_like(self._store.arrays[key])
        self.steps = 0
        self.training = True
        self._programs: dict[tuple[str, bool], _Program] = {}
        self._output_type = _probe_output(model, self.input_type)

    # -- modes --------------------------------------------------------------------------
    def train(self, mode: bool = True) -> TrainStep:
        self.training = bool(mode)
        return self

    def eval(self) -> TrainStep:
        return self.train(False)

    @property
    def lr(self) -> float:
        return float(self.optimizer.lr)

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (a learning-rate schedule); the update program is rebuilt
        on the next step, and kernels do not depend on the rate, so nothing recompiles."""
        if float(lr) == self.lr:
            return
        self._store.sync()
        self.optimizer = dataclasses.replace(self.optimizer, lr=float(lr))
        self._programs = {key: prog for key, prog in self._programs.items() if key[0] != "train"}

    # -- running ------------------------------------------------------------------------
    def __call__(self, x: Any, y: Any) -> float:
        """One optimisation step on the batch; returns the batch-mean loss."""
        program = self._program("train")
        # the executable keeps the store up to date: on the host in place, on a
        # device-resident backend in its device buffers until the store is read
        batch = self._batch(program, x, y, self.steps + 1)
        (loss,) = program.executable.step(batch, self._store, program.feedback)
        self.steps += 1
        if self.training:
            for key, arr in self._store.arrays.items():
                if key.endswith("num_batches_tracked"):
                    arr += 1
        return float(loss)

    def warmup(self, x: Any, y: Any) -> None:
        """Compile (and run once) the training program, then restore every weight and buffer."""
        self._store.sync()
        saved = {k: v.copy() for k, v in self._store.arrays.items()}
        steps = self.steps
        self(x, y)
        self._store.sync()
        for key, value in saved.items():
            np.copyto(self._store.arrays[key], value)
        self._store.changed()
        self.steps = steps

    def gradients(self, x: Any, y: Any) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients (by parameter name, plus ``"input"``) without any update."""
        program = self._program("grad")
        self._store.sync()
        inputs = program.executable.with_state(self._batch(program, x, y, self.steps + 1), self._store)
        outputs = program.executable.run(inputs)
        grads = {}
        for (role, key), value in zip(program.roles, outputs):
            if role == "grad":
                grads["input" if key == "x" else key] = value
        return float(outputs[0]), grads

    def inference(self) -> CompiledModel:
        """A compiled inference model that shares this step's (trained) weights."""
        net = CompiledModel.__new__(CompiledModel)
        net.backend, net.dtype, net.name = self.backend, self.dtype, self.name
        net._store = self._store
        net._model_keys = self._model_keys
        net.input_type = self.input_type
        graph, _ = trace_model(self.model, self.input_type, training=False)
        PassManager.from_string(FRONT_PIPELINE).run(graph)
        net._executable = get_backend(self.backend).compile_graph(graph, training=False)
        net._graph = net._executable.graph
        return net

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """The model's parameters and buffers, keyed as PyTorch keys them."""
        return self._store.state_dict(self._model_keys)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._store.load(state_dict, self._model_keys, self.name)

    def optimizer_state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Optimizer buffers keyed ``<param>.<buffer>`` plus ``step``."""
        keys = [k for k in self._store.arrays if k not in self._model_keys]
        out = OrderedDict((k[len("optim.") :], v) for k, v in self._store.state_dict(keys).items())
        out["step"] = np.asarray(self.steps, dtype=np.int64)
        return out

    def load_optimizer_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        if "step" not in state:
            raise ConvforgeError(f"{self.name}: optimizer state is missing key 'step'")
        step = np.asarray(state.pop("step"))
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ConvforgeError(
                f"{self.name}: optimizer state 'step' must be a non-negative int, got {step!r}"
            )
        keys = [k for k in self._store.arrays if k not in self._model_keys]
        self._store.load({f"optim.{k}": v for k, v in state.items()}, keys, f"{self.name} optimizer")
        self.steps = int(step)

    def load(self, path: str) -> None:
        """Load weights (and optimizer state, if the file has it) saved by ``cf.save``."""
        from convforge.serialization import load, split_state

        model_sd, optim_sd = split_state(load(path))
        self.load_state_dict(model_sd)
        if optim_sd:
            self.load_optimizer_state_dict(optim_sd)

    @property
    def graph(self) -> TrainingGraph:
        """The joint IR of the training step (forward, backward, update) after all passes.

        Used as the :class:`Graph` it stands for; ``step.graph_for("train")`` is that Graph.
        """
        return TrainingGraph(self.graph_for("train"), self)

    def graph_for(self, kind: str = "train") -> Graph:
        """The joint IR of the training step (``"train"``) or of ``gradients`` (``"grad"``)."""
        return self._program(kind).graph

    def source(self, kind: str = "train") -> str:
        return self._program(kind).executable.source()

    # -- compiling ----------------------------------------------------------------------
    def _program(self, kind: str) -> _Program:
        key = (kind, self.training)
        if key not in self._programs:
            self._programs[key] = self._build(kind)
        return self._programs[key]

    def _build(self, kind: str) -> _Program:
        graph, tracer = trace_model(self.model, self.input_type, training=self.training)
        params = [v.name for v in graph.inputs if v.name in self._store.trainable]
        if kind == "grad":
            graph, roles = build_training_graph(
                graph, loss=self.loss, params=params, grads_of=["x"], simplify=FRONT_PIPELINE
            )
        else:
            rule = UpdateRule(self.optimizer.op, self.optimizer.attrs(), tuple(self.optimizer.state))
            graph, roles = build_training_graph(
                graph,
                loss=self.loss,
                params=params,
                optimizer=rule,
                state_updates=tracer.state_updates,
                simplify=FRONT_PIPELINE,
            )
        return _Program(get_backend(self.backend).compile_graph(graph, training=True), roles)

    def _batch(self, program: _Program, x: Any, y: Any, step: int) -> dict[str, np.ndarray]:
        """The inputs of ``program`` that change per batch, checked: ``x``, ``target`` and
        the ``step`` counter (the rest come from the store)."""
        arr = check_input(x, self.input_type, self.name)
        batch = {
            "x": arr,
            "target": self._check_target(y, arr.shape[0]),
            "step": np.asarray(step, dtype=np.int64),
        }
        return {v.name: batch[v.name] for v in program.graph.inputs if v.name in batch}

    def _check_target(self, y: Any, batch: int) -> np.ndarray:
        if self.loss == "cross_entropy":
            arr = _as_numeric(y, f"{self.name}: target y")
            if arr.dtype.kind not in "iu":
                raise DTypeError(
                    f"{self.name}: target y must hold integer class labels, got dtype {arr.dtype}"
                )
            if arr.shape != (batch,):
                raise ShapeError(
                    f"{self.name}: target y must have shape [{batch}] (one label per image), "
                    f"got {list(arr.shape)}"
                )
            arr = arr.astype(np.int64)
            check_labels("target", arr, int(self._output_type.shape[1]))
            return np.ascontiguousarray(arr)
        want = TensorType(self.dtype, (BATCH,) + tuple(self._output_type.shape[1:]))
        return check_input(y, want, f"{self.name} target")

    def __repr__(self) -> str:
        return f"<TrainStep {self.name} {self.input_type} loss={self.loss} on {self.backend}>"


# =========================================================================================
# Tracing
# =========================================================================================
def trace_model(model: Module, input_type: TensorType, *, training: bool) -> tuple[Graph, Tracer]:
    """Run ``model.forward`` on a symbolic input; returns the graph and the tracer."""
    graph = Graph(_graph_name(model))
    names = {id(arr): key for key, arr in model._state_targets()}
    tracer = Tracer(graph, names, training, input_type.dtype)
    tracer.module_paths = {id(m): path for path, m in model.named_modules()}
    x = graph.add_input("x", input_type)
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        with tracing(tracer):
            out = model(tracer.wrap(x))
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    if not isinstance(out, SymbolicTensor):
        raise ConvforgeError(
            f"{type(model).__name__}.forward must return one tensor computed from its input, "
            f"got {type(out).__name__}"
        )
    graph.set_outputs([out.value])
    non_trainable = {k for k, _ in model.named_buffers()}
    graph.meta["no_grad"] = sorted(non_trainable | {"target", "step"})
    return graph, tracer


def _probe_output(model: Module, input_type: TensorType) -> TensorType:
    graph, _ = trace_model(model, input_type, training=False)
    return graph.outputs[0].type


def _graph_name(model: Module) -> str:
    name = type(model).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name).lower() or "model"


# =========================================================================================
# Input checks
# =========================================================================================
def check_input(x: Any, expected: TensorType, owner: str) -> np.ndarray:
    """``x`` as a contiguous array of ``expected`` (batch free), or a clear error."""
    arr = _as_numeric(x, f"{owner}: input x")
    if arr.ndim != expected.rank:
        raise ShapeError(
            f"{owner}: expected input of shape {_fmt_shape(expected)} (rank {expected.rank}), "
            f"got shape {list(arr.shape)} (rank {arr.ndim})"
        )
    for want, got in zip(expected.shape, arr.shape):
        if (want == BATCH and got < 1) or (want != BATCH and want != got):
            raise ShapeError(
                f"{owner}: expected input of shape {_fmt_shape(expected)}, got {list(arr.shape)}"
            )
    return np.ascontiguousarray(arr, dtype=expected.np_dtype)


def _as_numeric(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot convert is a user mistake
        raise DTypeError(f"{what} must be a numeric array, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _fmt_shape(t: TensorType) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _input_type(input_shape: Sequence[int | None], dtype: str, owner: str) -> TensorType:
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise ShapeError(
            f"{owner}: input_shape must be a non-empty tuple like (None, 1, 28, 28), got {input_shape!r}"
        )
    dims: list = []
    for i, d in enumerate(input_shape):
        if d is None and i == 0:
            dims.append(BATCH)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0:
            dims.append(int(d))
        else:
            raise ShapeError(
                f"{owner}: input_shape entries must be positive ints (None only for the batch), "
                f"got {input_shape!r}"
            )
    return TensorType(dtype, tuple(dims))


def _ir_dtype(dtype: str) -> str:
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[key]


def _check_model(model: Any) -> None:
    if not isinstance(model, Module):
        raise ConvforgeError(f"expected a convforge.nn.Module, got {type(model).__name__}")
