"""Interpret a graph with the ops' NumPy references: the oracle every backend is held to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from convforge.backends.base import Executable
from convforge.errors import ConvforgeError, wrap_error
from convforge.ir.graph import Graph
from convforge.ir.ops import registry
from convforge.ir.ops.collective import LOCAL, Communicator


def run_graph(
    graph: Graph,
    inputs: Mapping[str, np.ndarray],
    *,
    trace: dict | None = None,
    communicator: Communicator = LOCAL,
) -> list[np.ndarray]:
    """Evaluate ``graph`` on named inputs; ``trace`` (if given) receives every value by name.
    A region op's node (``fusion``) runs its region; a collective op (``all_reduce``) runs
    through ``communicator``."""
    env: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        if v.name not in inputs:
            raise ConvforgeError(f"graph @{graph.name}: missing input %{v.name} ({v.type})")
        env[id(v)] = inputs[v.name]
    for node in graph.nodes:
        args = [env[id(v)] for v in node.inputs]
        try:
            op = registry.get(node.op)
            if op.region:
                assert node.region is not None
                results: Sequence[np.ndarray] = run_graph(
                    node.region,
                    {v.name: a for v, a in zip(node.region.inputs, args)},
                    communicator=communicator,
                )
            elif op.collective:
                results = op.run_reference(args, {**node.attrs, "communicator": communicator})
            else:
                results = op.run_reference(args, node.attrs)
        except ConvforgeError as exc:
            raise wrap_error(exc, f"while executing {node.describe()}") from None
        for out, arr in zip(node.outputs, results):
            arr = np.asarray(arr)
            if arr.dtype != out.type.np_dtype:
                arr = arr.astype(out.type.np_dtype)
            env[id(out)] = arr
            if trace is not None:
                trace[out.name] = arr
    return [env[id(v)] for v in graph.outputs]


class ReferenceExecutable(Executable):
    """A graph bound to the reference interpreter."""

    backend = "reference"

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.check(inputs)
        return run_graph(self.graph, inputs, communicator=self.communicator)

    def source(self) -> str:
        return f"# reference backend: the graph is interpreted with NumPy references\n{self.graph}"
