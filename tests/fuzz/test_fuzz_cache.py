"""Fuzz the kernel cache (a sample on top of ``tests/backends/test_cache_hardening.py``,
whose helpers it reuses): a random file of a warm cache is damaged (a flipped bit at a
random place, truncated at a random length, emptied, extended with garbage, replaced by a
pickle or by another cache file), and a child process runs the graph again: it must exit
normally (never by a signal) with the cold run's result.

Interrupted saves are fuzzed with real SIGINT/SIGKILL in ``tests/test_saving.py``.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import harness
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_spec = importlib.util.spec_from_file_location(
    "cache_hardening_helpers", Path(__file__).resolve().parents[1] / "backends" / "test_cache_hardening.py"
)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-warm") / "cache"
    cold = helpers.run_child(root)
    assert not cold["warnings"], cold
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    )
    return root, cold, files


def _damage(data: bytes, op: str, at: float, other: bytes) -> bytes:
    i = int(at * len(data)) if data else 0
    if op == "flip" and data:
        b = bytearray(data)
        b[i] ^= 1 << (i % 8)
        return bytes(b)
    if op == "truncate":
        return data[:i]
    if op == "empty":
        return b""
    if op == "garbage":
        return data + bytes(range(256))
    if op == "pickle":
        return pickle.dumps({"index": "planted"})
    return other  # another cache file's bytes


@settings(
    max_examples=harness.examples(2),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(
    which=st.floats(0, 1, exclude_max=True),
    op=st.sampled_from(["flip", "truncate", "empty", "garbage", "pickle", "swap"]),
    at=st.floats(0, 1, exclude_max=True),
    donor=st.floats(0, 1, exclude_max=True),
)
def test_a_damaged_cache_file_is_rebuilt(warm, tmp_path_factory, which, op, at, donor):
    root, cold, files = warm
    copy = helpers.copy_of((root, cold), tmp_path_factory.mktemp("fuzz-cache") / "cache")
    target = copy / files[int(which * len(files))]
    other = (copy / files[int(donor * len(files))]).read_bytes()
    target.write_bytes(_damage(target.read_bytes(), op, at, other))
    case = (target.relative_to(copy).as_posix(), op, at)
    try:
        result = helpers.run_child(copy)  # asserts the child exited normally, not by a signal
    except AssertionError as exc:
        harness.check("kernel cache", {"outcome": "other", "detail": str(exc)[-2000:]}, case)
        return
    outcome = "ok" if result["out"] == cold["out"] else "disagree"
    harness.check("kernel cache", {"outcome": outcome, "detail": str(result)[:500]}, case)
