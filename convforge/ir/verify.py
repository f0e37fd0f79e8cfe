"""The verifier: re-infers every type and checks order, ownership and names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convforge.errors import ConvforgeError, VerificationError
from convforge.ir.ops import registry

if TYPE_CHECKING:  # the graph imports the verifier for ``Graph.verify``
    from convforge.ir.graph import Graph


def verify(graph: Graph) -> None:
    """Raise VerificationError naming the first node that breaks an invariant."""
    defined: set[int] = set()
    names: set[str] = set()
    for v in graph.inputs:
        if v.producer is not None:
            raise VerificationError(f"graph input %{v.name} has a producer")
        _define(v, defined, names)
    for node in graph.nodes:
        where = node.describe()
        if node.graph is not graph:
            raise VerificationError(f"{where}: node is not owned by graph @{graph.name}")
        for v in node.inputs:
            if id(v) not in defined:
                raise VerificationError(f"{where}: input %{v.name} is not defined before its use")
            if node not in v.users:
                raise VerificationError(f"{where}: %{v.name} does not list the node among its users")
        try:
            op = registry.get(node.op)
            expected = op.result_types([v.type for v in node.inputs], node.attrs, node.region, where=where)
        except VerificationError:
            raise
        except ConvforgeError as exc:
            raise VerificationError(f"{where}: type rule fails: {exc}") from None
        if op.region:
            verify(node.region)
        got = tuple(v.type for v in node.outputs)
        if got != expected:
            raise VerificationError(
                f"{where}: output types {', '.join(map(str, got))} do not match the op's rule "
                f"{', '.join(map(str, expected))}"
            )
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                raise VerificationError(f"{where}: output %{out.name} is not owned by the node")
            _define(out, defined, names)
    for node in graph.nodes:
        for out in node.outputs:
            for user in out.users:
                if user.graph is not graph or node not in graph.nodes or out not in user.inputs:
                    raise VerificationError(f"%{out.name} lists a user that does not use it")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerificationError(f"graph output %{v.name} is not defined in graph @{graph.name}")


def _define(v, defined: set[int], names: set[str]) -> None:
    if v.name in names:
        raise VerificationError(f"value name %{v.name} is defined twice")
    names.add(v.name)
    defined.add(id(v))
