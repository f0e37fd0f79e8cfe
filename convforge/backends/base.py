"""The one backend contract: a :class:`Backend`, the :class:`Executable` it builds, and the
checks every executable runs on its inputs before any kernel.

A backend is a name, two pipelines (inference, training) and a way to build an executable
from an optimised graph; :meth:`Backend.compile_graph` is the same for every backend: copy
the graph, run the pipeline, build. An executable declares what it can do as class
attributes (:attr:`Executable.supports_out`, :attr:`Executable.device_resident`), so
callers read capabilities instead of probing for methods.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from convforge.errors import ConvforgeError, DTypeError, ShapeError
from convforge.ir.graph import Graph, Value
from convforge.ir.ops import registry
from convforge.ir.ops.collective import LOCAL, Communicator
from convforge.ir.types import BATCH, MAX_ELEMENTS
from convforge.passes import PassManager

#: update ops that read element i of the parameter and its state before writing element i,
#: so their result may overwrite the parameter's array (see :meth:`Executable.in_place_outputs`)
ELEMENTWISE_UPDATES = ("sgd_update", "adam_update")


# =========================================================================================
# Backends
# =========================================================================================
@dataclasses.dataclass
class Backend:
    """A backend: its name, its own pipelines, and how it builds an executable.

    ``executable(graph)`` builds the executable from the optimised copy of the graph;
    ``require()`` (if given) raises BackendError when the backend cannot run on this
    machine, before any pass runs.
    """

    name: str
    executable: Callable[[Graph], Executable]
    #: passes run on an inference graph before the executable is built
    inference_pipeline: str = ""
    #: passes run on a joint forward+backward+update graph before the executable is built
    training_pipeline: str = ""
    require: Callable[[], object] | None = None

    def pipeline(self, training: bool = False) -> str:
        """The backend's own pipeline for an inference or a training graph."""
        return self.training_pipeline if training else self.inference_pipeline

    def compile_graph(
        self, graph: Graph, *, training: bool = False, pipeline: str | None = None
    ) -> Executable:
        """Optimise a copy of ``graph`` with :meth:`pipeline` (or ``pipeline``) and compile it.

        The caller's graph is left untouched; the executable's ``graph`` is the optimised copy.
        """
        if self.require is not None:
            self.require()
        work = graph.copy()
        chosen = self.pipeline(training) if pipeline is None else pipeline
        if chosen:
            PassManager.from_string(chosen).run(work)
        return self.executable(work)

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"


#: ``0`` turns tiered execution off where a caller does not choose (``compile(tiered=None)``)
TIERED_ENV = "CONVFORGE_TIERED"


def tiered_default(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else ``$CONVFORGE_TIERED`` (on unless ``0``/``false``/``no``/``off``)."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(TIERED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# =========================================================================================
# Host state shared by compiled programs
# =========================================================================================
class HostState:
    """Named host arrays that compiled programs read and update (parameters, buffers,
    optimizer state).

    Host executables update ``arrays`` in place. A device-resident executable keeps them
    in device buffers between steps: after its :meth:`Executable.step` it is the
    ``holder`` of newer values than ``arrays``, and :meth:`sync` copies them back.
    ``version`` counts changes of the host arrays, so a resident copy knows when it is stale.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays: OrderedDict[str, np.ndarray] = OrderedDict(arrays)
        self.version = 0
        #: the executable whose device buffers hold values newer than ``arrays``, if any
        self.holder: Executable | None = None

    def sync(self) -> None:
        """Bring ``arrays`` up to date (the holder, if any, writes its newer values back)."""
        holder, self.holder = self.holder, None
        if holder is not None:
            holder.write_back(self)

    def changed(self) -> int:
        """Record that ``arrays`` changed on the host: every device copy is stale. Call
        :meth:`sync` before changing them. Returns the new version."""
        self.holder = None
        self.version += 1
        return self.version


# =========================================================================================
# Executables
# =========================================================================================
class Executable(abc.ABC):
    """A compiled graph: ``run({input name: array}) -> [arrays]``, ``source()``, ``graph``.

    Capabilities are class attributes, read by callers instead of probing for methods.
    Inputs are checked (:meth:`check`: names, dtypes, shapes, class labels) before any kernel.
    """

    #: the backend's name
    backend: ClassVar[str] = ""
    #: ``run(inputs, out={output index: array})`` writes those outputs into the caller's arrays
    supports_out: ClassVar[bool] = False
    #: inputs live in device buffers between calls; :meth:`step` keeps the state there
    #: and :meth:`write_back` copies it to the host
    device_resident: ClassVar[bool] = False
    #: compile progress on stderr (``backends.progress``): None = when stderr is a
    #: terminal or ``$CONVFORGE_PROGRESS`` is set; True / False force it
    progress: bool | None = None
    #: while kernels compile (on worker processes), run the calls on a fast tier that needs
    #: no compiling, then switch (numba-cpu; the switch replays the steps: ``docs/design.md``)
    tiered: bool = False
    #: the run-time object collective ops (``all_reduce``) exchange data through; one rank
    #: (every collective the identity) unless the caller sets another (data-parallel training)
    communicator: Communicator = LOCAL

    def __init__(self, graph: Graph):
        #: the graph this executable runs (after the backend's passes)
        self.graph = graph
        #: graph inputs used as class labels, with their class counts (checked by :meth:`check`)
        #: label input -> the ``ignore_index`` its op also allows (``cross_entropy``)
        self.label_ignore: dict[str, int] = {}
        self.labels: list[tuple[str, int]] = label_inputs(graph, self.label_ignore)
        self._in_place: dict[frozenset, dict[int, str]] = {}

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, Any]) -> list[Any]:
        """Check the inputs, run the graph, return its outputs (fresh arrays)."""

    @abc.abstractmethod
    def source(self) -> str:
        """The generated code (or what stands for it), naming the IR it implements."""

    def prepare(self, batch: int = 2) -> None:
        """Compile every kernel now, so the first real call does not pay for it.

        This default runs the graph once on stand-in inputs (:func:`stand_in_inputs`) of
        ``batch`` images (2: batch norm in training needs more than one value per channel)
        and discards the outputs; no state array is read or written.
        """
        self.run(stand_in_inputs(self.graph, batch, [name for name, _ in self.labels]))

    def ready(self) -> bool:
        """Whether calls run on the compiled kernels (False while a fast tier stands in)."""
        return True

    def wait_ready(self) -> None:
        """Block until :meth:`ready` (the kernels compiling in the background are done)."""
        return None

    def check(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check every input's presence, dtype and shape, and class labels; return the batch."""
        batch = check_inputs(self.graph, inputs)
        for name, classes in self.labels:
            check_labels(name, np.asarray(inputs[name]), classes, self.label_ignore.get(name))
        return batch

    # -- training steps ----------------------------------------------------------------
    def step(
        self,
        inputs: Mapping[str, Any],
        state: HostState,
        feedback: Mapping[int, str],
        fetch: Sequence[int] = (0,),
    ) -> list[np.ndarray]:
        """One training step: run with ``inputs`` (what changes per batch) and the other
        graph inputs from ``state.arrays``; then output ``j`` becomes the new value of state
        array ``feedback[j]``. Returns host copies of the ``fetch`` outputs.

        This default runs on the host: the state arrays are updated in place (written by
        the kernels directly where :attr:`supports_out` and :meth:`in_place_outputs`
        allow it). A :attr:`device_resident` executable keeps the state on the device.
        """
        state.sync()
        full = self.with_state(inputs, state)
        direct = self.in_place_outputs(feedback)
        if direct:
            outputs = self.run(full, out={j: state.arrays[name] for j, name in direct.items()})
        else:
            outputs = self.run(full)
        for j, name in feedback.items():
            if j not in direct:
                np.copyto(state.arrays[name], outputs[j])
        if feedback:
            state.changed()
        return [np.asarray(outputs[j]) for j in fetch]

    def with_state(self, inputs: Mapping[str, Any], state: HostState) -> dict[str, Any]:
        """``inputs`` plus, for every other graph input, its array in ``state``."""
        full = dict(inputs)
        full.update(
            (v.name, state.arrays[v.name])
            for v in self.graph.inputs
            if v.name not in full and v.name in state.arrays
        )
        return full

    def write_back(self, state: HostState) -> None:
        """Copy the state this executable holds newer than ``state.arrays`` back into them
        (nothing to do on a host backend: its steps write the arrays themselves)."""
        return None

    def in_place_outputs(self, feedback: Mapping[int, str]) -> dict[int, str]:
        """Of ``feedback`` (output index -> input name), the outputs that may be written
        straight into the array of the input they replace: the backend supports ``out``,
        the producer is an elementwise optimizer update reading that input, and every other
        reader of the old value runs before it."""
        if not self.supports_out:
            return {}
        key = frozenset(feedback.items())
        if key not in self._in_place:
            self._in_place[key] = _in_place(self.graph, feedback)
        return self._in_place[key]


def _in_place(graph: Graph, feedback: Mapping[int, str]) -> dict[int, str]:
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    inputs = {v.name: v for v in graph.inputs}
    found = {}
    for j, name in sorted(feedback.items()):
        producer = graph.outputs[j].producer
        if producer is None or producer.op not in ELEMENTWISE_UPDATES or name not in inputs:
            continue
        if name not in {v.name for v in producer.inputs}:
            continue
        if all(position[id(user)] <= position[id(producer)] for user in inputs[name].users):
            found[j] = name
    return found


# =========================================================================================
# Input checks
# =========================================================================================
def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> int:
    """Check every graph input's presence, dtype and shape; return the batch size.

    Numba does not bounds-check, so this runs before any kernel: a wrong shape here
    would otherwise read or write out of bounds.
    """
    batch: int | None = None
    batch_from = ""
    for v in graph.inputs:
        if v.name not in inputs:
            raise ConvforgeError(f"graph @{graph.name}: missing input %{v.name} ({v.type})")
        arr = inputs[v.name]
        if not isinstance(arr, np.ndarray):
            raise DTypeError(f"input %{v.name}: expected a NumPy array of {v.type}, got {type(arr).__name__}")
        if arr.dtype != v.type.np_dtype:
            raise DTypeError(f"input %{v.name}: expected dtype {v.type.np_dtype} ({v.type}), got {arr.dtype}")
        if arr.ndim != v.type.rank:
            raise ShapeError(f"input %{v.name}: expected shape {v.type}, got {list(arr.shape)}")
        for want, got in zip(v.type.shape, arr.shape):
            if want == BATCH:
                if batch is None:
                    batch, batch_from = got, v.name
                elif got != batch:
                    raise ShapeError(
                        f"input %{v.name}: batch size {got} differs from {batch} (of input %{batch_from})"
                    )
            elif want != got:
                raise ShapeError(f"input %{v.name}: expected shape {v.type}, got {list(arr.shape)}")
    batch = 1 if batch is None else batch
    check_batch(graph, batch)
    return batch


def stand_in_inputs(graph: Graph, batch: int, labels: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Inputs that let every kernel of ``graph`` run (for :meth:`Executable.prepare`): ones
    (no zero divisor, logarithm or square root of zero anywhere: a variance, the step
    counter of Adam's bias correction) and class 0 for the ``labels`` inputs."""
    return {
        v.name: (np.zeros if v.name in labels else np.ones)(v.type.concrete(batch), dtype=v.type.np_dtype)
        for v in graph.inputs
    }


def check_batch(graph: Graph, batch: int) -> None:
    """The checks that depend on the batch size, shared by every backend before any kernel:

    * every value of the graph holds at most ``MAX_ELEMENTS`` elements for this batch (the
      compile-time bound counts ``N`` as 1; ``docs/design.md``, "Limits");
    * an op with the :attr:`Op.batch_stats` fact (``batch_norm_train``) sees more than one
      value per channel, as PyTorch requires ("Expected more than 1 value per channel when
      training"): a kernel would otherwise divide by ``count - 1 = 0``.
    """
    largest, stats = _batch_facts(graph)
    if largest is not None and batch * largest[0] > MAX_ELEMENTS:
        per_image, value, where = largest
        raise ShapeError(
            f"{where}: batch size {batch} makes %{value.name} ({value.type}) hold "
            f"{batch * per_image} elements, more than the limit of {MAX_ELEMENTS} (2**31 - 1) "
            f"per tensor; use a batch of at most {MAX_ELEMENTS // per_image}"
        )
    for per_item, t, where in stats:
        if batch * per_item <= 1:
            shape = [batch if d == BATCH else d for d in t.shape]
            raise ShapeError(
                f"{where}: expected more than 1 value per channel when training, got input shape "
                f"{shape} (batch size {batch})"
            )


#: graph -> (node count when computed, facts): the facts are computed once per graph
_BATCH_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batch_facts(graph: Graph) -> tuple[tuple[int, Value, str] | None, list[tuple[int, Any, str]]]:
    """The graph value with the most elements per batch item (and the node that makes it),
    and the inputs of ``batch_stats`` ops (regions included) that have a batch dimension."""
    cached = _BATCH_FACTS.get(graph)
    if cached is not None and cached[0] == len(graph.nodes):
        return cached[1]
    largest: tuple[int, Value, str] | None = None
    candidates = [(v, f"input %{v.name}") for v in graph.inputs]
    candidates += [(v, node.describe()) for node in graph.nodes for v in node.outputs]
    for v, where in candidates:
        if BATCH in v.type.shape:
            per_image = math.prod(1 if d == BATCH else d for d in v.type.shape)
            if largest is None or per_image > largest[0]:
                largest = (per_image, v, where)
    stats: list[tuple[int, Any, str]] = []

    def scan(g: Graph, where: str | None) -> None:
        for node in g.nodes:
            op = registry.get(node.op)
            for i in op.batch_stats:
                t = node.inputs[i].type
                if t.shape and t.shape[0] == BATCH:
                    per_item = math.prod(1 if d == BATCH else d for d in t.shape[2:])
                    stats.append((per_item, t, where or node.describe()))
            if op.region and node.region is not None:
                scan(node.region, where or node.describe())

    scan(graph, None)
    facts = (largest, stats)
    _BATCH_FACTS[graph] = (len(graph.nodes), facts)
    return facts


def label_inputs(graph: Graph, ignored: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """Graph inputs that some op reads as class labels (its :attr:`Op.labels` fact), with
    the number of classes (``shape[1]`` of the logits they index); regions included.
    ``ignored``, if given, receives the ``ignore_index`` attribute of the reading node."""
    top = {id(v) for v in graph.inputs}
    found: dict[str, int] = {}

    def scan(g: Graph, outer: Mapping[int, Value]) -> None:
        for node in g.nodes:
            op = registry.get(node.op)
            for label, logits in op.labels.items():
                target = outer.get(id(node.inputs[label]), node.inputs[label])
                if id(target) in top:
                    found[target.name] = int(node.inputs[logits].type.shape[1])
                    if ignored is not None and "ignore_index" in node.attrs:
                        ignored[target.name] = int(node.attrs["ignore_index"])
            if op.region and node.region is not None:
                scan(
                    node.region,
                    {id(r): outer.get(id(v), v) for r, v in zip(node.region.inputs, node.inputs)},
                )

    scan(graph, {})
    return sorted(found.items())


def check_labels(name: str, labels: np.ndarray, classes: int, ignore_index: int | None = None) -> None:
    """Class labels must lie in ``[0, classes)`` (or equal ``ignore_index``): kernels index with them."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        out = (labels < 0) | (labels >= classes)
        if ignore_index is not None:
            out &= labels != ignore_index
        if out.any():
            note = "" if ignore_index is None else f" (or be the ignore_index {ignore_index})"
            raise ShapeError(
                f"input %{name}: class labels must lie in [0, {classes}), got {int(labels[out][0])}{note}"
            )
