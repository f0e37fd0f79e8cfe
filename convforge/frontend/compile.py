"""``cf.compile`` and ``cf.compile_train``: trace a model, run the passes, hand the graph
to a backend, and wrap the result in an object that checks every input first.

Inputs are cast to the compiled dtype (float32 unless ``dtype="float64"``); a float64
array given to a float32 model is therefore computed in float32.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convforge.backends import get_backend, resolve
from convforge.backends.base import Executable, HostState, check_labels, tiered_default
from convforge.errors import ConvforgeError, DTypeError, ShapeError
from convforge.frontend.functional import as_numeric as _as_numeric
from convforge.frontend.functional import refuse_integers
from convforge.frontend.losses import LOSS_NAMES, trace_loss, training_loss
from convforge.frontend.nn import Module, check_state_dict
from convforge.frontend.optim import SGD, Optimizer
from convforge.frontend.trace import SymbolicTensor, Tracer, tracing
from convforge.ir.graph import Graph
from convforge.ir.ops.common import number
from convforge.ir.types import BATCH, TensorType
from convforge.passes import PassManager
from convforge.passes.data_parallel import DataParallel
from convforge.passes.training import Role, UpdateRule, build_training_graph, state_key

#: passes every graph gets before the backend's own pipeline
FRONT_PIPELINE = "canonicalize,cse,dce"
LOSSES = tuple(LOSS_NAMES)
_DTYPES = {"float32": "f32", "f32": "f32", "float64": "f64", "f64": "f64"}


# =========================================================================================
# Public entry points
# =========================================================================================
def compile(
    model: Module,
    input_shape: Sequence[int | None],
    backend: str | None = None,
    dtype: str = "float32",
    eager: bool = False,
    progress: bool | None = None,
    tiered: bool | None = None,
    tune: bool = False,
) -> CompiledModel:
    """Compile ``model`` for inference; ``None`` as the first dim accepts any batch size.

    Numba kernels compile on the first call (or load from the kernel cache); ``eager=True``
    does it before returning. ``progress`` shows that compile on stderr (default: when
    stderr is a terminal or ``$CONVFORGE_PROGRESS=1``; nothing when all kernels load).
    The kernels a first call needs compile on worker processes; with ``tiered`` (default
    ``$CONVFORGE_TIERED``, on) the calls run on the reference interpreter meanwhile, then
    switch to the kernels (numba-cpu; ``docs/design.md``, "Tiered execution"). ``tune=True``
    picks each layer's algorithm by timing the candidates once at its geometry (recorded in
    the tuning log, per CPU and thread count) instead of by the cost model.

    >>> net = cf.compile(model, input_shape=(None, 1, 28, 28), backend="reference")
    >>> logits = net(x)
    """
    _check_model(model)
    ir_dtype = _ir_dtype(dtype)
    store = ParamStore.from_model(model, ir_dtype)
    net = CompiledModel(model, input_shape, store, resolve(backend), ir_dtype, tune=tune)
    net._executable.progress = progress
    net._executable.tiered = tiered_default(tiered)
    if eager:
        net._executable.prepare()
    return net


def compile_train(
    model: Module,
    input_shape: Sequence[int | None],
    loss: Any = "cross_entropy",
    optimizer: Optimizer | None = None,
    backend: str | None = None,
    dtype: str = "float32",
    eager: bool = False,
    progress: bool | None = None,
    distributed: Any = None,
    clip_grad_norm: float | None = None,
    tiered: bool | None = None,
    tune: bool = False,
) -> TrainStep:
    """Compile forward + backward + optimizer update into one training-step program.

    ``loss`` is a name (``"cross_entropy"``, ``"mse"``, ``"l1"``, ``"smooth_l1"``,
    ``"huber"``, ``"nll"``, ``"bce_with_logits"``: the loss module with torch's defaults), a
    loss module (``nn.CrossEntropyLoss(label_smoothing=0.1)``; its weights are graph inputs),
    or a callable ``(output, target) -> scalar`` written with ``F`` ops and tensor
    arithmetic, traced after ``forward``. A cross-entropy loss or a callable builds its
    program for the target it is given: integer class labels (the default before any
    target is seen) or a float tensor of the output's shape (class probabilities), one
    program per kind. ``reduction="none"`` is refused: a step needs a scalar.

    ``optimizer`` is any ``optim`` optimizer (default ``optim.SGD()``), built on
    ``model.parameters()``, param groups, or nothing (every trainable parameter);
    ``optim.lr_scheduler`` schedules take it (or the returned step). ``clip_grad_norm=m``
    scales all gradients by ``min(1, m / (total_norm + 1e-6))`` inside the step before the
    update, as ``torch.nn.utils.clip_grad_norm_(model.parameters(), m)`` between
    ``backward()`` and ``opt.step()``.

    ``distributed=cf.distributed.MPI()`` (under ``mpiexec``) makes it data-parallel: rank 0's
    weights are broadcast now, the ``data-parallel`` pass averages the gradients over the
    ranks with bucketed ``all_reduce`` nodes, and the returned loss is the mean over ranks
    (``docs/distributed.md``).

    ``eager=True`` compiles the training program's kernels before returning (with
    stand-in data; no weight changes), instead of on the first step; ``progress`` as
    for :func:`compile`. ``tiered`` (default ``$CONVFORGE_TIERED``, on): on an empty kernel
    cache the first steps run on the reference interpreter while the kernels compile on
    worker processes; at the switch those steps are replayed on the kernels, so the weights
    are what the kernels alone would have made (``docs/design.md``, "Tiered execution").
    ``tune`` as for :func:`compile`.

    >>> step = cf.compile_train(model, (None, 1, 28, 28), loss="cross_entropy",
    ...                         optimizer=optim.SGD(lr=0.01, momentum=0.9))
    >>> loss = step(x, y)
    """
    _check_model(model)
    training_loss(loss)
    optimizer = optimizer if optimizer is not None else SGD()
    if not isinstance(optimizer, Optimizer):
        raise ConvforgeError(
            "compile_train: optimizer must be an optim optimizer (SGD, Adam, AdamW, RMSprop, "
            f"Adagrad), got {optimizer!r}"
        )
    if clip_grad_norm is not None:
        clip_grad_norm = number("clip_grad_norm", clip_grad_norm, low=0.0, where="compile_train")
    ir_dtype = _ir_dtype(dtype)
    step = TrainStep(
        model, input_shape, loss, optimizer, resolve(backend), ir_dtype, clip_grad_norm=clip_grad_norm
    )
    step.progress = progress
    step.tiered = tiered_default(tiered)
    step.tune = bool(tune)
    if distributed is not None:
        step.distribute(distributed)
    if eager:
        step._program("train").executable.prepare()
    return step


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
        self,
        model: Module,
        input_shape: Sequence[int | None],
        store: ParamStore,
        backend: str,
        dtype: str,
        tune: bool = False,
    ) -> None:
        self.backend = backend
        self.dtype = dtype
        self.name = type(model).__name__
        self._store = store
        self._model_keys = list(model.state_dict())
        self.input_type = _input_type(input_shape, dtype, self.name)
        graph, _ = trace_model(model, self.input_type, training=False)
        PassManager.from_string(FRONT_PIPELINE).run(graph)
        graph.meta["tune"] = bool(tune)
        self._executable = get_backend(backend).compile_graph(graph, training=False)
        self._graph = self._executable.graph

    @property
    def graph(self) -> Graph:
        """The IR after all passes."""
        return self._graph

    def source(self) -> str:
        """The generated code (for ``reference``, the interpreted graph)."""
        return self._executable.source()

    @property
    def compiling(self) -> bool:
        """Whether calls still run on the fast tier while the kernels compile (``tiered``)."""
        return not self._executable.ready()

    def __call__(self, x: Any) -> np.ndarray:
        arr, unbatched = batched_input(x, self.input_type, self.name)
        self._store.sync()
        inputs = {v.name: self._store.arrays[v.name] for v in self._graph.inputs if v.name != "x"}
        inputs["x"] = arr
        out = self._executable.run(inputs)[0]
        return out[0] if unbatched else out

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

    #: compile progress of its programs (see :func:`compile`)
    progress: bool | None = None
    #: whether the training program runs on the fast tier while its kernels compile
    tiered: bool = False
    #: whether layers pick their algorithm by measurement (``compile(..., tune=True)``)
    tune: bool = False
    #: the data-parallel configuration and communicator (:meth:`distribute`), or None
    distributed: Any = None
    communicator: Any = None
    #: whether this process's first distributed step compared the batch shapes of the ranks
    _batch_checked: bool = False

    def __init__(
        self,
        model: Module,
        input_shape: Sequence[int | None],
        loss: str,
        optimizer: Optimizer,
        backend: str,
        dtype: str,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.loss = loss
        self._loss = training_loss(loss, type(model).__name__)
        #: whether the programs built now take class labels (else a float target)
        self._target_labels = self._loss.target_is_labels(None, 0)
        #: the user's optimizer object: its ``param_groups`` (a schedule's rates) are read
        #: before every step
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.backend = backend
        self.dtype = dtype
        self.name = type(model).__name__
        self.input_type = _input_type(input_shape, dtype, self.name)
        self._store = ParamStore.from_model(model, dtype)
        self._model_keys = list(self._store.arrays)
        #: parameter name -> its param group (the parameters the optimizer updates)
        self._groups = optimizer.assign(list(model.named_parameters()), self.name)
        self._update_attrs: list[dict[str, Any]] | None = None  # the train programs' groups
        self._raw_groups: str | None = None  # repr of the param groups' options last checked
        for key in self._groups:
            for state in optimizer.state:
                arr = self._store.arrays[key]
                self._store.arrays[state_key(key, state)] = np.full_like(arr, optimizer.initial_state(state))
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
        """The learning rate of the optimizer's first param group (``get_lr()``: all of them)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def get_lr(self) -> list[float]:
        """The learning rate of each param group."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def set_lr(self, lr: float | Sequence[float]) -> None:
        """Change the learning rate of every param group (one number) or of each (one per
        group), as a schedule does; the update program is rebuilt on the next step, and
        kernels take the rate as an argument, so nothing recompiles."""
        self.optimizer.set_lr(lr)

    # -- running ------------------------------------------------------------------------
    def distribute(self, config: Any) -> None:
        """Train data-parallel with ``config`` (``cf.distributed.MPI()``): check every rank
        builds the same model, then take rank 0's weights and buffers."""
        comm = config.communicator()
        shapes = ", ".join(f"{k}: {a.dtype}{list(a.shape)}" for k, a in self._store.arrays.items())
        with comm.guard(f"{self.name}: compile_train"):
            comm.check_same("model", f"{self.name} {self.input_type} loss={self.loss} ({shapes})")
        self._store.sync()
        comm.broadcast(self._store.arrays)
        self._store.changed()
        self.distributed, self.communicator = config, comm
        self._programs.clear()

    def __call__(self, x: Any, y: Any) -> float:
        """One optimisation step on the batch; returns the batch-mean loss (the mean over
        ranks when distributed: a rank that fails here ends every rank, naming itself)."""
        if self.communicator is None:
            return self._step(x, y)
        with self.communicator.guard(f"{self.name} step {self.steps + 1}"):
            if not self._batch_checked:  # the first step of this process (a resumed run too)
                self.communicator.check_batch(tuple(np.shape(x)))
                self._batch_checked = True
            self.broadcast_buffers()
            return self._step(x, y)

    def broadcast_buffers(self) -> None:
        """Give every rank rank 0's floating buffers (batch-norm running statistics), as
        DDP's ``broadcast_buffers=True`` does before each forward; nothing when not
        distributed or the model has none. Ranks' own updates would otherwise drift apart,
        and an eval-mode step or an evaluation on each rank's shard would see different
        statistics on each rank."""
        if self.communicator is None:
            return
        store = self._store
        keys = [k for k in self._model_keys if k not in store.trainable and store.arrays[k].dtype.kind == "f"]
        if not keys:
            return
        self._store.sync()
        self.communicator.broadcast({k: self._store.arrays[k] for k in keys})
        self._store.changed()

    def _step(self, x: Any, y: Any) -> float:
        self._target_labels = self._loss.target_is_labels(y, self._output_type.rank)
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

    @property
    def compiling(self) -> bool:
        """Whether a program of this step still runs on the fast tier while its kernels
        compile (``tiered``); steps then are slower, not different."""
        return any(not program.executable.ready() for program in self._programs.values())

    def warmup(self, x: Any, y: Any) -> None:
        """Compile (and run once) the training program, then restore every weight and buffer."""
        executable = self._program("train").executable
        executable.wait_ready()
        tiered, executable.tiered = executable.tiered, False
        try:
            self._warmup(x, y)
        finally:
            executable.tiered = tiered

    def _warmup(self, x: Any, y: Any) -> None:
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
        """Loss and gradients (by parameter name, plus ``"input"``) without any update.

        Distributed, the loss and the parameter gradients are the means over the ranks (what
        a DDP rank's ``.grad`` holds after ``backward()``); ``"input"`` is this rank's own."""
        self._target_labels = self._loss.target_is_labels(y, self._output_type.rank)
        program = self._program("grad")
        self._store.sync()
        inputs = program.executable.with_state(self._batch(program, x, y, self.steps + 1), self._store)
        outputs = program.executable.run(inputs)
        grads = {}
        for (role, key), value in zip(program.roles, outputs):
            if role == "grad":
                grads["input" if key == "x" else key] = value
        loss = float(outputs[0])
        if self.communicator is not None:
            # as DDP leaves .grad after backward: parameter gradients and the loss averaged over
            # the ranks, the input gradient this rank's own (of its own batch)
            with self.communicator.guard(f"{self.name} gradients"):
                averaged = self.communicator.average(
                    {"<loss>": np.asarray(outputs[0]), **{k: g for k, g in grads.items() if k != "input"}}
                )
            loss = float(averaged.pop("<loss>"))
            grads.update(averaged)
        return loss, grads

    def inference(self) -> CompiledModel:
        """A compiled inference model that shares this step's (trained) weights."""
        net = CompiledModel.__new__(CompiledModel)
        net.backend, net.dtype, net.name = self.backend, self.dtype, self.name
        net._store = self._store
        net._model_keys = self._model_keys
        net.input_type = self.input_type
        graph, _ = trace_model(self.model, self.input_type, training=False)
        PassManager.from_string(FRONT_PIPELINE).run(graph)
        graph.meta["tune"] = self.tune
        net._executable = get_backend(self.backend).compile_graph(graph, training=False)
        net._executable.progress = self.progress
        net._executable.tiered = self.tiered
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
        key = (kind, self.training, self._target_labels)
        if kind == "train":
            self._follow_optimizer()
        if key not in self._programs:
            self._programs[key] = self._build(kind)
            self._programs[key].executable.progress = self.progress
            self._programs[key].executable.tiered = self.tiered and kind == "train"
        return self._programs[key]

    def _follow_optimizer(self) -> None:
        """Drop the training programs when an option of the optimizer's param groups changed
        since they were built (a schedule's learning rate): the next step rebuilds the
        update program, whose kernels take the options as arguments and are reused."""
        # the options as the user (or a schedule) left them: checked only when they changed
        groups = self.optimizer.param_groups
        raw = repr([[(k, v) for k, v in group.items() if k != "params"] for group in groups])
        if raw == self._raw_groups:
            return
        self._raw_groups = raw
        attrs = self.optimizer.group_attrs()
        if attrs != self._update_attrs:
            if self._update_attrs is not None:
                self._store.sync()  # a device-resident program's state comes home first
                self._programs = {key: prog for key, prog in self._programs.items() if key[0] != "train"}
            self._update_attrs = attrs

    def _build(self, kind: str) -> _Program:
        graph, tracer = trace_model(self.model, self.input_type, training=self.training)
        graph.set_outputs([trace_loss(graph, tracer, self._loss, self._target_labels, self.name)])
        params = [v.name for v in graph.inputs if v.name in self._store.trainable]
        if kind == "grad":
            graph, roles = build_training_graph(
                graph, loss=None, params=params, grads_of=["x"], simplify=FRONT_PIPELINE
            )
        else:
            groups = self._update_attrs or self.optimizer.group_attrs()
            params = [name for name in params if name in self._groups]
            rule = UpdateRule(
                self.optimizer.op,
                groups[0],
                tuple(self.optimizer.state),
                param_attrs={name: groups[self._groups[name]] for name in params},
                clip_grad_norm=self.clip_grad_norm,
            )
            graph, roles = build_training_graph(
                graph,
                loss=None,
                params=params,
                optimizer=rule,
                state_updates=tracer.state_updates,
                simplify=FRONT_PIPELINE,
            )
            if self.communicator is not None:
                rank, bucket = self.communicator.rank, self.distributed.bucket_bytes
                DataParallel(bucket_bytes=bucket, rank=rank).run(graph)
        graph.meta["tune"] = self.tune
        executable = get_backend(self.backend).compile_graph(graph, training=True)
        if self.communicator is not None and kind == "train":
            executable.communicator = self.communicator
        return _Program(executable, roles)

    def _batch(self, program: _Program, x: Any, y: Any, step: int) -> dict[str, np.ndarray]:
        """The inputs of ``program`` that change per batch, checked: ``x``, ``target`` and
        the ``step`` counter (the rest come from the store)."""
        arr = check_input(x, self.input_type, self.name)
        batch = {
            "x": arr,
            "target": self._check_target(y, arr.shape[0]),
            "step": np.asarray(step, dtype=np.int64),
        }
        np_dtype = TensorType(self.dtype, ()).np_dtype
        batch.update((key, arr.astype(np_dtype)) for key, arr in self._loss.buffers.items())
        return {v.name: batch[v.name] for v in program.graph.inputs if v.name in batch}

    def _check_target(self, y: Any, batch: int) -> np.ndarray:
        if self._target_labels:
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
            check_labels("target", arr, int(self._output_type.shape[1]), self._loss.ignore_index)
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
    """``x`` as a contiguous array of ``expected`` (batch free), or a clear error; integer
    and bool data are refused, not cast (an unscaled 0..255 image is the usual mistake)."""
    arr = _as_numeric(x, f"{owner}: input x")
    refuse_integers(arr, f"{owner}: input x")
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


def batched_input(x: Any, expected: TensorType, owner: str) -> tuple[np.ndarray, bool]:
    """(the checked input, whether it came unbatched): for an ``expected`` of batch ``N``, an
    input without the batch dim (``[C, H, W]`` for ``[N, C, H, W]``) runs as a batch of one,
    as a PyTorch module takes it; the caller drops the batch dim from the output."""
    shape = np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)
    if expected.shape[:1] == (BATCH,) and tuple(shape) == tuple(expected.shape[1:]):
        return check_input(np.expand_dims(_as_numeric(x, f"{owner}: input x"), 0), expected, owner), True
    return check_input(x, expected, owner), False


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
