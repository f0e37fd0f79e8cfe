"""The numba-cpu executable: checks inputs, binds planned buffers, runs the generated driver."""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Mapping

import numba
import numpy as np

from convforge.backends import cache, progress
from convforge.backends.base import Executable
from convforge.backends.lowering import HostCall
from convforge.backends.numba_cpu.codegen import Program, generate
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
        if self._reported:
            self.program.run(batch, arrays, views, outs, kernels)
            return outs
        # the first run compiles (or loads) every kernel: that stall is shown, not silent
        with progress.compiling(f"@{self.graph.name}", kernels, self.progress):
            self.program.run(batch, arrays, views, outs, kernels)
        self._reported = True
        cache.report_new()
        return outs

    def source(self) -> str:
        return self.program.source()
