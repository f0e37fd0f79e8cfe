"""Backends: ``reference`` (NumPy), ``numba-cpu`` and ``numba-cuda``.

Each backend module exposes ``compile_graph(graph, *, training=False) -> Executable``;
an executable has ``run({input name: array}) -> [arrays]`` and ``source() -> str``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from convforge.errors import BackendError

BACKENDS: dict[str, str] = {
    "reference": "convforge.backends.reference",
    "numba-cpu": "convforge.backends.numba_cpu",
    "numba-cuda": "convforge.backends.numba_cuda",
}
DEFAULT_BACKEND = "numba-cpu"


def resolve(name: str | None) -> str:
    """The backend name to use: ``name``, else ``$CONVFORGE_BACKEND``, else ``numba-cpu``."""
    chosen = name if name is not None else os.environ.get("CONVFORGE_BACKEND", DEFAULT_BACKEND)
    if chosen not in BACKENDS:
        raise BackendError(f"unknown backend {chosen!r}; expected one of {', '.join(BACKENDS)}")
    return chosen


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module called ``name`` (see :func:`resolve`)."""
    module = importlib.import_module(BACKENDS[resolve(name)])
    if not hasattr(module, "compile_graph"):
        raise BackendError(f"backend {resolve(name)!r} is not available in this build")
    return module
