"""Property-testing helpers: hypothesis strategies and a cross-backend agreement check.

    from hypothesis import given, settings
    from convforge.testing import assert_backends_agree, networks

    @settings(deadline=None, max_examples=10)  # each example compiles a network
    @given(networks())
    def test_backends_agree(net):
        model, input_shape = net
        assert_backends_agree(model, input_shape, backends=["reference", "numba-cpu"])

``assert_backends_agree`` and the tolerances need only convforge; the strategies (and the
``Residual`` / ``Concat`` blocks they draw) need ``hypothesis`` (``pip install hypothesis``),
imported when first used.
"""

from __future__ import annotations

from typing import Any

from convforge.testing.agree import assert_backends_agree, available_backends, compare_arrays
from convforge.testing.tolerances import FD_STEP, GRADCHECK, TOLERANCES, Tolerance, tolerance

#: names of ``convforge.testing.strategies``, which imports hypothesis
_STRATEGIES = (
    "Concat",
    "Residual",
    "conv2d_attrs",
    "conv2d_cases",
    "networks",
    "pool2d_attrs",
    "pool2d_cases",
)

__all__ = [
    "FD_STEP",
    "GRADCHECK",
    "TOLERANCES",
    "Tolerance",
    "assert_backends_agree",
    "available_backends",
    "compare_arrays",
    "tolerance",
    *_STRATEGIES,
]


def __getattr__(name: str) -> Any:
    """The strategies, imported on first use (PEP 562), so the rest works without hypothesis."""
    if name not in _STRATEGIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from convforge.testing import strategies
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "hypothesis":
            raise
        raise ImportError(
            f"convforge.testing.{name} is a hypothesis strategy and needs the hypothesis package: "
            "pip install hypothesis (assert_backends_agree works without it)",
            name="hypothesis",
        ) from exc
    value = getattr(strategies, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_STRATEGIES))
