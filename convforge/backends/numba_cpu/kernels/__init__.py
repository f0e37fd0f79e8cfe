"""Numba CPU kernels, one module per op family (mirroring ``convforge/ir/ops``).

Each family module registers a *lowering* per op with :func:`lowering`: a function
``(ctx, node, ins, outs)`` that emits the driver line(s) calling the op's kernel, where
``ins`` / ``outs`` are the driver's expressions for the node's input and output arrays and
``ctx`` is the codegen context (:class:`convforge.backends.numba_cpu.codegen.Context`).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path

from convforge.backends import cache


def _sources_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


#: hash of every kernel source file: names generated kernel files and stamps the cached
#: static kernels, so any edit here recompiles what depends on it
SOURCES_HASH = _sources_hash()
cache.stamp_kernel_files(Path(__file__).parent, SOURCES_HASH)

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
