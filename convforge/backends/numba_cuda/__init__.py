"""The numba-cuda backend: generated ``@cuda.jit`` kernels with device-resident buffers.

``compile_graph(graph, training=...)`` copies the graph, runs :data:`PIPELINE_INFERENCE`
or :data:`PIPELINE_TRAINING` on the copy (the fused conv+bias+activation+pool region is
one kernel launch) and returns a :class:`NumbaCudaExecutable`.

Runs on a CUDA GPU, or on Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (every
thread is Python: tiny shapes only). With neither, ``compile_graph`` raises BackendError.

Device arrays. ``exe.run({name: array})`` accepts NumPy arrays and Numba device arrays
(on a GPU also any ``__cuda_array_interface__`` object, e.g. a CuPy array), mixed freely;
it returns NumPy arrays, or new device arrays when any input was a device array. Inputs
are checked (names, dtypes, shapes, class labels) before any kernel runs.

Resident execution. Every graph input has a device buffer that the executable keeps
(parameters and optimizer state share one across batch sizes); ``run`` copies the given
arrays into them. ``exe.run_device(inputs, fetch=..., feedback=...)`` is the loop for
training on the device: inputs left out keep their last contents, ``feedback={output
index: input name}`` copies an output (an updated parameter, a momentum buffer) into that
input's buffer after the step, and only the ``fetch`` outputs come back, as device arrays::

    exe = compile_graph(train_graph, training=True)
    exe.run_device({"x": x, "target": y, "step": np.int64(1), **params_and_state}, fetch=[])
    for t, (x, y) in enumerate(batches, start=2):
        (loss,) = exe.run_device({"x": x, "target": y, "step": np.int64(t)},
                                 fetch=[0], feedback={1: "0.weight", 2: "optim.0.weight.momentum_buffer"})
"""

from __future__ import annotations

from convforge.backends.numba_cuda.runtime import NumbaCudaExecutable, load_cuda
from convforge.ir.graph import Graph

#: passes run on an inference graph before codegen
PIPELINE_INFERENCE = "fold-batchnorm,fuse,dce"
#: passes run on a joint forward+backward+update graph before codegen
PIPELINE_TRAINING = "fuse{training=true},dce"

__all__ = ["PIPELINE_INFERENCE", "PIPELINE_TRAINING", "NumbaCudaExecutable", "compile_graph"]


def compile_graph(
    graph: Graph, *, training: bool = False, pipeline: str | None = None
) -> NumbaCudaExecutable:
    """Optimise a copy of ``graph`` and compile it (the caller's graph is left untouched)."""
    from convforge.passes import PassManager

    load_cuda()  # fail first, with how to get a GPU or the simulator
    work = graph.copy()
    work.meta.update(graph.meta)
    chosen = pipeline if pipeline is not None else (PIPELINE_TRAINING if training else PIPELINE_INFERENCE)
    if chosen:
        PassManager.from_string(chosen).run(work)
    return NumbaCudaExecutable(work)
