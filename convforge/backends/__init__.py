"""Backends: ``reference`` (NumPy), ``numba-cpu`` and ``numba-cuda``.

Each backend module defines ``BACKEND``, a :class:`convforge.backends.base.Backend`: its
name, its inference and training pipelines, and ``compile_graph(graph, *, training=False,
pipeline=None) -> Executable``. An executable (:class:`convforge.backends.base.Executable`)
has ``run({input name: array}) -> [arrays]``, ``source() -> str``, the ``graph`` it runs
and its capabilities as attributes (``supports_out``, ``device_resident``).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from convforge.errors import BackendError

if TYPE_CHECKING:
    from convforge.backends.base import Backend

#: backend name -> the module that defines its ``BACKEND``
BACKENDS: dict[str, str] = {
    "reference": "convforge.backends.reference",
    "numba-cpu": "convforge.backends.numba_cpu",
    "numba-cuda": "convforge.backends.numba_cuda",
}
DEFAULT_BACKEND = "numba-cpu"

#: short names, as PyTorch's devices, accepted wherever a backend name is
ALIASES: dict[str, str] = {"cpu": "numba-cpu", "cuda": "numba-cuda"}

#: every name :func:`resolve` accepts (the CLI's ``--backend`` choices)
NAMES: tuple[str, ...] = (*BACKENDS, *ALIASES)


def resolve(name: str | None) -> str:
    """The backend name to use: ``name``, else ``$CONVFORGE_BACKEND``, else ``numba-cpu``;
    an alias (``"cpu"``, ``"cuda"``) becomes the backend it names (``"numba-cpu"``, ...)."""
    chosen = name if name is not None else os.environ.get("CONVFORGE_BACKEND", DEFAULT_BACKEND)
    chosen = ALIASES.get(chosen, chosen) if isinstance(chosen, str) else chosen
    if not isinstance(chosen, str) or chosen not in BACKENDS:
        source = "" if name is not None else " (from $CONVFORGE_BACKEND)"
        raise BackendError(f"unknown backend {chosen!r}{source}; expected one of {', '.join(NAMES)}")
    return chosen


def get_backend(name: str | None = None) -> Backend:
    """The :class:`~convforge.backends.base.Backend` called ``name`` (see :func:`resolve`)."""
    from convforge.backends.base import Backend  # base imports the passes, which import this package

    chosen = resolve(name)
    backend = vars(importlib.import_module(BACKENDS[chosen])).get("BACKEND")
    if not isinstance(backend, Backend):
        raise BackendError(f"backend {chosen!r} is not available in this build")
    return backend
