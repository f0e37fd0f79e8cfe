"""The kernel-file cache: generated source becomes a real module on disk, and every file
convforge (or Numba, on its behalf) writes there is verified before it is used.

Numba can only cache functions that live in a file (``@njit(cache=True)`` keys its cache
on the file), so generated source is written to ``$CONVFORGE_CACHE_DIR`` (default
``~/.cache/convforge``) under a name derived from the hash of the source, the flags and
the *stamp* (:func:`sources_stamp`), then executed as a registered module. A second
process generating the same source finds the same file and Numba's cache beside it.

What is trusted, and how:

- The **stamp** hashes every source file generated or static kernels depend on (both
  Numba backends, the IR and its op modules, this file), the Python, Numba, llvmlite
  and numba-cuda versions, the host CPU name and features and the Numba settings that
  change generated code. It names generated files and stamps Numba's index of every
  cached convforge function: an edit to any of them recompiles what could depend on it.
- A **manifest** (``manifest.json`` in the cache folder, rewritten atomically under a
  ``flock`` on ``.lock``) records the SHA-256 of every file written there. Numba's own
  cache files (``.nbi`` index, ``.nbc`` data) are read through
  :class:`VerifiedIndexDataCacheFile`, which checks the bytes against the manifest
  *before* unpickling them; a generated ``.py`` must equal the source convforge just
  generated. A file that does not verify (damaged, truncated, planted) is never loaded:
  it is deleted and rebuilt, with one :class:`CacheWarning`.
- Generated modules are compiled from the verified source text in memory
  (``compile`` + ``exec`` with the file's real name); no ``.pyc`` is read or written, so a
  bytecode file planted beside a driver is never executed.
- Every convforge ``cache=True`` function, static (``kernels/*.py``, the op modules they
  call) or generated, is cached under the cache folder: :class:`ConvforgeCacheLocator`
  is the first locator Numba tries, and it claims exactly those functions.
- The folder must be a directory owned by the user and not writable by group or others
  (``ssh``'s rule for ``~/.ssh``). If it is not (or is a regular file, or cannot be
  created) convforge warns once and uses a private temporary cache, removed at exit. A
  folder that is safe but read-only is still read (its files are verified as usual) and
  new kernels go to a private temporary cache, with one warning.

Compile-vs-load is observable: :func:`track` registers a dispatcher, :func:`stats` counts
the signatures each registered dispatcher compiled or loaded from Numba's cache, and with
``CONVFORGE_DEBUG=1`` :func:`report_new` prints one line per kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numba

from convforge.errors import BackendError
from convforge.fileio import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, writes stay atomic
    fcntl = None  # type: ignore[assignment]

_MODULES: dict[str, ModuleType] = {}
_TRACKED: dict[str, Any] = {}
_REPORTED: set[tuple[str, str]] = set()

#: the convforge package folder (``convforge/``)
PACKAGE = Path(__file__).resolve().parents[1]
#: what the stamp hashes, relative to :data:`PACKAGE`: folders (every ``*.py`` below) and files
STAMP_SOURCES = (
    "backends/numba_cpu",
    "backends/numba_cuda",
    "backends/cache.py",
    "ir",
)
MANIFEST = "manifest.json"
_MANIFEST_FORMAT = "convforge-kernel-cache"
_LOCK = ".lock"
_GENERATED = "convforge_gen_"

_STAMP: str | None = None


class CacheWarning(UserWarning):
    """The kernel cache ignored a file or a folder it cannot trust or write (one line each)."""


_WARNED: set[Any] = set()


def _warn(message: str, key: Any = None) -> None:
    """One line on stderr (``convforge-cache:0: CacheWarning: ...``), once per ``key``."""
    key = message if key is None else key
    if key in _WARNED:
        return
    _WARNED.add(key)
    # an explicit location with no source line keeps the warning to one line
    warnings.warn_explicit(message, CacheWarning, "convforge-cache", 0)


# -- the stamp -------------------------------------------------------------------------------
def stamp_files(package: str | os.PathLike | None = None) -> list[Path]:
    """The source files :func:`sources_stamp` hashes, sorted (under ``package``, default ours)."""
    root = PACKAGE if package is None else Path(package)
    files: set[Path] = set()
    for rel in STAMP_SOURCES:
        path = root / rel
        if path.is_dir():
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            files.add(path)
    return sorted(files)


def sources_stamp(package: str | os.PathLike | None = None) -> str:
    """The hash of every kernel dependency and of the toolchain (see the module docstring).

    Computed once per process for the installed package; pass ``package`` (a copy of the
    ``convforge`` folder) to compute it over another tree.
    """
    global _STAMP
    if package is None and _STAMP is not None:
        return _STAMP
    root = PACKAGE if package is None else Path(package)
    h = hashlib.sha256()
    for path in stamp_files(root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    for part in _toolchain():
        h.update(part.encode())
        h.update(b"\0")
    stamp = h.hexdigest()[:16]
    if package is None:
        _STAMP = stamp
    return stamp


def _toolchain() -> list[str]:
    import llvmlite
    from numba.core import config

    parts = [sys.version, numba.__version__, llvmlite.__version__, _dist_version("numba-cuda")]
    try:
        from llvmlite import binding as ll

        parts += [ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten()]
    except Exception as exc:  # noqa: BLE001 - an LLVM without host queries: stamp says so
        parts.append(f"host cpu unknown: {type(exc).__name__}")
    for name in ("CPU_NAME", "CPU_FEATURES", "BOUNDSCHECK", "OPT", "FASTMATH"):
        parts.append(f"{name}={getattr(config, name, None)}")
    return parts


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} absent"


def source_key(source: str, flags: str = "") -> str:
    """The hash that names a kernel file: source, flags and :func:`sources_stamp`."""
    h = hashlib.sha256()
    for part in (source, numba.__version__, flags, sources_stamp()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


# -- folders and the manifest -----------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Store:
    """One cache folder: its manifest, its lock, and whether this process may write to it."""

    def __init__(self, root: Path, writable: bool):
        self.root = Path(os.path.abspath(root))
        self.writable = writable
        self._sig: tuple[int, int, int] | None = None
        self._entries: dict[str, str] = {}
        self._pruned = False

    def rel(self, path: str | os.PathLike) -> str:
        return Path(os.path.relpath(os.path.abspath(path), self.root)).as_posix()

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Writers hold the lock exclusively across file + manifest, readers share it."""
        fd = None
        if fcntl is not None:
            try:
                if self.writable:
                    fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
                else:
                    fd = os.open(self.root / _LOCK, os.O_RDONLY)
            except OSError:
                fd = None  # a read-only folder without a lock file: nobody writes there
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def entries(self) -> dict[str, str] | None:
        """The manifest's ``{relative path: sha256}`` (call under the lock); None if damaged."""
        path = self.root / MANIFEST
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._sig, self._entries = None, {}
            return {}
        except OSError:
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig:
            return self._entries
        try:
            doc = json.loads(path.read_bytes())
            files = doc["files"] if doc.get("format") == _MANIFEST_FORMAT else None
            if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()
            ):
                raise ValueError("not a convforge cache manifest")
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            _warn(
                f"the kernel cache manifest {path} is damaged; "
                "every file it should list is ignored and rebuilt",
                key=("manifest", str(path), sig),
            )
            return None
        self._sig, self._entries = sig, files
        return files

    def _save_entries(self, entries: dict[str, str]) -> None:
        doc = {"format": _MANIFEST_FORMAT, "files": entries}
        path = atomic_write(self.root / MANIFEST, json.dumps(doc, sort_keys=True, indent=0), mode=0o644)
        st = os.stat(path)
        self._sig, self._entries = (st.st_ino, st.st_mtime_ns, st.st_size), entries

    def read_verified(self, path: str | os.PathLike) -> bytes | None:
        """The bytes of ``path`` if the manifest vouches for them; else None (and discarded)."""
        rel = self.rel(path)
        with self.locked(exclusive=False):
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                data, reason, quiet = None, f"it cannot be read ({exc.strerror})", False
            else:
                entries = self.entries()
                want = None if entries is None else entries.get(rel)
                if want is not None and want == _sha256(data):
                    return data
                quiet = entries is None  # the damaged manifest was reported once
                reason = (
                    "it is not in the cache manifest (not written by convforge)"
                    if want is None
                    else "its SHA-256 differs from the cache manifest (damaged)"
                )
        self.discard(path, data, reason, quiet=quiet)
        return None

    def discard(self, path: str | os.PathLike, seen: bytes | None, reason: str, quiet: bool = False) -> None:
        """Report ``path`` once and delete it (if this folder is ours to write)."""
        if not quiet:
            action = "deleted it and rebuilding" if self.writable else "compiling without it"
            digest = None if seen is None else _sha256(seen)
            _warn(f"ignored kernel cache file {path}: {reason}; {action}", key=(str(path), digest))
        if not self.writable:
            return
        rel = self.rel(path)
        with contextlib.suppress(OSError), self.locked(exclusive=True):
            entries = dict(self.entries() or {})
            try:
                current = Path(path).read_bytes()
            except FileNotFoundError:
                current = None
            if current is not None and entries.get(rel) == _sha256(current):
                return  # another process rebuilt it meanwhile
            if current is not None:
                os.unlink(path)
            if rel in entries:
                del entries[rel]
                self._save_entries(entries)

    def write(self, path: str | os.PathLike, data: bytes) -> bool:
        """Write ``path`` atomically and record it in the manifest; False if not possible."""
        if not self.writable:
            return False
        rel = self.rel(path)
        try:
            with self.locked(exclusive=True):
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(path, data, mode=0o644)
                entries = dict(self.entries() or {})
                if not self._pruned:  # once per process: forget files deleted since
                    entries = {k: v for k, v in entries.items() if (self.root / k).is_file()}
                    self._pruned = True
                entries[rel] = _sha256(data)
                self._save_entries(entries)
            return True
        except OSError as exc:
            _warn(
                f"cannot write to the kernel cache {self.root} ({exc}); compiling what is missing in memory",
                key=("write", str(self.root)),
            )
            return False


class _Layout:
    """Where this process reads and writes cache files for one configured folder."""

    def __init__(self, write: _Store, read: list[_Store], static: _Store):
        self.write = write
        self.read = read  # looked in, in order, for generated modules
        self.static = static  # holds the static kernels' Numba cache


_LAYOUTS: dict[str, _Layout] = {}
_STORES: dict[str, _Store] = {}
#: Numba cache folders handed out by the locator -> the store whose manifest covers them
_CACHE_PATHS: dict[str, _Store] = {}


def _cache_root() -> Path:
    root = os.environ.get("CONVFORGE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "convforge"
    )
    return Path(os.path.abspath(root))


def _store(root: Path, writable: bool) -> _Store:
    store = _STORES.get(str(root))
    if store is None or store.writable != writable:
        store = _STORES[str(Path(os.path.abspath(root)))] = _Store(root, writable)
    return store


def _layout() -> _Layout:
    root = _cache_root()
    layout = _LAYOUTS.get(str(root))
    if layout is None:
        layout = _LAYOUTS[str(root)] = _resolve(root)
    return layout


def _resolve(root: Path) -> _Layout:
    kind, reason = _check_root(root)
    if kind is None:
        store = _store(root, writable=True)
        return _Layout(store, [store], store)
    private = _store(_private_folder(), writable=True)
    if kind == "read-only":
        ro = _store(root, writable=False)
        _warn(
            f"the kernel cache {root} is read-only: using the files in it that verify "
            f"and compiling the rest into a private temporary cache {private.root}"
        )
        static = ro if (root / f"static-{sources_stamp()}").is_dir() else private
        return _Layout(private, [ro, private], static)
    _warn(f"the kernel cache {root} {reason}; using a private temporary cache {private.root}")
    return _Layout(private, [private], private)


def _check_root(root: Path) -> tuple[str | None, str]:
    """(None | "read-only" | "unsafe", why): may convforge use ``root``, and how."""
    if root.exists() and not root.is_dir():
        return "unsafe", "is not a directory"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        if not root.is_dir():
            return "unsafe", f"cannot be created ({exc.strerror or exc})"
    try:
        st = root.stat()
    except OSError as exc:
        return "unsafe", f"cannot be inspected ({exc.strerror or exc})"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return "unsafe", f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if os.name == "posix" and st.st_mode & 0o022:
        return "unsafe", f"is writable by group or others (mode {st.st_mode & 0o777:o})"
    try:
        tempfile.TemporaryFile(dir=root).close()
    except OSError:
        return "read-only", ""
    return None, ""


def _private_folder() -> Path:
    try:
        path = tempfile.mkdtemp(prefix="convforge-cache-")
    except OSError as exc:
        raise BackendError(
            f"the kernel cache {_cache_root()} is unusable and no private temporary folder "
            f"can be made in {tempfile.gettempdir()} ({exc.strerror or exc}); set $CONVFORGE_CACHE_DIR"
        ) from None
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


def cache_dir() -> Path:
    """The folder this process writes kernel files to: ``$CONVFORGE_CACHE_DIR`` or
    ``~/.cache/convforge`` (created), or a private temporary one (see the module docstring)."""
    return _layout().write.root


# -- generated modules --------------------------------------------------------------------------
def load_module(source: str, *, prefix: str = "kernel", flags: str = "", target: str = "cpu") -> ModuleType:
    """Write ``source`` to the cache (once) and run it as a registered module.

    ``target`` ``"cuda"`` also verifies numba-cuda's cache files (imported on first use,
    so that the simulator switch is read when the first CUDA graph compiles).
    """
    key = source_key(source, flags)
    modname = f"{_GENERATED}{prefix}_{key}"
    if modname in _MODULES:
        return _MODULES[modname]
    install()
    if target == "cuda":
        _install_cuda()
    path = _place(f"{modname}.py", source.encode())
    code = compile(source, str(path), "exec", dont_inherit=True)
    spec = importlib.machinery.ModuleSpec(modname, None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[modname] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    _MODULES[modname] = module
    return module


def _place(name: str, data: bytes) -> Path:
    """A path in the cache holding exactly ``data``: found, or written (damaged ones replaced)."""
    layout = _layout()
    for store in layout.read:
        path = store.root / name
        try:
            found = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            store.discard(path, None, f"it cannot be read ({exc.strerror})")
            continue
        if found == data:
            return path
        store.discard(path, found, "it differs from the source convforge generated (damaged)")
    path = layout.write.root / name
    layout.write.write(path, data)  # on failure the module still runs, compiled from memory
    return path


# -- small records (tuning logs) ----------------------------------------------------------------
def read_record(name: str) -> bytes | None:
    """The bytes of record ``name`` (a file convforge wrote to the cache folder, such as a
    tuning log), if the manifest vouches for them; None when absent, and a damaged or
    planted file is discarded with one :class:`CacheWarning`, like a kernel file."""
    for store in _layout().read:
        data = store.read_verified(store.root / name)
        if data is not None:
            return data
    return None


def write_record(name: str, data: bytes) -> bool:
    """Write record ``name`` atomically into the cache folder and the manifest; False when
    the cache cannot be written (the record is then only kept in memory by its owner)."""
    layout = _layout()
    return layout.write.write(layout.write.root / name, data)


# -- the Numba hooks ----------------------------------------------------------------------------
def install() -> str:
    """Route Numba's cache for every convforge function through the verified cache; return
    :func:`sources_stamp`. Idempotent; call before kernel modules are imported (Numba picks
    a function's cache locator when it is decorated)."""
    from numba.core import caching, config

    _hook(caching)
    if getattr(config, "CACHE_LOCATOR_CLASSES", None):
        _warn(
            "NUMBA_CACHE_LOCATOR_CLASSES replaces convforge's cache locator; "
            "its kernel cache files are not verified"
        )
    return sources_stamp()


def _install_cuda() -> None:
    try:
        from numba.cuda.core import caching  # numba-cuda keeps its own copy of the machinery
    except ImportError:
        return  # numba.cuda on numba.core.caching, already hooked
    _hook(caching)


def _hook(caching: ModuleType) -> bool:
    if getattr(caching, "_convforge_hooked", False):
        return True
    impl = getattr(caching, "CacheImpl", None)
    base = getattr(caching, "_CacheLocator", None)
    cache_file = getattr(caching, "IndexDataCacheFile", None)
    methods = ("_load_index", "_save_index", "_load_data", "_save_data", "_data_path", "_dump")
    if (
        impl is None
        or base is None
        or cache_file is None
        or not isinstance(getattr(impl, "_locator_classes", None), list)
        or not all(hasattr(cache_file, m) for m in methods)
    ):
        _warn(
            f"{caching.__name__} is not the Numba cache convforge knows; "
            "its kernel cache files are not verified"
        )
        return False
    impl._locator_classes.insert(0, _locator_class(base))
    caching.IndexDataCacheFile = _verified_file_class(cache_file)
    caching._convforge_hooked = True
    return True


def _locate(py_file: str) -> tuple[str, str, str] | None:
    """(cache folder, stamp, disambiguator tag) for a convforge function's file, else None."""
    real = os.path.realpath(py_file)
    if real.endswith(".py") and real.startswith(str(PACKAGE) + os.sep):
        layout = _layout()
        folder = layout.static.root / f"static-{sources_stamp()}"
        _CACHE_PATHS[str(folder)] = layout.static
        # modules of different folders share base names (kernels/conv.py, ir/ops/conv.py)
        tag = Path(real).parent.relative_to(PACKAGE).as_posix().replace("/", ".")
        return str(folder), sources_stamp(), tag
    name = os.path.basename(py_file)
    if name.startswith(_GENERATED) and name.endswith(".py"):
        store = _STORES.get(os.path.dirname(os.path.abspath(py_file)))
        if store is None:
            return None
        folder = store.root / "__pycache__"
        _CACHE_PATHS[str(folder)] = store
        return str(folder), name[:-3], ""
    return None


def _locator_class(base: type) -> type:
    class ConvforgeCacheLocator(base):  # type: ignore[misc, valid-type]
        """Numba's cache folder for a convforge function: static kernels (any file of the
        package) under ``static-<stamp>``, generated modules under ``__pycache__`` beside
        them, all stamped by convforge rather than by one file's contents."""

        def __init__(self, py_func: Any, py_file: str, cache_path: str, stamp: str, tag: str):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = cache_path
            self._stamp = stamp
            self._tag = tag

        def ensure_cache_path(self) -> None:
            store = _CACHE_PATHS.get(self._cache_path)
            if store is not None and store.writable:
                with contextlib.suppress(OSError):
                    os.makedirs(self._cache_path, mode=0o700, exist_ok=True)

        def get_cache_path(self) -> str:
            return self._cache_path

        def get_source_stamp(self) -> str:
            return self._stamp

        def get_disambiguator(self) -> str:
            return f"{self._lineno}-{self._tag}" if self._tag else str(self._lineno)

        @classmethod
        def from_function(cls, py_func: Any, py_file: str):
            where = _locate(py_file)
            return None if where is None else cls(py_func, py_file, *where)

    return ConvforgeCacheLocator


def _verified_file_class(base: type) -> type:
    class VerifiedIndexDataCacheFile(base):  # type: ignore[misc, valid-type]
        """Numba's index/data cache files, checked against the manifest before unpickling.

        For a folder the convforge locator handed out, the bytes of an ``.nbi`` or
        ``.nbc`` are read once, compared with their SHA-256 in the manifest and only then
        unpickled; a file that does not verify is deleted and reported, and Numba
        compiles as if it were absent. Writes go through the manifest's atomic writer.
        Any other folder (a user's own ``cache=True`` functions) is left to Numba.
        """

        def __init__(self, cache_path: str, filename_base: str, source_stamp: Any):
            super().__init__(cache_path, filename_base, source_stamp)
            self._cf_store = _CACHE_PATHS.get(os.path.abspath(cache_path))

        def _load_index(self) -> dict:
            store = self._cf_store
            if store is None:
                return super()._load_index()
            data = store.read_verified(self._index_path)
            if data is None:
                return {}
            try:
                stream = io.BytesIO(data)
                version = pickle.load(stream)
                if version != self._version:
                    return {}
                stamp, overloads = pickle.loads(stream.read())
                if not isinstance(overloads, dict):
                    raise TypeError(f"index holds a {type(overloads).__name__}")
            except Exception as exc:  # noqa: BLE001 - verified, yet unreadable: rebuild
                store.discard(self._index_path, data, f"it does not unpickle ({type(exc).__name__})")
                return {}
            return overloads if stamp == self._source_stamp else {}

        def _save_index(self, overloads: dict) -> None:
            store = self._cf_store
            if store is None:
                return super()._save_index(overloads)
            stream = io.BytesIO()
            pickle.dump(self._version, stream, protocol=-1)
            stream.write(self._dump((self._source_stamp, overloads)))
            store.write(self._index_path, stream.getvalue())

        def _load_data(self, name: str) -> Any:
            store = self._cf_store
            if store is None:
                return super()._load_data(name)
            path = self._data_path(name)
            data = store.read_verified(path)
            if data is None:
                raise FileNotFoundError(path)  # Numba's load() treats it as a miss
            try:
                return pickle.loads(data)
            except Exception as exc:  # noqa: BLE001 - verified, yet unreadable: rebuild
                store.discard(path, data, f"it does not unpickle ({type(exc).__name__})")
                raise FileNotFoundError(path) from None

        def _save_data(self, name: str, data: Any) -> None:
            store = self._cf_store
            if store is None:
                return super()._save_data(name, data)
            store.write(self._data_path(name), self._dump(data))

    return VerifiedIndexDataCacheFile


# -- compile-vs-load statistics -----------------------------------------------------------------
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


def debug_enabled() -> bool:
    return os.environ.get("CONVFORGE_DEBUG", "") not in ("", "0")


def _short(sig: Any) -> str:
    """``(f32[4d], i64, ...)``: a signature short enough for one log line."""
    parts = []
    for t in sig:
        dtype = getattr(t, "dtype", None)
        parts.append(f"{dtype}[{t.ndim}d]" if dtype is not None else str(t))
    return "(" + ", ".join(parts) + ")"
