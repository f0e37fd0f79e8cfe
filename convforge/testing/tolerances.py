"""Every numerical tolerance the test helpers use, per dtype and backend, in one place.

A value ``got`` agrees with ``expected`` when, element by element,

    |got - expected| <= atol * scale + rtol * |expected|

where ``scale`` is the tensor's largest ``|expected|``, raised to ``floor * context`` when a
context scale is given (the largest value among related tensors, e.g. all the gradients
of one model). The floor keeps a tensor that is mathematically zero (the gradient of a
conv bias feeding a training-mode batch norm) from being held to the rounding noise of
nonzero values.

Comparing two backends uses the looser of their two entries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """``rtol`` relative to each element, ``atol`` relative to the tensor's scale."""

    rtol: float
    atol: float
    floor: float = 0.05

    def loosest(self, other: Tolerance) -> Tolerance:
        return Tolerance(max(self.rtol, other.rtol), max(self.atol, other.atol), max(self.floor, other.floor))


#: (IR dtype, backend) -> tolerance of that backend's results against an exact answer.
#: float32 backends sum in different orders (and the GPU contracts to FMA), so a few
#: ulps per reduction are expected; float64 is held to near machine precision.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("f32", "reference"): Tolerance(rtol=1e-5, atol=1e-6),
    ("f32", "numba-cpu"): Tolerance(rtol=1e-4, atol=5e-5),
    ("f32", "numba-cuda"): Tolerance(rtol=1e-4, atol=5e-5),
    ("f32", "torch"): Tolerance(rtol=1e-4, atol=5e-5),
    ("f64", "reference"): Tolerance(rtol=1e-12, atol=1e-12),
    ("f64", "numba-cpu"): Tolerance(rtol=1e-9, atol=1e-10),
    ("f64", "numba-cuda"): Tolerance(rtol=1e-9, atol=1e-10),
    ("f64", "torch"): Tolerance(rtol=1e-9, atol=1e-10),
}

#: the finite-difference gradient check in float64 (central differences, step ``FD_STEP``):
#: ``|fd - <grad, v>| <= rtol * sum|grad * v| + atol * max(1, |L|)``. Rounding in the
#: difference quotient is about eps * |L| / h = 2e-10 * |L|, truncation about h**2.
FD_STEP = 1e-6
GRADCHECK = Tolerance(rtol=1e-6, atol=1e-8)


def tolerance(dtype: str, *backends: str) -> Tolerance:
    """The tolerance for comparing results of ``backends`` (the loosest entry) in ``dtype``."""
    if dtype not in ("f32", "f64"):
        raise KeyError(f"no tolerance for dtype {dtype!r}; expected 'f32' or 'f64'")
    result: Tolerance | None = None
    for backend in backends:
        try:
            entry = TOLERANCES[(dtype, backend)]
        except KeyError:
            known = sorted({b for _, b in TOLERANCES})
            raise KeyError(f"no tolerance for backend {backend!r}; known: {', '.join(known)}") from None
        result = entry if result is None else result.loosest(entry)
    if result is None:
        raise KeyError("tolerance() needs at least one backend")
    return result
