"""Numba-CUDA kernels, one module per op family (mirroring ``convforge/ir/ops``).

Each family module registers a *lowering* per op with :func:`lowering`: a function
``(ctx, node)`` that generates (through ``ctx.kernel``) the ``@cuda.jit`` source it needs
and records one or more launches with ``ctx.launch``, reading the node's attributes and
its input/output values. ``ctx`` is :class:`convforge.backends.numba_cuda.codegen.Context`.

Importing a family module does not import ``numba.cuda``: only the generated kernel files
do, so the simulator switch (``NUMBA_ENABLE_CUDASIM``) is read when the first graph compiles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Lowering = Callable[..., None]

#: op name -> lowering
LOWERINGS: dict[str, Lowering] = {}

FAMILIES = ("conv", "linear", "pool", "norm", "activation", "elementwise", "shape", "loss", "optim", "fused")


def lowering(*ops: str) -> Callable[[Lowering], Lowering]:
    """Register the decorated function as the lowering of ``ops``."""

    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return register


def load_all() -> dict[str, Lowering]:
    """Import every family module (each registers its lowerings) and return the table."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
    return LOWERINGS
