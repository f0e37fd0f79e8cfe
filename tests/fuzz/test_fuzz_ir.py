"""Fuzz the IR text form: printed graphs (plain, fused, training) mutated by hypothesis
(deleted and inserted text, IR tokens and hostile numbers, swapped and repeated lines).

Oracle (``cases.ir_text``): an ``IRParseError`` naming line and column, or a graph whose
print -> parse -> print is the identity; a parsed graph small enough runs on every
backend, which agree or refuse alike naming a node.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import harness
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convforge as cf
from convforge import nn
from convforge.backends import get_backend
from convforge.ir.printer import print_graph
from convforge.passes import PassManager

TOKENS = [
    "[", "]", "[[[[", "{", "}", "(", ")", ",", "%", "%1", "@", "N", "-1", "0", "7", "99999999999999999999",
    "2147483648", "1e400", "nan", "inf", "-inf", "f64", "i64", "u8", "bool", "relu", "sigmoid", "fusion",
    "->", "\n", "# x", '"', '"\\u00e9"', "=", ":", "yield", "return %x", "\t", "é", "\x00",
]  # fmt: skip
NUMBERS = ["0", "-1", "1", "2147483647", "2147483648", "4294967296", "9223372036854775807",
           "9223372036854775808", "-9223372036854775809", "1e308", "nan", "-inf", "3", "64"]  # fmt: skip


@functools.cache
def texts() -> tuple[str, ...]:
    """Printed graphs: a traced conv net, the same after numba-cpu's fusion, and a training
    program (forward, backward, update) after its fusion."""
    cf.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 3), nn.LeakyReLU(0.2),
    )  # fmt: skip
    plain = cf.compile(model, (None, 1, 4, 4), backend="reference").graph
    backend = get_backend("numba-cpu")
    fused = plain.copy()
    PassManager.from_string(backend.inference_pipeline).run(fused)
    step = cf.compile_train(model, (None, 1, 4, 4), backend="reference")
    training = step.graph.copy()
    PassManager.from_string(backend.training_pipeline).run(training)
    return tuple(print_graph(g) for g in (plain, fused, training))


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(texts()))
    for _ in range(draw(st.integers(1, 3))):
        at = int(draw(st.floats(0, 1, exclude_max=True)) * max(len(text), 1))
        kind = draw(
            st.sampled_from(["delete", "insert", "number", "line", "char", "space", "rename", "meta"])
        )
        if kind == "space":  # harmless: the graph still parses and runs
            text = text[:at] + draw(st.sampled_from([" ", "\t", "  ", "\n\n"])) + text[at:]
        elif kind == "rename":
            names = sorted(set(re.findall(r"%([A-Za-z0-9_.]+)", text)))
            old = draw(st.sampled_from(names))
            new = draw(st.sampled_from(["y", "x", "0.weight", "v_1", '"a b"', "é", "1"]))
            text = re.sub(rf"%{re.escape(old)}(?![A-Za-z0-9_.])", f"%{new}", text)
        elif kind == "meta":
            lines = text.split("\n")
            i = int(draw(st.floats(0, 1, exclude_max=True)) * len(lines))
            note = draw(
                st.sampled_from(["  # x", '  # "q\\"" at a.py:1', "  # at", "  #", "  # a at b at c"])
            )
            lines[i] = lines[i].split("  #")[0] + note
            text = "\n".join(lines)
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif kind == "number":
            digits = [i for i, c in enumerate(text) if c.isdigit()]
            if digits:
                i = digits[int(draw(st.floats(0, 1, exclude_max=True)) * len(digits))]
                j = i
                while j < len(text) and text[j].isdigit():
                    j += 1
                text = text[:i] + draw(st.sampled_from(NUMBERS)) + text[j:]
        elif kind == "line":
            lines = text.split("\n")
            a, b = (int(draw(st.floats(0, 1, exclude_max=True)) * len(lines)) for _ in range(2))
            op = draw(st.sampled_from(["swap", "repeat", "drop"]))
            if op == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            elif op == "repeat":
                lines.insert(b, lines[a])
            else:
                del lines[a]
            text = "\n".join(lines)
        else:
            text = text[:at] + draw(st.characters()) + text[at + 1 :]
    return text


@settings(max_examples=harness.examples(40))
@given(mutated())
def test_mutated_ir_text(worker, text):
    harness.check("IR text mutations", worker.run("ir_text", text=text), text)


def test_unmutated_texts_round_trip_and_run(worker):
    for text in texts():
        assert worker.run("ir_text", text=text)["outcome"] == "ok"


@pytest.mark.skipif(not harness.long_run(), reason="a fuzz-long run by hand (atheris is optional)")
def test_atheris_ir_parser(tmp_path):
    """Coverage-guided mutations of the same texts (``atheris_ir.py``), when atheris installs."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(texts()):
        (corpus / f"seed{i}").write_text(text)
    counts = tmp_path / "counts.json"
    runs = 500 * harness.LONG
    proc = subprocess.run(
        [sys.executable, str(harness.HERE / "atheris_ir.py"), str(corpus), f"-runs={runs}", "-max_len=8192"],
        env={**os.environ, "CONVFORGE_ATHERIS_COUNTS": str(counts)},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    outcome = "ok" if proc.returncode == 0 else ("signal" if proc.returncode < 0 else "other")
    found = json.loads(counts.read_text()) if counts.exists() else {}
    for kind, n in found.items():
        harness.TALLY["IR text (atheris)"][kind] += n
    harness.check("IR text (atheris) runs", {"outcome": outcome, "detail": proc.stderr[-3000:]}, runs)
