"""The reference backend: runs each op's NumPy reference, node by node (float64-capable)."""

from convforge.backends.reference.runtime import ReferenceExecutable, run_graph

__all__ = ["ReferenceExecutable", "compile_graph", "run_graph"]


def compile_graph(graph, *, training: bool = False) -> ReferenceExecutable:
    """Bind ``graph`` to the NumPy interpreter (nothing to compile)."""
    return ReferenceExecutable(graph)
