"""ONNX's backend test cases for the ops convforge imports: which cases they are, which op
each tests, and why convforge refuses the excluded ones.

    python tests/onnx/conformance.py [--numba-cpu]   # run every case on reference (and those
        # that pass on numba-cpu), rewrite the exclusions file, print the tables of docs/onnx.md

A node test belongs to the op its name starts with (``test_conv_with_strides_padding`` ->
``Conv``, ``test_softmax_axis_0_expanded`` -> ``Softmax``); the ``pytorch-converted`` and
``pytorch-operator`` cases belong to the ops of their model. A case is *excluded* when
convforge refuses it with a ConvforgeError (an unsupported dtype, attribute or op); every
exclusion is listed in ``conformance_exclusions.py`` with the reason, and a test checks
that each one is still refused, so the list cannot hide a wrong answer.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from typing import Any

import numpy as np

KINDS = ("node", "pytorch-converted", "pytorch-operator")


@functools.cache
def cases() -> dict[str, Any]:
    """Every backend test case of the kinds above, by name."""
    import onnx.backend.test.loader as loader

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for kind in KINDS for c in loader.load_model_tests(kind=kind)}


def model_of(case: Any) -> Any:
    import onnx

    return case.model if case.model_dir is None else onnx.load(os.path.join(case.model_dir, "model.onnx"))


@functools.cache
def _snake_ops() -> list[tuple[str, str]]:
    """(snake_case name, op) for every ONNX op, longest first: ``layer_normalization``."""
    import onnx

    out = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            out[re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", schema.name).lower()] = schema.name
    # test names that do not follow the snake-case rule
    out.update({
        "lrn": "LRN", "prelu": "PRelu", "matmul": "MatMul", "convtranspose": "ConvTranspose",
        "averagepool": "AveragePool", "maxpool": "MaxPool", "globalaveragepool": "GlobalAveragePool",
        "globalmaxpool": "GlobalMaxPool", "batchnorm": "BatchNormalization", "logsoftmax": "LogSoftmax",
        "leakyrelu": "LeakyRelu", "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish",
        "thresholdedrelu": "ThresholdedRelu",
    })  # fmt: skip
    return sorted(out.items(), key=lambda kv: -len(kv[0]))


def op_of(name: str) -> str:
    """The op a test case belongs to."""
    case = cases()[name]
    if case.kind != "node":
        ops = sorted({n.op_type for n in model_of(case).graph.node} - {"Constant"})
        return ops[0] if len(ops) == 1 else "+".join(ops)
    stem = name[len("test_") :]
    for snake, op in _snake_ops():
        if stem == snake or stem.startswith(snake + "_"):
            return op
    return "?"


def supported_ops() -> set[str]:
    """The ONNX ops convforge computes at run time (folded-only ops such as Shape excluded)."""
    from convforge.onnx import importer

    importer.supported_ops()
    return set(importer.CONVERTERS) - {"Shape", "Size"}


def relevant() -> list[str]:
    """The cases of the supported ops: a node test of one of them, or a PyTorch case whose
    model uses only ops convforge runs or folds."""
    ops = supported_ops()
    out = []
    for name, case in cases().items():
        op = op_of(name)
        if case.kind == "node" and op in ops:
            out.append(name)
        elif case.kind != "node" and all(part in ops | {"Constant"} for part in op.split("+")):
            out.append(name)
    return sorted(out)


# -- why a case is refused ------------------------------------------------------------------------
_INTEGERS = r"dtype (U?INT\d+|BOOL)\b|of dtype u?int|of dtype bool|is a constant"
_NARROW = r"FLOAT16|BFLOAT16|FLOAT[864]|[UI]NT[24]\b|float[864]|bfloat|float16|u?int[42]\b"
_THREE_D = r"\d-D (convolution|pooling|transposed)|rank 2, 3 or 4"
_REASONS = [
    (_INTEGERS, "integer or bool tensors (convforge computes float32/float64)"),
    (_NARROW, "16-, 8-, 6-, 4- or 2-bit types"),
    (r"mixes input dtypes", "mixes float32 and float64 tensors"),
    (_THREE_D, "3-D convolution, pooling or batch norm (convforge has 1-D and 2-D)"),
    (r"batched MatMul", "batched MatMul (convforge multiplies 2-D matrices)"),
    (
        r"output \d+ \('[^']*'\) is used",
        "an optional output (mask, indices, statistics) convforge does not compute",
    ),
    (r"training_mode", "training-mode semantics (random masks, batch statistics) in an inference graph"),
    (r"sequences|optional", "sequence or optional types"),
    (r"subgraph", "control flow (subgraphs)"),
    (r"empty", "empty tensors"),
    (
        r"reads other pixels",
        "a Resize coordinate mode that differs from PyTorch's interpolation on these sizes",
    ),
    (r"op (\w+) is not supported", "uses op {0}, which convforge does not import"),
    (r"attribute ([\w/]+)=(.+?) is not supported", "attribute {0}={1}"),
    (r"must be a constant", "a run-time value where convforge needs a constant"),
]


def reason(message: str) -> str:
    """A short reason for a refusal message (the table groups cases by it)."""
    for pattern, text in _REASONS:
        m = re.search(pattern, message)
        if m:
            return text.format(*m.groups()) if "{" in text else text
    return message.split(": ", 1)[-1][:100]


def run_case(name: str, target: str) -> tuple[str, str]:
    """("pass" | "refused" | "fail", message) of one case on ``target``."""
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from convforge.errors import ConvforgeError
    from convforge.onnx.backend import backend_for

    case = cases()[name]
    try:
        rep = backend_for(target).prepare(model_of(case))
        for inputs, outputs in _data_sets(case):
            got = rep.run([_normalize_tensor(i) for i in inputs])
            Runner.assert_similar_outputs([_normalize_tensor(o) for o in outputs], got, case.rtol, case.atol)
    except ConvforgeError as exc:
        return "refused", str(exc)
    except AssertionError as exc:
        return "fail", str(exc)[:300]
    return "pass", ""


def _data_sets(case: Any) -> list:
    if case.model_dir is None:
        return case.data_sets
    import glob

    import onnx
    from onnx import numpy_helper

    def read(path: str) -> np.ndarray:
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        return numpy_helper.to_array(t)

    sets = []
    for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*"))):
        n_in = len(glob.glob(os.path.join(folder, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(folder, "output_*.pb")))
        sets.append((
            [read(os.path.join(folder, f"input_{i}.pb")) for i in range(n_in)],
            [read(os.path.join(folder, f"output_{i}.pb")) for i in range(n_out)],
        ))  # fmt: skip
    return sets


def table(results: dict[str, tuple[str, str]], numba: dict[str, tuple[str, str]] | None = None) -> str:
    """The markdown table of docs/onnx.md: per op, cases passed / failed / excluded."""
    per_op: dict[str, Counter] = defaultdict(Counter)
    for name, (status, _) in results.items():
        per_op[op_of(name)][status] += 1
        if numba is not None and name in numba:
            per_op[op_of(name)]["numba-" + numba[name][0]] += 1
    lines = [
        "| op | cases | pass (reference) | fail | excluded | numba-cpu: pass / run |",
        "|---|---|---|---|---|---|",
    ]
    total = Counter()
    for op in sorted(per_op):
        c = per_op[op]
        n = c["pass"] + c["fail"] + c["refused"]
        total.update(c)
        nb = f"{c['numba-pass']} / {c['numba-pass'] + c['numba-fail'] + c['numba-refused']}"
        lines.append(f"| {op} | {n} | {c['pass']} | {c['fail']} | {c['refused']} | {nb} |")
    n = total["pass"] + total["fail"] + total["refused"]
    nb = f"{total['numba-pass']} / {total['numba-pass'] + total['numba-fail'] + total['numba-refused']}"
    lines.append(f"| **all** | {n} | {total['pass']} | {total['fail']} | {total['refused']} | {nb} |")
    return "\n".join(lines)


def _write_exclusions(results: dict[str, tuple[str, str]], path: str) -> None:
    lines = [
        "# ruff: noqa: E501",
        '"""The ONNX backend test cases convforge refuses, and why (written by',
        '``python tests/onnx/conformance.py``; test_conformance.py checks each is still refused)."""',
        "",
        "EXCLUDED = {",
    ]
    for name, (status, message) in sorted(results.items()):
        if status == "refused":
            lines.append(f"    {json.dumps(name)}: {json.dumps(reason(message))},")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":  # pragma: no cover - run by hand to refresh the tables
    results = {name: run_case(name, "reference") for name in relevant()}
    _write_exclusions(results, os.path.join(os.path.dirname(__file__), "conformance_exclusions.py"))
    numba = None
    if "--numba-cpu" in sys.argv[1:]:  # every case that passes on reference, on numba-cpu
        numba = {name: run_case(name, "numba-cpu") for name, (s, _) in results.items() if s == "pass"}
    print(table(results, numba))
    by_reason = Counter(reason(m) for s, m in results.values() if s == "refused")
    print("\n| reason | cases |\n|---|---|")
    for text, n in by_reason.most_common():
        print(f"| {text} | {n} |")
    for target, res in (("reference", results), ("numba-cpu", numba or {})):
        for name, (status, message) in sorted(res.items()):
            if status != "pass" and (target == "numba-cpu" or status == "fail"):
                print(f"{target} {status.upper()} {name}: {message[:200]!r}")
