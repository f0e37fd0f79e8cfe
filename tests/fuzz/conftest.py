"""Fixtures of the fuzz suite: one worker process per session (compiled models are reused
across modules), and the outcome table written at the end of a run.

Run the long profile by hand::

    HYPOTHESIS_PROFILE=fuzz-long CONVFORGE_FUZZ_COLLECT=1 CONVFORGE_FUZZ_REPORT=fuzz.json \\
        nice -n 19 python -m pytest -q tests/fuzz
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))  # appended: tests/conftest.py stays `conftest`

import harness  # noqa: E402


@pytest.fixture(scope="session")
def worker():
    w = harness.Worker()
    yield w
    w.close()


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CONVFORGE_FUZZ_REPORT")
    if not path or not harness.TALLY:
        return
    table = {surface: dict(counts) for surface, counts in sorted(harness.TALLY.items())}
    Path(path).write_text(
        json.dumps({"tally": table, "failures": harness.FAILURES, "samples": harness.SAMPLES}, indent=1)
    )
