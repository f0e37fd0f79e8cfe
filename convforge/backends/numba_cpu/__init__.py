"""The numba-cpu backend: fused, generated, cached Numba kernels driven by one generated module.

``compile_graph(graph, training=...)`` copies the graph, runs :data:`PIPELINE_INFERENCE`
or :data:`PIPELINE_TRAINING` on the copy (the :data:`BACKEND`'s pipelines) and returns a
:class:`NumbaCpuExecutable`.
"""

from __future__ import annotations

from convforge.backends.base import Backend
from convforge.backends.numba_cpu.runtime import NumbaCpuExecutable

#: passes run on an inference graph before codegen
PIPELINE_INFERENCE = "fold-batchnorm,fuse,dce"
#: passes run on a joint forward+backward+update graph before codegen
PIPELINE_TRAINING = "fuse{training=true,conv_backward=true},dce"

BACKEND = Backend(
    "numba-cpu",
    NumbaCpuExecutable,
    inference_pipeline=PIPELINE_INFERENCE,
    training_pipeline=PIPELINE_TRAINING,
)

#: ``compile_graph(graph, *, training=False, pipeline=None)``: see :meth:`Backend.compile_graph`
compile_graph = BACKEND.compile_graph

__all__ = ["BACKEND", "PIPELINE_INFERENCE", "PIPELINE_TRAINING", "NumbaCpuExecutable", "compile_graph"]
