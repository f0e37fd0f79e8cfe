"""The numba-cpu backend: fused, generated, cached Numba kernels driven by one generated module.

``compile_graph(graph, training=...)`` copies the graph, runs :data:`PIPELINE_INFERENCE`
or :data:`PIPELINE_TRAINING` on the copy and returns a :class:`NumbaCpuExecutable`.
"""

from __future__ import annotations

from convforge.backends.numba_cpu.runtime import NumbaCpuExecutable
from convforge.ir.graph import Graph

#: passes run on an inference graph before codegen
PIPELINE_INFERENCE = "fold-batchnorm,fuse,dce"
#: passes run on a joint forward+backward+update graph before codegen
PIPELINE_TRAINING = "fuse{training=true,conv_backward=true},dce"

__all__ = ["PIPELINE_INFERENCE", "PIPELINE_TRAINING", "NumbaCpuExecutable", "compile_graph"]


def compile_graph(graph: Graph, *, training: bool = False, pipeline: str | None = None) -> NumbaCpuExecutable:
    """Optimise a copy of ``graph`` and compile it (the caller's graph is left untouched)."""
    from convforge.passes import PassManager

    work = graph.copy()
    work.meta.update(graph.meta)
    chosen = pipeline if pipeline is not None else (PIPELINE_TRAINING if training else PIPELINE_INFERENCE)
    if chosen:
        PassManager.from_string(chosen).run(work)
    return NumbaCpuExecutable(work)
