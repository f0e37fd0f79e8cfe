"""Hypothesis strategies of hostile values: what a careless or hostile user passes.

Every argument keeps its valid value two times in three (``maybe``), so a case usually
breaks one or two things at a time and the others reach deeper code.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

HUGE_INTS = (2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, -(2**31), -(2**63), 10**30)
ODD_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, 1e38, 3.5e38)

hostile_scalar = st.one_of(
    st.integers(-3, 9),
    st.sampled_from(HUGE_INTS),
    st.booleans(),
    st.sampled_from(ODD_FLOATS),
    st.floats(-10, 10),
    st.none(),
    st.sampled_from(["same", "valid", "", "x"]),
    st.builds(dict),
    st.builds(list),
)
hostile_int = st.one_of(
    hostile_scalar,
    st.lists(hostile_scalar, max_size=5).map(tuple),
    st.lists(st.integers(-2, 6), min_size=1, max_size=5),
)
hostile_float = st.one_of(
    st.sampled_from(ODD_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
    st.sampled_from(HUGE_INTS),
    st.none(),
    st.booleans(),
    st.just("0.1"),
    st.builds(dict),
)


def maybe(valid, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """The valid value two times in three, a hostile one otherwise (shrinks to valid)."""
    return st.one_of(st.just(valid), st.just(valid), hostile)


DTYPES = (np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_, np.complex64)
LAYOUTS = ("c", "c", "c", "fortran", "strided", "reversed", "readonly", "list")


@st.composite
def array(draw, shape: tuple[int, ...], dtype=np.float32, hostile: bool = True):
    """``("array", values, layout)`` (see ``cases.materialise``): mostly ``shape`` and
    ``dtype`` with finite values; otherwise another dtype, rank, batch or size, NaN/inf
    values, or a non-contiguous, read-only or list layout."""
    if hostile and draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["dtype", "rank", "batch", "zero", "extent"]))
        if kind == "dtype":
            dtype = draw(st.sampled_from(DTYPES))
        elif kind == "rank":
            shape = shape[: draw(st.integers(0, len(shape)))] or draw(
                st.sampled_from([(), (1,) * (len(shape) + 1)])
            )
        elif kind == "batch" and shape:
            shape = (draw(st.sampled_from([0, 1, 3, 5])), *shape[1:])
        elif kind == "zero" and shape:
            i = draw(st.integers(0, len(shape) - 1))
            shape = (*shape[:i], 0, *shape[i + 1 :])
        elif shape:
            i = draw(st.integers(0, len(shape) - 1))
            shape = (*shape[:i], draw(st.integers(1, 12)), *shape[i + 1 :])
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).standard_normal(shape)
    if hostile and values.size and draw(st.integers(0, 4)) == 0:
        special = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -3e38]))
        flat = values.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = special
    with np.errstate(invalid="ignore", over="ignore"):
        values = values.astype(dtype) if np.dtype(dtype).kind != "b" else values > 0
    layout = draw(st.sampled_from(LAYOUTS)) if hostile else "c"
    return ("array", values, layout)


def labels(batch: int, classes: int, hostile: bool = True):
    """Class labels for ``batch`` images: valid, or out of range, negative, float, wrong shape."""
    valid = st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch).map(
        lambda v: ("array", np.array(v, dtype=np.int64), "c")
    )
    if not hostile:
        return valid
    bad = st.one_of(
        st.lists(st.integers(-3, classes + 3), min_size=batch, max_size=batch).map(
            lambda v: ("array", np.array(v, dtype=np.int64), "c")
        ),
        st.lists(st.integers(0, classes - 1), min_size=0, max_size=batch + 2).map(
            lambda v: ("array", np.array(v, dtype=np.int32), "c")
        ),
        st.just(("array", np.zeros(batch, np.float32), "c")),
        st.just(("array", np.full(batch, 2**40, np.int64), "c")),
        st.just(("array", np.zeros((batch, 1), np.int64), "c")),
    )
    return st.one_of(valid, valid, bad)
