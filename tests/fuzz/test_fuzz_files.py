"""Fuzz weight files: valid ``.npz`` and ``.safetensors`` saves of a small model and its
optimizer state, with random byte mutations (flipped bits, overwritten, inserted and deleted
bytes, truncation, a rewritten ``.npy`` header field).

Oracle (``cases.weights_file``): a ``SerializationError`` naming the file or an entry, or
arrays that load into the model (which then runs alike on every backend) or are refused
naming the entry. Interrupted saves are fuzzed with real signals in ``tests/test_saving.py``
(``test_sigint_at_random_moments_leaves_a_complete_file``, ``..._sigkill_...``).
"""

from __future__ import annotations

import functools
import io
import re
import tempfile
from pathlib import Path

import harness
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import convforge as cf
from convforge import nn

HEADER_EDITS = [
    (rb"'shape': \([^)]*\)", b"'shape': (1000000, 1000000)"),
    (rb"'shape': \([^)]*\)", b"'shape': (-1, 3)"),
    (rb"'shape': \([^)]*\)", b"'shape': ()"),
    (rb"'descr': '[^']*'", b"'descr': '|O'"),
    (rb"'descr': '[^']*'", b"'descr': '<U3'"),
    (rb"'descr': '[^']*'", b"'descr': '>f8'"),
    (rb"'descr': '[^']*'", b"'descr': 'V12'"),
    (rb"'fortran_order': False", b"'fortran_order': True"),
]


@functools.cache
def saves() -> dict[str, bytes]:
    """Valid files: the convnet of ``cases.MODELS`` (weights and SGD state) in both formats."""
    cf.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)
    )
    step = cf.compile_train(model, (None, 1, 8, 8), backend="reference")
    step(np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]))
    folder = Path(tempfile.mkdtemp(prefix="convforge-fuzz-files-"))
    out = {}
    for suffix in (".npz", ".safetensors"):
        out[suffix] = cf.save(step, folder / f"w{suffix}").read_bytes()
    buf = io.BytesIO()
    np.savez_compressed(buf, **model.state_dict())  # a deflated archive, as numpy writes it
    out[".npz deflated"] = buf.getvalue()
    return out


@st.composite
def mutated_file(draw):
    kind = draw(st.sampled_from(sorted(saves())))
    data = bytearray(saves()[kind])
    for _ in range(draw(st.integers(1, 3))):
        at = int(draw(st.floats(0, 1, exclude_max=True)) * len(data))
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "header"]))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        else:
            pattern, new = draw(st.sampled_from(HEADER_EDITS))
            data = bytearray(re.sub(pattern, new, bytes(data), count=1))
    return kind.split()[0], bytes(data)


@settings(max_examples=harness.examples(40))
@given(mutated_file())
def test_mutated_weight_files(worker, case):
    suffix, data = case
    result = worker.run("weights_file", data=data, suffix=suffix)
    harness.check("weight files", result, (suffix, len(data)))


def test_unmutated_files_load_and_run(worker):
    for kind, data in saves().items():
        assert worker.run("weights_file", data=data, suffix=kind.split()[0])["outcome"] == "ok", kind
