"""Coverage-guided fuzzing of the IR parser with atheris (libFuzzer), when it is installed:
``test_fuzz_ir.py::test_atheris_ir_parser`` runs it in a child process in ``fuzz-long`` runs.

Every input is parsed: an ``IRParseError`` must name line and column; a graph that parses
must print, re-parse and print the same. Any other exception (or a signal) is a crash
libFuzzer reports. ``CONVFORGE_ATHERIS_COUNTS=path`` receives the outcome counts (every 100 inputs).

    python tests/fuzz/atheris_ir.py CORPUS_DIR -runs=20000 -max_len=4096
"""

from __future__ import annotations

import collections
import json
import os
import sys

import atheris

with atheris.instrument_imports(include=["convforge.ir"]):
    from convforge.errors import IRParseError
    from convforge.ir.parser import parse
    from convforge.ir.printer import print_graph

COUNTS: collections.Counter = collections.Counter()


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")  # the seed texts stay themselves
    if sum(COUNTS.values()) % 100 == 0:
        _write_counts()  # libFuzzer leaves with _exit: no atexit handler runs
    try:
        graph = parse(text)
    except IRParseError as exc:
        if "line " not in str(exc) or "column " not in str(exc):
            raise AssertionError(f"IRParseError without line and column: {exc}") from None
        COUNTS["error"] += 1
        return
    printed = print_graph(graph)
    if print_graph(parse(printed)) != printed:
        raise AssertionError("print -> parse -> print is not the identity")
    COUNTS["ok"] += 1


def _write_counts() -> None:
    path = os.environ.get("CONVFORGE_ATHERIS_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(dict(COUNTS), f)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
