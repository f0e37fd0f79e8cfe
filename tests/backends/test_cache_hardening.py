"""The kernel cache trusts nothing it did not write: damaged, truncated, emptied or planted
files are discarded and rebuilt (one warning each), never loaded; the stamp covers every
kernel dependency; unusable folders fall back, read-only ones are still read.

The end-to-end tests run a small graph (a static parallel kernel, ``dropout``, calling
``ir/ops/rng.py``; a generated kernel; the driver) in child processes against a temporary
``$CONVFORGE_CACHE_DIR``: one cold compile is shared by the module, each case runs on a
copy of it, and every child must exit normally (never by a signal).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from convforge.backends import cache

GRAPH = r"""
import json
import numpy as np
from convforge.backends import cache, numba_cpu
from convforge.ir.graph import Graph
from convforge.ir.types import TensorType as T

g = Graph("g")
x = g.add_input("x", T("f32", ("N", 8)))
step = g.add_input("step", T("i64", ()))
g.set_outputs([g.call("leaky_relu", g.call("dropout", x, step, p=0.5, seed=3), negative_slope=0.2)])
xv = (np.arange(32, dtype=np.float32).reshape(4, 8) - 16) / 4
(out,) = numba_cpu.compile_graph(g).run({"x": xv, "step": np.array(1)})
s = cache.stats()
print(json.dumps({"compiled": s["compiled"], "loaded": s["loaded"], "out": out.tolist(),
                  "cache": str(cache.cache_dir())}))
"""


def run_child(root: Path, script: str = GRAPH, prefix: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "CONVFORGE_CACHE_DIR": str(root)}
    env.pop("CONVFORGE_DEBUG", None)
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode >= 0, f"child died by signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["warnings"] = [line for line in proc.stderr.splitlines() if "CacheWarning" in line]
    return result


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> tuple[Path, dict]:
    """A cache filled by one cold run of the graph, and that run's result."""
    root = tmp_path_factory.mktemp("warm") / "cache"
    cold = run_child(root)
    assert cold["compiled"] >= 2 and not cold["warnings"], cold
    return root, cold


def copy_of(warm: tuple[Path, dict], dest: Path) -> Path:
    shutil.copytree(warm[0], dest, symlinks=True)
    return dest


def test_warm_cache_loads_everything_and_the_manifest_covers_every_file(warm):
    root, cold = warm
    again = run_child(root)
    assert (again["compiled"], again["loaded"]) == (0, cold["compiled"])
    assert again["out"] == cold["out"] and not again["warnings"]
    manifest = json.loads((root / cache.MANIFEST).read_text())["files"]
    on_disk = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name not in (cache.MANIFEST, ".lock") and not p.name.endswith(".tmp")
    }
    assert on_disk == set(manifest)
    for rel, digest in manifest.items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    # the op module's njit helper (ir/ops/rng.py) is cached here, not in the package's __pycache__
    assert any(rel.startswith("static-") and "rng.hash_uniform" in rel for rel in manifest)
    assert not list(root.rglob("*.pyc"))


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x80  # in a .py this also makes invalid UTF-8
    return bytes(b)


DAMAGE = {"bit-flip": _flip, "truncate": lambda d: d[: len(d) // 2], "empty": lambda d: b""}


@pytest.mark.parametrize("mode", DAMAGE)
def test_damaged_cache_files_are_rebuilt_never_loaded(warm, tmp_path, mode):
    """Each of .nbi, .nbc and generated .py damaged at once: the run is correct and warns
    once per file it had to ignore; the files it rebuilt load on the next run."""
    root = copy_of(warm, tmp_path / "cache")
    static = next(root.glob("static-*"))
    targets = {
        "nbi": [next(static.glob("norm.dropout-*.nbi"))],
        "nbc": [*static.glob("rng.hash_uniform-*.nbc"), *(root / "__pycache__").glob("*.nbc")],
        "py": [*root.glob("convforge_gen_*.py")],
    }
    for paths in targets.values():
        assert paths
        for p in paths:
            p.write_bytes(DAMAGE[mode](p.read_bytes()))
    result = run_child(root)
    assert result["out"] == warm[1]["out"] and result["compiled"] >= 1
    damaged = {str(p) for paths in targets.values() for p in paths}
    named = {w.split("ignored kernel cache file ", 1)[1].split(": ", 1)[0] for w in result["warnings"]}
    assert named <= damaged, result["warnings"]
    assert str(targets["nbi"][0]) in named
    assert any(n.endswith(".nbc") for n in named) and any(n.endswith(".py") for n in named)
    if mode == "bit-flip":  # (one mode is enough to check the rebuilt files verify)
        rebuilt = run_child(root)
        assert (rebuilt["compiled"], rebuilt["out"], rebuilt["warnings"]) == (0, warm[1]["out"], [])


class _Marker:
    """A pickle that creates a file when unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_planted_pickle_index_never_runs(warm, tmp_path):
    root = copy_of(warm, tmp_path / "cache")
    marker = tmp_path / "pickle-ran"
    planted = [next(next(root.glob("static-*")).glob("norm.dropout-*.nbi")), *root.glob("__pycache__/*.nbi")]
    for p in planted:
        p.write_bytes(pickle.dumps(_Marker(marker)))
    pickle.loads(planted[0].read_bytes())  # sanity: the plant is live, any unpickling runs it
    assert marker.exists()
    marker.unlink()
    result = run_child(root)
    assert not marker.exists()
    assert result["out"] == warm[1]["out"]
    assert len(result["warnings"]) == len(planted)
    assert all("differs from the cache manifest" in w for w in result["warnings"])


def test_planted_pyc_beside_a_driver_is_never_executed(warm, tmp_path):
    """A bytecode file stamped with the source's mtime and size (what Python's import
    checks) next to every generated module: it would run on a normal import, never here."""
    demo = tmp_path / "demo.py"
    demo.write_text("X = 1\n")
    _plant_pyc(demo, "X = 42\n")
    spec = importlib.util.spec_from_file_location("demo_planted", demo)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.X == 42  # the technique works on a plain import

    root = copy_of(warm, tmp_path / "cache")
    marker = tmp_path / "pyc-ran"
    generated = list(root.glob("convforge_gen_*.py"))
    for py in generated:
        _plant_pyc(py, f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n" + py.read_text())
    result = run_child(root)
    assert not marker.exists()
    assert result["out"] == warm[1]["out"] and result["compiled"] == 0


def _plant_pyc(py: Path, source: str) -> None:
    from importlib import _bootstrap_external

    st = py.stat()
    code = compile(source, str(py), "exec")
    pyc = Path(importlib.util.cache_from_source(str(py)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(_bootstrap_external._code_to_timestamp_pyc(code, st.st_mtime, st.st_size))


def test_two_processes_compile_into_one_fresh_cache(tmp_path):
    root = tmp_path / "cache"
    env = {**os.environ, "CONVFORGE_CACHE_DIR": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GRAPH], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "CacheWarning" not in err, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert results[0]["out"] == results[1]["out"]
    after = run_child(root)
    assert after["compiled"] == 0 and not after["warnings"] and after["out"] == results[0]["out"]


LOCATE = r"""
import json, sys
from numba.core.dispatcher import Dispatcher
from convforge.backends.numba_cpu import kernels
import convforge.backends.numba_cpu.codegen
kernels.load_all()
found = {}
for name, mod in list(sys.modules.items()):
    if not name.startswith("convforge"):
        continue
    for attr, obj in list(vars(mod).items()):
        c = getattr(obj, "_cache", None) if isinstance(obj, Dispatcher) else None
        if c is not None and type(c).__name__ != "NullCache":
            where = obj.py_func.__code__.co_filename
            found[name + "." + attr] = [c.cache_path, type(c._cache_file).__name__, where]
print(json.dumps(found))
"""


def test_every_convforge_cached_function_is_cached_under_the_cache_dir(tmp_path):
    root = tmp_path / "cache"
    env = {**os.environ, "CONVFORGE_CACHE_DIR": str(root)}
    proc = subprocess.run([sys.executable, "-c", LOCATE], env=env, capture_output=True, text=True, check=True)
    found = json.loads(proc.stdout)
    assert len(found) > 20
    for name, (path, file_class, _) in found.items():
        assert Path(path).is_relative_to(root), (name, path)
        assert file_class == "VerifiedIndexDataCacheFile", name
    files = {
        Path(f).resolve().relative_to(cache.PACKAGE).as_posix()
        for _, _, f in found.values()
        if Path(f).resolve().is_relative_to(cache.PACKAGE)
    }
    assert "ir/ops/rng.py" in files  # kernels/norm.py njit's rng.hash_uniform


# -- the stamp ---------------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the files the stamp hashes, plus one it must ignore."""
    dest = tmp_path / "convforge"
    for rel in cache.STAMP_SOURCES:
        src = cache.PACKAGE / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copy2(cache.PACKAGE / "training.py", dest / "training.py")
    return dest


def test_stamp_covers_every_kernel_dependency(tree):
    files = {p.relative_to(cache.PACKAGE).as_posix() for p in cache.stamp_files()}
    for rel in (
        "ir/ops/rng.py",
        "ir/graph.py",
        "backends/numba_cpu/kernels/norm.py",
        "backends/numba_cpu/codegen.py",
        "backends/numba_cuda/codegen.py",
        "backends/cache.py",
    ):
        assert rel in files, rel
    base = cache.sources_stamp(tree)
    assert cache.sources_stamp(tree) == base
    (tree / "training.py").write_text("# not a kernel dependency\n")
    assert cache.sources_stamp(tree) == base
    for rel in ("ir/ops/rng.py", "backends/numba_cpu/kernels/conv.py", "backends/numba_cuda/codegen.py"):
        path = tree / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert cache.sources_stamp(tree) != base, rel
        path.write_bytes(original)
    assert cache.sources_stamp(tree) == base


def test_stamp_covers_toolchain_and_cpu(tree, monkeypatch):
    import llvmlite.binding as ll
    import numba

    base = cache.sources_stamp(tree)
    with monkeypatch.context() as m:
        m.setattr(numba, "__version__", "0.0.0")
        assert cache.sources_stamp(tree) != base
    with monkeypatch.context() as m:
        m.setattr(ll, "get_host_cpu_name", lambda: "some-other-cpu")
        assert cache.sources_stamp(tree) != base
    # generated file names carry the stamp
    key = cache.source_key("x = 1\n")
    monkeypatch.setattr(cache, "_STAMP", "0" * 16)
    assert cache.source_key("x = 1\n") != key


# -- Numba's file machinery, exercised directly (CPU and numba-cuda's copy) --------------------
@pytest.mark.parametrize("module", ["numba.core.caching", "numba.cuda.core.caching"])
def test_numba_cache_files_are_verified_before_unpickling(module, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(tmp_path / "cache"))
    cache.install()
    if "cuda" in module:
        cache._install_cuda()
    caching = importlib.import_module(module)
    assert caching.IndexDataCacheFile.__name__ == "VerifiedIndexDataCacheFile"
    locator_class = caching.CacheImpl._locator_classes[0]
    assert locator_class.__name__ == "ConvforgeCacheLocator"

    # what Numba does for a function of a generated module in the cache
    py_file = str(cache.cache_dir() / f"convforge_gen_test_{module.split('.')[1]}.py")
    locator = locator_class.from_function(run_child, py_file)
    base = "convforge_gen_test.kernel-1.py311"

    def files():
        return caching.IndexDataCacheFile(locator.get_cache_path(), base, locator.get_source_stamp())

    locator.ensure_cache_path()
    files().save(("sig",), {"payload": 1})
    assert files().load(("sig",)) == {"payload": 1}
    folder = Path(locator.get_cache_path())
    nbc, nbi = folder / f"{base}.1.nbc", folder / f"{base}.nbi"

    nbc.write_bytes(_flip(nbc.read_bytes()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert files().load(("sig",)) is None
    assert [str(w.message) for w in caught if w.category is cache.CacheWarning] == [
        f"ignored kernel cache file {nbc}: its SHA-256 differs from the cache manifest (damaged); "
        "deleted it and rebuilding"
    ]
    assert not nbc.exists()

    files().save(("sig",), {"payload": 2})
    marker = tmp_path / "ran"
    nbi.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.warns(cache.CacheWarning, match="differs from the cache manifest"):
        assert files().load(("sig",)) is None
    assert not marker.exists() and not nbi.exists()

    # a user's own Numba cache folder is left to Numba
    user = caching.IndexDataCacheFile(str(tmp_path / "user"), "mine.f-1.py311", "s")
    os.makedirs(tmp_path / "user")
    user.save(("sig",), {"payload": 3})
    assert user.load(("sig",)) == {"payload": 3}


# -- folders that cannot be trusted or written ---------------------------------------------------
TINY = "from numba import njit\n\n\n@njit(cache=True)\ndef kernel(x):\n    return x * 2.0 + 1.0\n"


def _load_tiny(tag: str, match: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = cache.load_module(f"# {tag}\n{TINY}", prefix="test")
        assert module.kernel(3.0) == 7.0
    lines = [str(w.message) for w in caught if w.category is cache.CacheWarning]
    assert len(lines) == 1 and match in lines[0], lines
    assert cache.cache_dir().name.startswith("convforge-cache-")
    assert Path(module.__file__).is_relative_to(cache.cache_dir())


def test_cache_path_that_is_a_regular_file(tmp_path, monkeypatch):
    path = tmp_path / "cachefile"
    path.write_bytes(b"mine")
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(path))
    _load_tiny(str(path), "is not a directory")
    assert path.read_bytes() == b"mine"


def test_cache_that_cannot_be_created(tmp_path, monkeypatch):
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    _load_tiny(str(tmp_path), "cannot be created")


def test_cache_writable_by_others_is_not_used(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(root))
    _load_tiny(str(root), "writable by group or others (mode 777)")
    assert list(root.iterdir()) == []


def test_cache_owned_by_someone_else_is_not_used(tmp_path, monkeypatch):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("CONVFORGE_CACHE_DIR", str(root))
    monkeypatch.setattr(cache.os, "geteuid", lambda: root.stat().st_uid + 4242)
    _load_tiny(str(root), "is owned by uid")
    assert list(root.iterdir()) == []


def _read_only(path: Path) -> tuple[str, ...]:
    """Make ``path`` read-only for a child: chmod when not root (root ignores modes), else a
    read-only bind mount in a private mount namespace (the returned command prefix)."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return ()
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a folder read-only for root")
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount, str(path), "sh", "-c", f"! touch {path}/.probe"],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("running as root and read-only bind mounts are not permitted here")
    return ("unshare", "--mount", "sh", "-c", mount, str(path))


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)


def test_warm_read_only_cache_is_still_used(warm, tmp_path, restore_modes):
    root = copy_of(warm, tmp_path / "cache")
    result = run_child(root, prefix=_read_only(root))
    assert (result["compiled"], result["loaded"]) == (0, warm[1]["compiled"])
    assert result["out"] == warm[1]["out"]
    assert len(result["warnings"]) == 1 and "is read-only" in result["warnings"][0]
    assert Path(result["cache"]).parent == Path(tempfile.gettempdir())


TINY_CHILD = f"""
import json
from convforge.backends import cache
m = cache.load_module({TINY!r}, prefix="test")
print(json.dumps({{"out": m.kernel(3.0), "compiled": sum(m.kernel.stats.cache_misses.values()),
                  "cache": str(cache.cache_dir())}}))
"""


def test_cold_read_only_cache_and_read_only_parent_still_run(tmp_path, restore_modes):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    result = run_child(empty, TINY_CHILD, prefix=_read_only(empty))
    assert (result["out"], result["compiled"]) == (7.0, 1)
    assert len(result["warnings"]) == 1 and "is read-only" in result["warnings"][0]
    assert list(empty.iterdir()) == []

    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    result = run_child(parent / "cache", TINY_CHILD, prefix=_read_only(parent))
    assert result["out"] == 7.0
    assert len(result["warnings"]) == 1 and "cannot be created" in result["warnings"][0]
