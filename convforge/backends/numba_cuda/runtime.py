"""The numba-cuda executable: resident device buffers, input checks, kernel launches.

Per batch size the executable keeps a bound program: the generated launches with every
argument already resolved to a device array. Buffers come from the memory plan
(:func:`convforge.passes.memory_plan.plan_memory`: values with disjoint lifetimes share
one allocation), graph outputs get their own buffers, and every graph input has a
resident device buffer, shared across batch sizes when its shape has no batch dimension
(parameters, optimizer state). A call copies the given inputs into those buffers, runs
every launch on the device and copies the outputs out; nothing else crosses to the host.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from convforge.backends import progress
from convforge.backends.base import Executable, HostState, check_inputs, check_labels
from convforge.backends.lowering import HostCall
from convforge.backends.numba_cuda.codegen import GPU, SIMULATOR, Program, View, lower
from convforge.errors import BackendError, ConvforgeError, ShapeError
from convforge.ir.graph import Graph, Value
from convforge.ir.types import BATCH
from convforge.passes.memory_plan import plan_memory

#: probe batch for lowering at compile time: surfaces a missing kernel before any run
_PROBE_BATCH = 2


def simulator_requested() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def load_cuda() -> tuple[ModuleType, bool]:
    """``numba.cuda`` and whether it is Numba's simulator; BackendError if neither it nor a GPU works.

    Numba reads ``NUMBA_ENABLE_CUDASIM`` when ``numba`` is first imported; a variable set
    later (a test's conftest, after another module imported numba) still takes effect
    here, as long as ``numba.cuda`` itself has not been imported yet.
    """
    try:
        from numba.core import config

        if simulator_requested() and not config.ENABLE_CUDASIM and "numba.cuda" not in sys.modules:
            config.reload_config()
        from numba import cuda
    except ImportError as exc:
        raise BackendError(
            f"the numba-cuda backend needs the numba-cuda package ({exc}); install it with "
            "`pip install numba-cuda[cu12]` (or `pip install convforge[cuda]`)"
        ) from None
    simulate = is_simulator(cuda)
    if not simulate and not gpu_available(cuda):
        late = (
            " (NUMBA_ENABLE_CUDASIM is set, but numba.cuda was imported before it was: set it "
            "before the first import of numba.cuda)"
            if simulator_requested()
            else ""
        )
        raise BackendError(
            "the numba-cuda backend found no usable CUDA GPU: install an NVIDIA driver and a "
            "CUDA-capable GPU, or set the environment variable NUMBA_ENABLE_CUDASIM=1 to run "
            f"on Numba's CUDA simulator (slow; meant for tests with tiny shapes){late}"
        )
    return cuda, simulate


def is_simulator(cuda: ModuleType) -> bool:
    """Whether ``numba.cuda`` is Numba's simulator (kernels run as Python threads)."""
    return cuda.jit.__module__.startswith("numba.cuda.simulator")


def gpu_available(cuda: ModuleType) -> bool:
    """Whether a real GPU and driver answer (never raises)."""
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any driver failure means "no GPU"
        return False


def is_device_array(x: Any) -> bool:
    """A Numba device array (or, on a GPU, anything with ``__cuda_array_interface__``)."""
    return not isinstance(x, np.ndarray) and (
        hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")
    )


class NumbaCudaExecutable(Executable):
    """A graph compiled to generated ``@cuda.jit`` kernels with device-resident buffers.

    ``run({name: array})`` takes NumPy arrays (or device arrays, see the package
    docstring) and returns NumPy arrays (device arrays if any input was one);
    ``run_device`` keeps everything on the device for resident training loops, and
    ``step`` is that loop over a :class:`~convforge.backends.base.HostState`.
    """

    backend = "numba-cuda"
    #: weights and optimizer state stay in device buffers between training steps
    device_resident = True

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self._cuda, self.simulate = load_cuda()
        self._geometry = SIMULATOR if self.simulate else GPU
        self._bound: dict[int, _Bound] = {}
        self._static_inputs: dict[str, Any] = {}
        self._loaded: set[str] = set()
        self._last_batch: int | None = None
        # the host state whose values the resident buffers hold, at which version of it,
        # and which inputs the last step fed back (newer on the device than on the host)
        self._state: HostState | None = None
        self._state_version = -1
        self._fed_back: tuple[str, ...] = ()
        self._probe, _ = lower(graph, _PROBE_BATCH, self._geometry, self.simulate)

    # -- public API ------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any]) -> list[Any]:
        """Check and copy in every input, run the graph, return fresh outputs.

        Outputs are NumPy arrays, or new device arrays when any input was a device array.
        """
        batch = self._check(inputs, complete=True)
        bound = self._bound_for(batch)
        bound.load(inputs)
        bound.execute()
        if any(is_device_array(a) for a in inputs.values()):
            return bound.fetch_device(range(len(self.graph.outputs)))
        return bound.fetch_host()

    def run_device(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        fetch: Sequence[int] | None = None,
        feedback: Mapping[int, str] | None = None,
    ) -> list[Any]:
        """Run on the device: inputs left out keep what their resident buffer last received.

        ``feedback={output index: input name}`` copies that output into the input's resident
        buffer after the run (device to device), so a training loop feeds the updated
        parameters and optimizer state back without a host round trip. Returns new device
        arrays for the outputs listed in ``fetch`` (default: all).
        """
        given = dict(inputs or {})
        batch = self._check(given, complete=False)
        bound = self._bound_for(batch)
        bound.load(given)
        pairs = self._feedback_pairs(feedback or {})
        bound.execute()
        for out_index, name in pairs:
            bound.feed_back(out_index, name)
        wanted = range(len(self.graph.outputs)) if fetch is None else list(fetch)
        return bound.fetch_device(wanted)

    def step(
        self,
        inputs: Mapping[str, Any],
        state: HostState,
        feedback: Mapping[int, str],
        fetch: Sequence[int] = (0,),
    ) -> list[np.ndarray]:
        """One training step that leaves the state on the device (see :meth:`Executable.step`).

        Only ``inputs`` (what changes per batch) are copied in, unless the resident buffers
        do not hold ``state``'s current values (first step, or the host arrays changed, or
        another executable held newer ones): then every state array is copied in too. The
        updated state stays on the device, this executable becomes ``state.holder``, and
        :meth:`write_back` (through ``state.sync()``) brings the host arrays up to date.
        """
        if state.holder is not self:
            state.sync()
        stale = self._state is not state or self._state_version != state.version
        given = self.with_state(inputs, state) if stale else dict(inputs)
        outputs = self.run_device(given, fetch=list(fetch), feedback=feedback)
        self._state, self._state_version = state, state.version
        if feedback:
            self._fed_back = tuple(dict.fromkeys(feedback.values()))
            state.holder = self
        return [np.asarray(out.copy_to_host()) for out in outputs]

    def write_back(self, state: HostState) -> None:
        """Copy the state the last step fed back on the device into ``state.arrays``."""
        if self._state is not state:
            return
        for name in self._fed_back:
            np.copyto(state.arrays[name], self.read_input(name))
        # host and device agree again: other resident copies are stale, this one is not
        self._state_version = state.changed()

    def source(self) -> str:
        """Every generated kernel file this graph launches, each naming the IR it implements."""
        return (
            f"# numba-cuda ({'simulator' if self.simulate else 'GPU'}) for graph @{self.graph.name}\n\n"
            + (self._probe.source())
        )

    def prepare(self, batch: int = 2) -> None:
        """Compile every kernel for ``batch`` now (on a GPU kernels compile when a batch size
        is first bound; the simulator compiles nothing); no buffer is loaded or run."""
        last = self._last_batch
        self._bound_for(batch)
        self._last_batch = last

    # -- checks ----------------------------------------------------------------------------
    def _check(self, inputs: Mapping[str, Any], *, complete: bool) -> int:
        """Validate names, dtypes and shapes (and class labels) before any kernel; return the batch."""
        known = {v.name for v in self.graph.inputs}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise ConvforgeError(
                f"graph @{self.graph.name} has no input(s) {', '.join('%' + u for u in unknown)}"
            )
        stand_ins: dict[str, np.ndarray] = {}
        for v in self.graph.inputs:
            if v.name in inputs:
                stand_ins[v.name] = _stand_in(v.name, inputs[v.name])
            elif complete or v.name not in self._loaded or (BATCH in v.shape and self._last_batch is None):
                raise ConvforgeError(
                    f"graph @{self.graph.name}: missing input %{v.name} ({v.type})"
                    + ("" if complete else "; run_device may leave out only inputs given before")
                )
            else:
                shape = v.type.concrete(self._given_batch(inputs))
                stand_ins[v.name] = _zero_strided(v.type.np_dtype, shape)
        batch = check_inputs(self.graph, stand_ins)
        for name, classes in self.labels:
            if name in inputs:
                arr = inputs[name]
                host = arr.copy_to_host() if is_device_array(arr) else np.asarray(arr)
                check_labels(name, host, classes, self.label_ignore.get(name))
        return batch

    def _given_batch(self, inputs: Mapping[str, Any]) -> int:
        for v in self.graph.inputs:
            if v.name in inputs and BATCH in v.shape:
                return int(inputs[v.name].shape[v.shape.index(BATCH)])
        return self._last_batch if self._last_batch is not None else 1

    def _feedback_pairs(self, feedback: Mapping[int, str]) -> list[tuple[int, str]]:
        pairs = []
        for out_index, name in feedback.items():
            if not 0 <= out_index < len(self.graph.outputs):
                raise ConvforgeError(
                    f"feedback: output index {out_index} out of range [0, {len(self.graph.outputs)})"
                )
            target = self.graph.input(name) if name in {v.name for v in self.graph.inputs} else None
            out = self.graph.outputs[out_index]
            if target is None or target.type != out.type:
                raise ConvforgeError(
                    f"feedback: output {out_index} ({out.type}) cannot feed input %{name}"
                    + (f" ({target.type})" if target is not None else " (no such input)")
                )
            pairs.append((out_index, name))
        return pairs

    # -- buffers ---------------------------------------------------------------------------
    def _bound_for(self, batch: int) -> _Bound:
        if batch not in self._bound:
            program, aliases = lower(self.graph, batch, self._geometry, self.simulate)
            self._bound[batch] = _Bound(self, program, aliases)
        self._last_batch = batch
        return self._bound[batch]

    def read_input(self, name: str) -> np.ndarray:
        """A host copy of the resident buffer of batch-free input ``name`` (e.g. a trained weight)."""
        if name not in self._static_inputs:
            raise ConvforgeError(f"graph @{self.graph.name} holds no resident buffer for input %{name}")
        value = self.graph.input(name)
        return self._static_inputs[name].copy_to_host().reshape(value.type.concrete(1))

    def input_buffer(self, value: Value, batch: int) -> Any:
        """The resident device buffer of graph input ``value`` (shared across batches if static)."""
        shape = value.type.concrete(batch) or (1,)
        if BATCH not in value.shape:
            if value.name not in self._static_inputs:
                self._static_inputs[value.name] = self._cuda.device_array(shape, value.type.np_dtype)
            return self._static_inputs[value.name]
        return self._cuda.device_array(shape, value.type.np_dtype)


class _Bound:
    """One batch size: launches with resolved device arrays, and the buffers they use."""

    def __init__(self, exe: NumbaCudaExecutable, program: Program, aliases: dict[int, Value]):
        self.exe = exe
        self.program = program
        cuda = exe._cuda
        graph = exe.graph
        batch = program.batch
        self.arrays: dict[int, Any] = {}
        for v in graph.inputs:
            self.arrays[id(v)] = exe.input_buffer(v, batch)
        plan = plan_memory(graph, batch)
        slots = [cuda.device_array(max(1, nbytes), np.uint8) for nbytes in plan.slot_bytes]
        for v in plan.values:
            raw = slots[plan.slot_of[v.name]][: plan.nbytes[v.name]]
            self.arrays[id(v)] = raw.view(v.type.np_dtype).reshape(_storage(v, batch))
        for node in graph.nodes:
            for out in node.outputs:
                if id(out) in aliases:
                    src = self.arrays[id(aliases[id(out)])]
                    self.arrays[id(out)] = src.reshape(_storage(out, batch))
                elif id(out) not in self.arrays:  # a graph output: its own buffer
                    self.arrays[id(out)] = cuda.device_array(_storage(out, batch), out.type.np_dtype)
        self.calls = []
        kernels = [launch.kernel for launch in program.launches]
        with progress.compiling(f"@{graph.name}", kernels, exe.progress) as watcher:
            for launch in program.launches:
                args = tuple(self._resolve(a) for a in launch.args)
                kernel = launch.kernel
                if isinstance(kernel, HostCall):  # a collective: Python on the host, given device arrays
                    self.calls.append((kernel.bind(exe.communicator), args))
                    continue
                if not exe.simulate:
                    # compile now for these argument types: a launch then skips Numba's per-call typing
                    kernel = kernel.specialize(*args)
                    watcher.ready_now(launch.kernel)
                self.calls.append((kernel[launch.grid, launch.block], args))

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, Value):
            return self.arrays[id(arg)]
        if isinstance(arg, View):
            return self.arrays[id(arg.value)].reshape(arg.shape)
        return arg

    def load(self, inputs: Mapping[str, Any]) -> None:
        for v in self.exe.graph.inputs:
            if v.name not in inputs:
                continue
            buf = self.arrays[id(v)]
            arr = inputs[v.name]
            if is_device_array(arr):
                arr = _as_numba(self.exe._cuda, arr)
                if not arr.is_c_contiguous():
                    raise ShapeError(f"input %{v.name}: expected a C-contiguous device array")
                buf.copy_to_device(arr.reshape(buf.shape))
            else:
                buf.copy_to_device(np.ascontiguousarray(arr).reshape(buf.shape))
            self.exe._loaded.add(v.name)

    def execute(self) -> None:
        if self.exe.simulate:
            # the dropout hash relies on wrapping uint64 arithmetic, which NumPy (running the
            # simulated threads) reports as overflow
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
                for kernel, args in self.calls:
                    kernel(*args)
        else:
            for kernel, args in self.calls:
                kernel(*args)

    def fetch_host(self) -> list[np.ndarray]:
        batch = self.program.batch
        return [
            self.arrays[id(v)].copy_to_host().reshape(v.type.concrete(batch)) for v in self.exe.graph.outputs
        ]

    def fetch_device(self, indices: Sequence[int] | range) -> list[Any]:
        cuda = self.exe._cuda
        out = []
        for i in indices:
            v = self.exe.graph.outputs[i]
            src = self.arrays[id(v)]
            copy = cuda.device_array(src.shape, v.type.np_dtype)
            copy.copy_to_device(src)
            out.append(copy.reshape(v.type.concrete(self.program.batch)))
        return out

    def feed_back(self, out_index: int, name: str) -> None:
        src = self.arrays[id(self.exe.graph.outputs[out_index])]
        self.arrays[id(self.exe.graph.input(name))].copy_to_device(src)


def _storage(v: Value, batch: int) -> tuple[int, ...]:
    return v.type.concrete(batch) or (1,)


def _zero_strided(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` that allocates one element (for shape checks)."""
    return np.lib.stride_tricks.as_strided(np.zeros((), dtype), shape=shape, strides=(0,) * len(shape))


def _stand_in(name: str, arr: Any) -> np.ndarray:
    """What ``check_inputs`` sees: the array itself, or a shape/dtype stand-in of a device array."""
    if isinstance(arr, np.ndarray):
        return arr
    if is_device_array(arr):
        return _zero_strided(np.dtype(arr.dtype), tuple(arr.shape))
    return arr  # check_inputs names the wrong type


def _as_numba(cuda: ModuleType, arr: Any) -> Any:
    """A Numba device array for ``arr`` (foreign CUDA arrays are wrapped without a copy)."""
    if hasattr(arr, "copy_to_device"):
        return arr
    return cuda.as_cuda_array(arr)
