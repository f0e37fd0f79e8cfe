"""Compile a program's kernels in worker processes, into the kernel cache.

Numba compiles a kernel the first time it is called with new argument types, one kernel
after another, in the calling thread: on an empty cache a LeNet-5 training program spends
most of half a minute there. This module takes that work off the caller:

1. :func:`signatures` runs the generated driver once with *recording stand-ins* for the
   kernels: the driver binds arrays and calls kernels but computes nothing itself, so the
   stand-ins see exactly the argument types the real calls will have, in milliseconds.
2. :func:`pending` keeps the (kernel, signature) pairs Numba's disk cache does not hold.
3. :class:`Background` writes them as jobs (kernel origin plus the signature, encoded as
   JSON: a job file is data, never code) to a private folder and starts worker processes
   (``python -m convforge.backends.numba_cpu.precompile FOLDER``). Each worker claims
   jobs one at a time (an exclusive file create per job, so two workers share the list
   without a coordinator), compiles them with ``dispatcher.compile(signature)`` and
   Numba saves the result through the verified kernel cache, as a first call would.
4. Once the workers are done the caller's own first call loads every kernel from the cache.

A job that fails in a worker (or that cannot be described: a type this encoding does not
know) is simply compiled by the caller on its first call, as without workers.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: worker processes to start (default: the number of CPUs, at most the number of jobs)
WORKERS_ENV = "CONVFORGE_COMPILE_WORKERS"
#: fewer missing kernels than this compile in the caller: a worker's start (importing
#: Numba and convforge, about a second) would cost more than it saves
MIN_JOBS = 4
_GENERATED_PREFIX = "convforge_gen_"


# -- what to compile ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One kernel signature to compile: where the kernel comes from and its argument types."""

    label: str
    #: ``{"module": ..., "function": ...}`` (a static kernel) or ``{"source": text}`` (generated)
    origin: dict
    #: the argument types, encoded by :func:`encode_type`
    signature: tuple

    def key(self) -> str:
        return json.dumps([self.origin, self.signature], sort_keys=True)


def origin_of(dispatcher: Any, source: str | None = None) -> dict | None:
    """Where a worker finds ``dispatcher``: the generated module ``source`` it was loaded
    from, or its static module and name; None for a kernel a worker cannot reload."""
    if source is not None:
        return {"source": source}
    py_func = getattr(dispatcher, "py_func", None)
    if py_func is None or not hasattr(dispatcher, "compile"):
        return None
    module = sys.modules.get(py_func.__module__)
    if module is None or getattr(module, py_func.__name__, None) is not dispatcher:
        return None  # made by a factory: no import path leads to this object
    return {"module": py_func.__module__, "function": py_func.__name__}


class _Recorder:
    """Stands in for a kernel in the driver: records the Numba argument types of each call."""

    def __init__(self, dispatcher: Any, seen: list[tuple[Any, tuple]]):
        self.dispatcher = dispatcher
        self.seen = seen

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        d = self.dispatcher
        pos = [d.typeof_pyval(a) for a in args]
        kws = {k: d.typeof_pyval(v) for k, v in kwargs.items()}
        _, folded = d.fold_argument_types(pos, kws)
        self.seen.append((d, tuple(folded)))


def signatures(run: Any, dispatchers: Sequence[Any], call_args: tuple) -> list[tuple[Any, tuple]]:
    """(dispatcher, argument types) of every kernel call the driver ``run`` makes.

    ``call_args`` are the driver's arguments but the kernels ``(N, I, V, O)``; only Numba
    dispatchers are recorded (a host call is skipped). The driver's own arrays are bound,
    never computed, so nothing is written.
    """
    seen: list[tuple[Any, tuple]] = []
    stand_ins = tuple(
        _Recorder(d, seen) if hasattr(d, "fold_argument_types") else (lambda *a, **k: None)
        for d in dispatchers
    )
    run(*call_args, stand_ins)
    unique: dict[tuple[int, tuple], tuple[Any, tuple]] = {}
    for d, sig in seen:
        unique.setdefault((id(d), sig), (d, sig))
    return list(unique.values())


def is_cached(dispatcher: Any, sig: tuple) -> bool:
    """Whether ``dispatcher`` has ``sig`` compiled in this process or in Numba's disk cache."""
    if tuple(sig) in dispatcher.overloads:
        return True
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None or not hasattr(cache, "_index_key"):
        return False
    try:
        index = cache_file._load_index()
        return cache._index_key(tuple(sig), dispatcher.targetctx.codegen()) in index
    except Exception:  # an unreadable index is a miss, as it is to Numba
        return False


def code_size(dispatcher: Any) -> int:
    """Bytecode bytes of ``dispatcher``'s function and of every ``@njit`` function it calls,
    transitively: Numba re-optimises a callee's code inside each caller, so this is what
    its compile has to chew through (a rough order, used to start the longest jobs first)."""
    seen: set[int] = set()
    total = 0
    todo = [dispatcher]
    while todo:
        d = todo.pop()
        py_func = getattr(d, "py_func", None)
        if py_func is None or id(py_func) in seen:
            continue
        seen.add(id(py_func))
        code = py_func.__code__
        total += len(code.co_code)
        names = py_func.__globals__
        todo += [names[n] for n in code.co_names if n in names and hasattr(names[n], "py_func")]
    return total


def pending(found: list[tuple[Any, tuple]], origins: dict[int, tuple[str, dict]]) -> list[Job]:
    """The jobs for the recorded calls that are not compiled or cached yet, the largest
    first (:func:`code_size`: the workers then finish closer together).

    ``origins`` maps ``id(dispatcher)`` to its (label, origin); a call whose dispatcher has
    no origin, or whose types cannot be encoded, is left to the caller.
    """
    jobs: dict[str, Job] = {}
    found = sorted(found, key=lambda call: -code_size(call[0]))
    for d, sig in found:
        if id(d) not in origins or is_cached(d, sig):
            continue
        try:
            encoded = tuple(encode_type(t) for t in sig)
        except TypeError:
            continue
        label, origin = origins[id(d)]
        job = Job(label, origin, encoded)
        jobs.setdefault(job.key(), job)
    return list(jobs.values())


# -- types as JSON ------------------------------------------------------------------------------
def encode_type(t: Any) -> Any:
    """A Numba argument type as JSON data (arrays, numbers, booleans, tuples, omitted
    defaults, None); TypeError for anything else."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if isinstance(t, types.Array):
        return {"array": as_dtype(t.dtype).str, "ndim": t.ndim, "layout": t.layout, "readonly": not t.mutable}
    if isinstance(t, types.Boolean):
        return {"scalar": "bool"}
    if isinstance(t, (types.Integer, types.Float)):
        return {"scalar": as_dtype(t).str}
    if isinstance(t, types.UniTuple):
        return {"unituple": encode_type(t.dtype), "count": t.count}
    if isinstance(t, types.Tuple):
        return {"tuple": [encode_type(x) for x in t.types]}
    if isinstance(t, types.Omitted):
        if t.value is None or isinstance(t.value, (bool, int, float, str)):
            return {"omitted": t.value}
    if isinstance(t, types.NoneType):
        return {"none": True}
    raise TypeError(f"no JSON form for Numba type {t}")


def decode_type(data: Any) -> Any:
    """The Numba type :func:`encode_type` described."""
    from numba.core import types
    from numba.np.numpy_support import from_dtype

    if "array" in data:
        return types.Array(
            from_dtype(np.dtype(data["array"])),
            int(data["ndim"]),
            str(data["layout"]),
            readonly=bool(data["readonly"]),
        )
    if "scalar" in data:
        return types.boolean if data["scalar"] == "bool" else from_dtype(np.dtype(data["scalar"]))
    if "unituple" in data:
        return types.UniTuple(decode_type(data["unituple"]), int(data["count"]))
    if "tuple" in data:
        return types.Tuple([decode_type(x) for x in data["tuple"]])
    if "omitted" in data:
        return types.Omitted(data["omitted"])
    if "none" in data:
        return types.none
    raise ValueError(f"not an encoded Numba type: {data!r}")


# -- the workers --------------------------------------------------------------------------------
def worker_count(jobs: int) -> int:
    """Workers for ``jobs`` jobs: ``$CONVFORGE_COMPILE_WORKERS`` or the CPU count, at most ``jobs``."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    try:
        wanted = int(raw) if raw else (os.cpu_count() or 1)
    except ValueError:
        wanted = os.cpu_count() or 1
    return max(0, min(wanted, jobs))


class Background:
    """Worker processes compiling ``jobs`` into the kernel cache.

    :meth:`done` polls without waiting, :meth:`wait` blocks, :meth:`progress` counts the
    jobs finished. The job folder is removed when the workers are done (or at exit).
    """

    def __init__(self, jobs: Sequence[Job], workers: int | None = None):
        self.jobs = list(jobs)
        self.started = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="convforge-compile-"))
        self.finished_at: float | None = None
        from convforge.backends import cache

        payload = {
            # a worker whose sources differ (an edit since this process started) would fill
            # another stamp's folder: it stops instead, and this process compiles
            "stamp": cache.sources_stamp(),
            "jobs": [
                {"label": j.label, "origin": j.origin, "signature": list(j.signature)} for j in self.jobs
            ],
        }
        (self.folder / "jobs.json").write_text(json.dumps(payload))
        count = worker_count(len(self.jobs)) if workers is None else workers
        env = dict(os.environ)

        # workers write where this process reads: a private temporary cache included
        env["CONVFORGE_CACHE_DIR"] = str(cache.cache_dir())
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "convforge.backends.numba_cpu.precompile", str(self.folder)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        _RUNNING.append(self)

    def progress(self) -> int:
        """Jobs finished (compiled or failed) so far."""
        try:
            return sum(1 for name in os.listdir(self.folder) if name.startswith("done-"))
        except OSError:
            return len(self.jobs)

    def done(self) -> bool:
        """Whether every worker has exited (cleans up once they have)."""
        if self.finished_at is not None:
            return True
        if any(p.poll() is None for p in self.procs):
            return False
        self._finish()
        return True

    def wait(self, poll: Any = None) -> None:
        """Block until the workers are done; ``poll()`` (if given) is called every 0.2 s."""
        while not self.done():
            if poll is not None:
                poll()
            time.sleep(0.2)

    def stop(self) -> None:
        """End the workers now (what they compiled stays in the cache)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self._finish()

    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return end - self.started

    def _finish(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.perf_counter()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self in _RUNNING:
            _RUNNING.remove(self)


_RUNNING: list[Background] = []


@atexit.register
def _stop_all() -> None:
    for background in list(_RUNNING):
        background.stop()


def _resolve(origin: dict) -> Any:
    if "source" in origin:
        from convforge.backends import cache
        from convforge.backends.numba_cpu.codegen import FLAGS

        return cache.load_module(origin["source"], prefix="kernel", flags=FLAGS).kernel
    module = importlib.import_module(origin["module"])
    return getattr(module, origin["function"])


def work(folder: str | os.PathLike) -> int:
    """The worker loop: claim, compile and mark done each job of ``folder``; returns the
    number this worker compiled."""
    from convforge.backends.numba_cpu import kernels  # noqa: F401  (installs the cache hooks first)
    from convforge.backends.numba_cpu.runtime import configure_threads

    configure_threads()
    from convforge.backends import cache

    root = Path(folder)
    payload = json.loads((root / "jobs.json").read_text())
    if payload["stamp"] != cache.sources_stamp():
        return 0
    jobs = payload["jobs"]
    compiled = 0
    for i, job in enumerate(jobs):
        try:
            fd = os.open(root / f"claim-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue  # another worker has it
        except OSError:
            return compiled  # the folder is gone: the caller stopped waiting
        os.close(fd)
        began = time.perf_counter()
        try:
            dispatcher = _resolve(job["origin"])
            dispatcher.compile(tuple(decode_type(t) for t in job["signature"]))
            compiled += 1
            outcome = f"ok {time.perf_counter() - began:.2f} s"
        except Exception as exc:  # the caller compiles it on its first call instead
            outcome = f"failed: {type(exc).__name__}: {exc}"
        try:
            (root / f"done-{i}").write_text(outcome)
        except OSError:
            return compiled
    return compiled


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    work(sys.argv[1])
