"""Fuzz the arrays given to compiled models: dtypes, ranks, batch sizes (0, 1, others),
zero-size dimensions, NaN/inf values, Fortran-ordered, strided, reversed and read-only
arrays, Python lists, and bad class labels.

The models (``cases.MODELS``) are compiled once per worker on every backend; each case
runs inference (``net(x)``) or ``step.gradients(x, y)`` in training mode (batch norm
and dropout active), and the backends must agree on the result or refuse alike, naming
the input.
"""

from __future__ import annotations

import harness
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import array, labels

SHAPES = {"convnet": (1, 8, 8), "bnnet": (4,), "mse": (4,)}
CLASSES = {"convnet": 5, "bnnet": 2}


@st.composite
def model_inputs(draw):
    model = draw(st.sampled_from(sorted(SHAPES)))
    kind = draw(st.sampled_from(["infer", "grad"]))
    batch = draw(st.sampled_from([1, 2, 3]))
    x = draw(array((batch, *SHAPES[model])))
    if kind == "infer":
        return model, kind, x, None
    y = draw(labels(batch, CLASSES[model])) if model in CLASSES else draw(array((batch, 3)))
    return model, kind, x, y


@settings(max_examples=harness.examples(40))
@given(model_inputs())
def test_model_inputs(worker, case):
    model, kind, x, y = case
    harness.check("input arrays", worker.run("inputs", model=model, kind=kind, x=x, y=y), case)
