"""The reference backend: runs each op's NumPy reference, node by node (float64-capable).

No passes of its own: ``compile_graph`` copies the graph (or runs ``pipeline`` on the copy)
and interprets it.
"""

from convforge.backends.base import Backend
from convforge.backends.reference.runtime import ReferenceExecutable, run_graph

__all__ = ["BACKEND", "ReferenceExecutable", "compile_graph", "run_graph"]

BACKEND = Backend("reference", ReferenceExecutable)

#: ``compile_graph(graph, *, training=False, pipeline=None)``: see :meth:`Backend.compile_graph`
compile_graph = BACKEND.compile_graph
