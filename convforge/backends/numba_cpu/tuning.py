"""Per-layer algorithm choice by measurement, recorded on disk (``compile(..., tune=True)``).

cuDNN's benchmark mode and TVM's tuning logs, on a small scale: when a graph is compiled
with ``tune=True`` every layer that has more than one algorithm (``kernels/conv.py``:
im2col, Winograd or direct for a forward convolution) is timed once per candidate, at its own
geometry, and the fastest is recorded in a *tuning log*. The log is one JSON record per
(kernel sources and CPU, that is the kernel cache's stamp; threads) in the kernel cache
folder (``cache.read_record`` / ``write_record``): verified against the cache manifest
before it is read, written atomically, and read as data only. An entry that does not
parse as a choice among the layer's own candidates is ignored (with one warning) and
measured again, so a damaged or planted log can cost a measurement, never a wrong kernel.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping

from convforge.backends import cache

FORMAT = "convforge-tuning-log"
#: calls timed per candidate (after one untimed call that compiles or loads it); the minimum counts
REPEATS = 3

_LOGS: dict[str, dict[str, dict]] = {}
_WARNED: set[str] = set()


def record_name(threads: int) -> str:
    """The tuning log's record name for this kernel-source stamp and ``threads``."""
    return f"tuning-{cache.sources_stamp()[:20]}-t{threads}.json"


def _load(name: str) -> dict[str, dict]:
    if name in _LOGS:
        return _LOGS[name]
    entries: dict[str, dict] = {}
    data = cache.read_record(name)
    if data is not None:
        try:
            doc = json.loads(data)
            if (
                not isinstance(doc, dict)
                or doc.get("format") != FORMAT
                or not isinstance(doc.get("entries"), dict)
            ):
                raise ValueError("not a convforge tuning log")
            entries = {k: v for k, v in doc["entries"].items() if isinstance(k, str) and isinstance(v, dict)}
        except (ValueError, UnicodeDecodeError):
            _warn(f"the tuning log {name} does not parse; every layer in it is measured again")
    _LOGS[name] = entries
    return entries


def _warn(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn_explicit(message, cache.CacheWarning, "convforge-cache", 0)


def recorded(key: str, candidates: tuple[str, ...], threads: int) -> dict | None:
    """The log's entry for layer ``key`` if it is a valid choice among ``candidates``:
    ``{"algorithm": name, "ms": {name: milliseconds}}``; None when absent or invalid."""
    name = record_name(threads)
    entry = _load(name).get(key)
    if entry is None:
        return None
    times = entry.get("ms")
    valid = (
        entry.get("algorithm") in candidates
        and isinstance(times, dict)
        and set(times) == set(candidates)
        and all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in times.values())
    )
    if not valid:
        _warn(f"the tuning log {name} holds an invalid entry for {key}; measuring it again")
        return None
    return entry


def measure(candidates: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Milliseconds per call of each candidate: one untimed call, then the fastest of :data:`REPEATS`."""
    times = {}
    for name, call in candidates.items():
        call()
        best = math.inf
        for _ in range(REPEATS):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
        times[name] = best * 1e3
    return times


def choose(key: str, candidates: Mapping[str, Callable[[], object]], threads: int) -> tuple[str, str]:
    """(algorithm, why) for layer ``key``: from the tuning log, else measured now and recorded."""
    names = tuple(candidates)
    entry = recorded(key, names, threads)
    source = "tuning log"
    if entry is None:
        times = measure(candidates)
        entry = {"algorithm": min(times, key=times.__getitem__), "ms": times}
        name = record_name(threads)
        log = _load(name)
        log[key] = entry
        cache.write_record(name, json.dumps({"format": FORMAT, "entries": log}, sort_keys=True).encode())
        source = "measured"
    times = entry["ms"]
    summary = ", ".join(f"{n} {times[n]:.3f} ms" for n in sorted(times, key=times.__getitem__))
    return entry["algorithm"], f"tuned ({source}, {threads} threads): {summary}"
