"""The kernel-file cache: generated source becomes a real, importable module on disk.

Numba can only cache functions that live in a file (``@njit(cache=True)`` keys its cache
on the file), so generated source is never ``exec``'d: it is written to
``$CONVFORGE_CACHE_DIR`` (default ``~/.cache/convforge``) under a name derived from the
hash of the source, the Numba version and the flags, then imported with importlib. A
second process generating the same source finds the same file and Numba's cache beside it.

Compile-vs-load is observable: :func:`track` registers a dispatcher, :func:`stats` counts
the signatures each registered dispatcher compiled or loaded from Numba's cache, and with
``CONVFORGE_DEBUG=1`` :func:`report_new` prints one line per kernel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numba

_MODULES: dict[str, ModuleType] = {}
_TRACKED: dict[str, Any] = {}
_REPORTED: set[tuple[str, str]] = set()


def cache_dir() -> Path:
    """Where kernel files go: ``$CONVFORGE_CACHE_DIR`` or ``~/.cache/convforge`` (created)."""
    path = _cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_root() -> Path:
    root = os.environ.get("CONVFORGE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "convforge"
    )
    return Path(root)


def debug_enabled() -> bool:
    return os.environ.get("CONVFORGE_DEBUG", "") not in ("", "0")


def source_key(source: str, flags: str = "") -> str:
    """The hash that names a kernel file: source, Numba version and flags."""
    h = hashlib.sha256()
    for part in (source, numba.__version__, flags):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def load_module(source: str, *, prefix: str = "kernel", flags: str = "") -> ModuleType:
    """Write ``source`` to the cache (once) and import it as a registered module."""
    key = source_key(source, flags)
    modname = f"convforge_gen_{prefix}_{key}"
    if modname in _MODULES:
        return _MODULES[modname]
    path = cache_dir() / f"{modname}.py"
    if not path.exists() or path.read_text() != source:
        # write-then-rename so a concurrent process never imports a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    _MODULES[modname] = module
    return module


def stamp_kernel_files(folder: Path, stamp: str) -> None:
    """Cache the ``@njit(cache=True)`` functions of ``folder``'s modules under
    ``$CONVFORGE_CACHE_DIR/static-<stamp>``, valid while ``stamp`` is unchanged.

    Numba keys a function's cache on its own file's modification time, so a kernel whose
    helper lives in another file kept the helper's old code after the helper was edited
    (seen here). With one stamp for the whole folder (a hash of all its sources) an edit
    to any kernel file recompiles every kernel. Call before the kernel modules are
    imported: Numba picks a function's cache locator when it is decorated.
    """
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    base = getattr(caching, "_CacheLocator", None)
    if impl is None or mixin is None or base is None:
        return  # a Numba whose cache internals differ: plain per-file caching

    class KernelFolderLocator(mixin, base):
        def __init__(self, py_func: Any, py_file: str):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            # created (or found unwritable, then Numba tries its next locator) by ensure_cache_path
            self._cache_path = str(_cache_root() / f"static-{stamp}")

        def get_cache_path(self) -> str:
            return self._cache_path

        def get_source_stamp(self) -> str:
            return stamp

        @classmethod
        def from_function(cls, py_func: Any, py_file: str):
            if Path(py_file).resolve().parent != folder.resolve():
                return None
            return super().from_function(py_func, py_file)

    locators = impl._locator_classes
    locators[:] = [c for c in locators if c.__name__ != KernelFolderLocator.__name__]
    locators.insert(0, KernelFolderLocator)


def track(name: str, dispatcher: Any) -> None:
    """Count ``dispatcher`` (a Numba ``@njit`` function) in :func:`stats` under ``name``."""
    _TRACKED.setdefault(name, dispatcher)


def _counts(dispatcher: Any) -> tuple[int, int]:
    st = dispatcher.stats
    return sum(st.cache_misses.values()), sum(st.cache_hits.values())


def stats() -> dict[str, Any]:
    """``{"compiled": n, "loaded": n, "kernels": {name: (compiled, loaded)}}`` over tracked kernels."""
    kernels = {name: _counts(d) for name, d in _TRACKED.items()}
    return {
        "compiled": sum(c for c, _ in kernels.values()),
        "loaded": sum(h for _, h in kernels.values()),
        "kernels": kernels,
    }


def report_new() -> None:
    """With ``CONVFORGE_DEBUG=1``: print, once per kernel signature, whether it compiled or loaded."""
    if not debug_enabled():
        return
    for name, d in _TRACKED.items():
        st = d.stats
        for sig in st.cache_misses:
            if (name, str(sig)) not in _REPORTED:
                _REPORTED.add((name, str(sig)))
                print(f"[convforge] kernel {name} {_short(sig)}: compiled", file=sys.stderr)
        for sig in st.cache_hits:
            if (name, str(sig)) not in _REPORTED:
                _REPORTED.add((name, str(sig)))
                print(f"[convforge] kernel {name} {_short(sig)}: loaded from cache", file=sys.stderr)


def _short(sig: Any) -> str:
    """``(f32[4d], i64, ...)``: a signature short enough for one log line."""
    parts = []
    for t in sig:
        dtype = getattr(t, "dtype", None)
        parts.append(f"{dtype}[{t.ndim}d]" if dtype is not None else str(t))
    return "(" + ", ".join(parts) + ")"
