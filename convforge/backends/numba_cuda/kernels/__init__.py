"""Numba-CUDA kernels, one module per op family (mirroring ``convforge/ir/ops``).

Each family module registers a *lowering* per op with :func:`lowering` (the
:class:`~convforge.backends.lowering.LoweringTable` both Numba backends use): a function
``(ctx, node)`` that generates (through ``ctx.kernel``) the ``@cuda.jit`` source it needs
and records one or more launches with ``ctx.launch``, reading the node's attributes and
its input/output values. ``ctx`` is :class:`convforge.backends.numba_cuda.codegen.Context`.

Importing a family module does not import ``numba.cuda``: only the generated kernel files
do, so the simulator switch (``NUMBA_ENABLE_CUDASIM``) is read when the first graph compiles.
"""

from __future__ import annotations

from convforge.backends.lowering import LoweringTable
from convforge.ir.ops import registry

#: one kernel module per op family, mirroring ``convforge/ir/ops``
FAMILIES = registry.families()

#: op name -> lowering ``(ctx, node)``
LOWERINGS = LoweringTable("numba-cuda", __name__, FAMILIES)

#: ``@lowering("op", ...)``: register the decorated function as the lowering of those ops
lowering = LOWERINGS.register


def load_all() -> LoweringTable:
    """Import every family module (each registers its lowerings) and return the table."""
    return LOWERINGS.load()
