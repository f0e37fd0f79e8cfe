"""The numba-cpu executable: checks inputs, binds planned buffers, runs the generated driver."""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np

from convforge.backends import cache, progress
from convforge.backends.base import Executable, HostState
from convforge.backends.lowering import HostCall
from convforge.backends.numba_cpu import precompile
from convforge.backends.numba_cpu.codegen import Program, generate
from convforge.backends.numba_cpu.tiers import Tier, progress_bar
from convforge.errors import ConvforgeError
from convforge.ir.graph import Graph
from convforge.passes.memory_plan import ALIAS_OPS, MemoryPlan, plan_memory

_CONFIGURED = False


def configure_threads() -> None:
    """OpenMP threading layer (2x faster than workqueue here) and single-threaded BLAS in kernels.

    Kernels call sgemm from inside ``prange`` (one GEMM per image per thread); a BLAS that
    spawned its own threads there would oversubscribe the cores. SciPy's OpenBLAS (the one
    Numba calls) is set to one thread; NumPy's own BLAS is left alone.
    """
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    if "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            from numba.np.ufunc import omppool  # noqa: F401

            numba.config.THREADING_LAYER = "omp"
        except ImportError:
            pass  # Numba picks tbb or workqueue
    try:
        import scipy

        root = os.path.dirname(os.path.dirname(scipy.__file__))
        for lib in glob.glob(os.path.join(root, "scipy.libs", "libscipy_openblas*")):
            handle = ctypes.CDLL(lib)
            for fn in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                if hasattr(handle, fn):
                    getattr(handle, fn)(1)
                    break
    except (ImportError, OSError):
        pass


class NumbaCpuExecutable(Executable):
    """A graph compiled to a generated driver plus Numba kernels."""

    backend = "numba-cpu"
    #: ``run`` accepts ``out``: caller-owned arrays to write chosen outputs into
    supports_out = True

    def __init__(self, graph: Graph):
        configure_threads()
        super().__init__(graph)
        views = {id(o) for n in graph.nodes if n.op in ALIAS_OPS for o in n.outputs}
        self._planned = plan_memory(graph, 1).values
        self.program: Program = generate(graph, self._planned, views)
        self._buffers: dict[int, tuple[MemoryPlan, list[np.ndarray]]] = {}
        self._reported = False
        #: whether the first call has looked for kernels to compile (on workers, maybe tiered)
        self._planned_compile = False
        self._tier: Tier | None = None

    def plan(self, batch: int) -> MemoryPlan:
        return self._bind(batch)[0]

    def _bind(self, batch: int) -> tuple[MemoryPlan, list[np.ndarray]]:
        if batch not in self._buffers:
            plan = plan_memory(self.graph, batch)
            plan.verify()
            slots = [np.empty(max(size, 1), dtype=np.uint8) for size in plan.slot_bytes]
            views = []
            for v in self._planned:
                nbytes = plan.nbytes[v.name]
                raw = slots[plan.slot_of[v.name]][:nbytes]
                views.append(raw.view(v.type.np_dtype).reshape(v.type.concrete(batch)))
            self._buffers[batch] = (plan, views)
        return self._buffers[batch]

    def run(
        self, inputs: Mapping[str, np.ndarray], out: Mapping[int, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Run the graph; outputs are fresh arrays, except those the caller hands in ``out``
        (output index -> array), which are written in place (a training step updates its
        weights this way instead of copying new ones over them)."""
        batch, arrays, views, outs, kernels = self._call_args(inputs, out)
        if not self._planned_compile:
            self._plan_compile(batch, arrays, views, kernels)
        tier = self._tier
        if tier is not None:
            if tier.in_step or not tier.background.done():
                return tier.run(inputs, out)
            self._end_tier()  # a plain call (inference) switches without a replay
        if self._reported:
            self.program.run(batch, arrays, views, outs, kernels)
            return outs
        # the first run compiles (or loads) every kernel: that stall is shown, not silent
        with progress.compiling(f"@{self.graph.name}", kernels, self.progress):
            self.program.run(batch, arrays, views, outs, kernels)
        self._reported = True
        cache.report_new()
        return outs

    def _call_args(
        self, inputs: Mapping[str, np.ndarray], out: Mapping[int, np.ndarray] | None
    ) -> tuple[int, list[np.ndarray], list[np.ndarray], list[np.ndarray], tuple]:
        """The checked inputs bound for the driver: (batch, inputs, planned buffers, outputs, kernels)."""
        batch = self.check(inputs)
        # np.ascontiguousarray would turn a 0-d array (the step counter) into 1-d
        arrays = [
            a if a.flags.c_contiguous else np.ascontiguousarray(a)
            for a in (inputs[v.name] for v in self.graph.inputs)
        ]
        _, views = self._bind(batch)
        outs = [np.empty(v.type.concrete(batch), dtype=v.type.np_dtype) for v in self.graph.outputs]
        for j, arr in (out or {}).items():
            v = self.graph.outputs[j]
            if (
                arr.shape != v.type.concrete(batch)
                or arr.dtype != v.type.np_dtype
                or not arr.flags.c_contiguous
            ):
                raise ConvforgeError(
                    f"out[{j}] must be a C-contiguous {v.type} array, got {arr.dtype}{list(arr.shape)}"
                )
            outs[j] = arr
        kernels = tuple(
            k.dispatcher.bind(self.communicator) if isinstance(k.dispatcher, HostCall) else k.dispatcher
            for k in self.program.kernels
        )
        return batch, arrays, views, outs, kernels

    def source(self) -> str:
        return self.program.source()

    # -- compiling on workers, and the fast tier meanwhile -----------------------------------
    def _plan_compile(
        self, batch: int, arrays: list[np.ndarray], views: list[np.ndarray], kernels: Sequence[Any]
    ) -> None:
        """Before the first call: start worker processes compiling the kernels it would
        compile, when there are enough of them to pay for the workers' start
        (``precompile.MIN_JOBS``); then run on the fast tier (:attr:`tiered`) or wait."""
        self._planned_compile = True
        origins = {
            id(k.dispatcher): (k.label, k.origin) for k in self.program.kernels if k.origin is not None
        }
        if not origins or precompile.worker_count(precompile.MIN_JOBS) < 1:
            return
        # the driver copies some outputs at its end: into fresh arrays, never the caller's
        outs = [np.empty(v.type.concrete(batch), dtype=v.type.np_dtype) for v in self.graph.outputs]
        try:
            found = precompile.signatures(self.program.run, kernels, (batch, arrays, views, outs))
        except Exception:  # noqa: BLE001 - a driver the stand-ins cannot run compiles as it calls
            return
        jobs = precompile.pending(found, origins)
        if len(jobs) < precompile.MIN_JOBS:
            return
        try:
            background = precompile.Background(jobs)
        except OSError:  # no processes to be had: compile in this one
            return
        what = f"@{self.graph.name}"
        if self.tiered and self.communicator.size == 1:
            self._tier = Tier(self.graph, background, what, self.progress)
        else:
            _wait(background, what, self.progress)

    def prepare(self, batch: int = 2) -> None:
        """Compile every kernel now (on worker processes where that is faster), never tiered."""
        if self._tier is not None:
            self._tier.background.wait()
            self._end_tier()
        tiered, self.tiered = self.tiered, False
        try:
            super().prepare(batch)
        finally:
            self.tiered = tiered

    def ready(self) -> bool:
        tier = self._tier
        return tier is None or tier.background.done()

    def wait_ready(self) -> None:
        if self._tier is not None:
            _wait(self._tier.background, f"@{self.graph.name}", self.progress, self._tier.bar)

    def _end_tier(self) -> None:
        tier, self._tier = self._tier, None
        if tier is not None:
            tier.close()

    def step(
        self,
        inputs: Mapping[str, Any],
        state: HostState,
        feedback: Mapping[int, str],
        fetch: Sequence[int] = (0,),
    ) -> list[np.ndarray]:
        """A training step (see :meth:`Executable.step`). While the kernels compile on
        workers the steps run on the fast tier and are logged; at the switch the log is
        replayed from the state it started at, so the state then is what these kernels
        alone would have made of it."""
        if not self._planned_compile:
            full = self.with_state(inputs, state)
            batch, arrays, views, _, kernels = self._call_args(full, None)
            self._plan_compile(batch, arrays, views, kernels)
        tier = self._tier
        if tier is not None and tier.background.done():
            self._end_tier()
            tier.replay(
                state, feedback.values(), lambda batch: Executable.step(self, batch, state, feedback, ())
            )
        tier = self._tier
        if tier is None:
            return super().step(inputs, state, feedback, fetch)
        tier.begin(state)
        tier.in_step = True
        try:
            result = super().step(inputs, state, feedback, fetch)
        finally:
            tier.in_step = False
        tier.record(inputs, state)  # only a step that succeeded is replayed
        return result


def _wait(background: precompile.Background, what: str, explicit: bool | None, bar: Any = None) -> None:
    """Wait for ``background``, with its progress bar when progress is shown."""
    own = bar is None
    bar = bar if bar is not None else progress_bar(background, what, explicit, waiting=True)
    background.wait(bar.update if bar is not None else None)
    if bar is not None and own:
        bar.close()
