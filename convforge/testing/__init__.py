"""Property-testing helpers: hypothesis strategies and a cross-backend agreement check.

    from hypothesis import given
    from convforge.testing import assert_backends_agree, networks

    @given(networks())
    def test_backends_agree(net):
        model, input_shape = net
        assert_backends_agree(model, input_shape, backends=["reference", "numba-cpu"])

Needs ``hypothesis`` (a test dependency).
"""

from convforge.testing.agree import assert_backends_agree, available_backends, compare_arrays
from convforge.testing.strategies import (
    Concat,
    Residual,
    conv2d_attrs,
    conv2d_cases,
    networks,
    pool2d_attrs,
    pool2d_cases,
)
from convforge.testing.tolerances import FD_STEP, GRADCHECK, TOLERANCES, Tolerance, tolerance

__all__ = [
    "FD_STEP",
    "GRADCHECK",
    "TOLERANCES",
    "Concat",
    "Residual",
    "Tolerance",
    "assert_backends_agree",
    "available_backends",
    "compare_arrays",
    "conv2d_attrs",
    "conv2d_cases",
    "networks",
    "pool2d_attrs",
    "pool2d_cases",
    "tolerance",
]
