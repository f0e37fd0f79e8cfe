"""The reference backend: runs each op's NumPy reference, node by node (float64-capable)."""

from convforge.backends.reference.runtime import ReferenceExecutable, run_graph

__all__ = ["ReferenceExecutable", "run_graph"]
