"""Numba CPU kernels, one module per op family (mirroring ``convforge/ir/ops``).

Each family module registers a *lowering* per op with :func:`lowering` (the
:class:`~convforge.backends.lowering.LoweringTable` both Numba backends use): a function
``(ctx, node, ins, outs)`` that emits the driver line(s) calling the op's kernel, where
``ins`` / ``outs`` are the driver's expressions for the node's input and output arrays and
``ctx`` is the codegen context (:class:`convforge.backends.numba_cpu.codegen.Context`).
"""

from __future__ import annotations

from convforge.backends import cache
from convforge.backends.lowering import LoweringTable
from convforge.ir.ops import registry

#: the kernel cache's stamp (every kernel dependency, the toolchain, the CPU): names
#: generated kernel files and stamps the cached static kernels; installing it first routes
#: every convforge ``cache=True`` function through the verified cache (see ``cache.install``)
SOURCES_HASH = cache.install()

#: one kernel module per op family, mirroring ``convforge/ir/ops``
FAMILIES = registry.families()

#: op name -> lowering ``(ctx, node, ins, outs)``
LOWERINGS = LoweringTable("numba-cpu", __name__, FAMILIES)

#: ``@lowering("op", ...)``: register the decorated function as the lowering of those ops
lowering = LOWERINGS.register


def load_all() -> LoweringTable:
    """Import every family module (each registers its lowerings) and return the table."""
    return LOWERINGS.load()
