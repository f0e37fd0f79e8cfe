"""The fuzz suite's test-side machinery: the worker process, the outcome tally, and how
much to fuzz.

* :class:`Worker` runs cases in a child process (``worker.py``); a child killed by a signal
  (a kernel out of bounds, a crash in native code) becomes the ``signal`` outcome and a new
  child is started for the next case.
* :func:`check` records every outcome per surface and fails the test on anything but
  ``ok`` or a named ``ConvforgeError``. With ``CONVFORGE_FUZZ_COLLECT=1`` it only records,
  so a long run counts every failure instead of stopping (and shrinking) at the first.
  ``CONVFORGE_FUZZ_REPORT=path.json`` writes the tally at the end of the session
  (``tests/fuzz/conftest.py``).
* :func:`examples` scales ``max_examples``: the CI numbers by default, ``LONG`` times more
  under the ``fuzz-long`` hypothesis profile (``HYPOTHESIS_PROFILE=fuzz-long``).
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
#: the hypothesis profile of runs by hand
LONG_PROFILE = "fuzz-long"
LONG = 50
COLLECT = os.environ.get("CONVFORGE_FUZZ_COLLECT") == "1"

#: surface -> outcome -> count, and the failures seen (surface, case, result)
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FAILURES: list[dict] = []
#: surface -> the first few ConvforgeError messages (what the refusals look like)
SAMPLES: dict[str, list[str]] = collections.defaultdict(list)
GOOD = ("ok", "error")


def long_run() -> bool:
    return os.environ.get("HYPOTHESIS_PROFILE") == LONG_PROFILE


def examples(ci: int) -> int:
    """``max_examples`` for a fuzz test: ``ci`` in CI, ``LONG * ci`` in a ``fuzz-long`` run."""
    return ci * LONG if long_run() else ci


class Worker:
    """A child process running fuzz cases; restarted after it dies."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 300.0):
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("NUMBA_NUM_THREADS", "2")
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()
        self.starts = 0

    def start(self) -> None:
        self.log.seek(0)
        self.log.truncate()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=self.env,
        )
        self.starts += 1

    def run(self, case: str, /, **kwargs) -> dict:
        """The outcome of case ``case`` (see ``cases.run``) called with ``kwargs``, or
        ``signal`` / ``died`` / ``timeout`` when the worker did not answer."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        proc = self.proc
        data = pickle.dumps((case, kwargs))
        try:
            proc.stdin.write(struct.pack("<Q", len(data)) + data)
            proc.stdin.flush()
            head = self._read(8)
            if len(head) == 8:
                body = self._read(struct.unpack("<Q", head)[0])
                return pickle.loads(body)
        except TimeoutError:
            proc.kill()
            proc.wait()
            self.proc = None
            return {"outcome": "timeout", "detail": f"no answer in {self.timeout} s", "stderr": self._tail()}
        except (BrokenPipeError, OSError):
            pass
        code = proc.wait()
        self.proc = None
        if code < 0:
            return {"outcome": "signal", "detail": f"worker killed by signal {-code}", "stderr": self._tail()}
        return {"outcome": "died", "detail": f"worker exited with {code}", "stderr": self._tail()}

    def _read(self, n: int) -> bytes:
        out = bytearray()
        fd = self.proc.stdout.fileno()
        while len(out) < n:
            ready, _, _ = select.select([fd], [], [], self.timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, n - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:].decode(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()


def check(surface: str, result: dict, case: object) -> dict:
    """Record ``result`` for ``surface``; fail unless it is ``ok`` or a named ConvforgeError
    (in a collecting run, only record)."""
    outcome = result["outcome"]
    TALLY[surface][outcome] += 1
    if outcome == "error" and len(SAMPLES[surface]) < 40:
        SAMPLES[surface].append(result.get("detail", "")[:300])
    if outcome not in GOOD:
        FAILURES.append({"surface": surface, "case": repr(case)[:2000], **result})
        if not COLLECT:
            details = "\n".join(
                str(result.get(k, "")) for k in ("detail", "traceback", "stderr") if k in result
            )
            pytest.fail(f"{surface}: {outcome} for {case!r}\n{details}", pytrace=False)
    return result
