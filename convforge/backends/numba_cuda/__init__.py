"""The numba-cuda backend: generated ``@cuda.jit`` kernels with device-resident buffers.

``compile_graph(graph, training=...)`` copies the graph, runs :data:`PIPELINE_INFERENCE`
or :data:`PIPELINE_TRAINING` on the copy (the :data:`BACKEND`'s pipelines; the fused
conv+bias+activation+pool region is one kernel launch) and returns a
:class:`NumbaCudaExecutable`.

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
input's buffer after the step, and only the ``fetch`` outputs come back, as device arrays
(``exe.step(inputs, state, feedback)``, the executable's ``device_resident`` training step
that ``TrainStep`` uses, is this loop over a :class:`convforge.backends.base.HostState`)::

    exe = compile_graph(train_graph, training=True)
    exe.run_device({"x": x, "target": y, "step": np.int64(1), **params_and_state}, fetch=[])
    for t, (x, y) in enumerate(batches, start=2):
        (loss,) = exe.run_device({"x": x, "target": y, "step": np.int64(t)},
                                 fetch=[0], feedback={1: "0.weight", 2: "optim.0.weight.momentum_buffer"})
"""

from __future__ import annotations

from convforge.backends.base import Backend
from convforge.backends.numba_cuda.runtime import NumbaCudaExecutable, load_cuda

#: passes run on an inference graph before codegen
PIPELINE_INFERENCE = "fold-batchnorm,fuse,dce"
#: passes run on a joint forward+backward+update graph before codegen
PIPELINE_TRAINING = "fuse{training=true},dce"

BACKEND = Backend(
    "numba-cuda",
    NumbaCudaExecutable,
    inference_pipeline=PIPELINE_INFERENCE,
    training_pipeline=PIPELINE_TRAINING,
    require=load_cuda,  # fail first, with how to get a GPU or the simulator
)

#: ``compile_graph(graph, *, training=False, pipeline=None)``: see :meth:`Backend.compile_graph`
compile_graph = BACKEND.compile_graph

__all__ = ["BACKEND", "PIPELINE_INFERENCE", "PIPELINE_TRAINING", "NumbaCudaExecutable", "compile_graph"]
