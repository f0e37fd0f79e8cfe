"""ONNX's own backend tests (``onnx.backend.test.BackendTest``) through convforge's
``onnx.backend.base.Backend`` adapter: every case of the supported ops on ``reference``
(node tests, and the ``pytorch-converted`` / ``pytorch-operator`` cases shipped in the
wheel), a representative subset (the first case of each op) on ``numba-cpu``.

The excluded cases (``conformance_exclusions.py``, each with its reason) are not run as
conformance tests; ``test_excluded_cases_are_refused`` checks that convforge still refuses
every one of them with a ConvforgeError, so an exclusion never hides a wrong answer.
"""

from __future__ import annotations

import unittest

import onnx.backend.test
import pytest
from conformance import cases, op_of, relevant, run_case
from conformance_exclusions import EXCLUDED

from convforge.onnx.backend import backend_for

#: numba-cpu runs this many cases of each op (its kernels compile per specialisation)
NUMBA_CASES_PER_OP = 1


def _selected() -> dict[str, list[str]]:
    run = [name for name in relevant() if name not in EXCLUDED]
    per_op: dict[str, list[str]] = {}
    for name in run:
        per_op.setdefault(op_of(name), []).append(name)
    subset = [name for names in per_op.values() for name in names[:NUMBA_CASES_PER_OP]]
    return {"reference": run, "numba-cpu": sorted(subset)}


SELECTED = _selected()


class _Switch:
    """The adapter the one BackendTest runner calls; each TestCase class sets the target."""

    target = "reference"

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        return backend_for(cls.target).prepare(model, device, **kwargs)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return backend_for(cls.target).run_model(model, inputs, device, **kwargs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        return backend_for(cls.target).run_node(node, inputs, device, outputs_info, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def _test_classes() -> dict[str, type]:
    runner = onnx.backend.test.BackendTest(_Switch, __name__)
    functions = {}
    for case_class in runner.test_cases.values():
        for attr in dir(case_class):
            if attr.startswith("test_") and attr.endswith("_cpu"):
                functions[attr[: -len("_cpu")]] = getattr(case_class, attr)
    classes = {}
    for target, names in SELECTED.items():

        def set_up(self, target=target):
            _Switch.target = target

        body = {name: functions[name] for name in names}
        cls_name = "TestOnnxBackend_" + target.replace("-", "_")
        classes[cls_name] = type(cls_name, (unittest.TestCase,), {"setUp": set_up, **body})
    return classes


globals().update(_test_classes())


def test_every_relevant_case_is_run_or_excluded():
    assert set(EXCLUDED) <= set(relevant()), "an exclusion names a case of an unsupported op"
    assert set(SELECTED["reference"]) | set(EXCLUDED) == set(relevant())
    assert all(reason for reason in EXCLUDED.values())
    ops = {op_of(name) for name in SELECTED["reference"]}
    assert ops >= {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "Gemm", "LRN",
                   "Softmax", "Concat", "Transpose", "Pad", "Resize", "Sum", "GlobalAveragePool"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_cases_are_refused(name):
    status, message = run_case(name, "reference")
    assert status == "refused", f"{name} is excluded ({EXCLUDED[name]}) but now {status}: {message[:200]}"
    assert name in cases()
