"""Checks shared by the op families' attribute and shape rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from convforge.errors import AttributeValueError, DTypeError, ShapeError
from convforge.ir.types import BATCH, MAX_ELEMENTS, Dim, TensorType

#: the largest size, stride, padding or dilation an attribute may hold: no tensor extent
#: can exceed it, and products of two such values stay far inside int64
MAX_SIZE = MAX_ELEMENTS


def expect_rank(t: TensorType, rank: int | Sequence[int], what: str = "input") -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"expected {what} of rank {want}, got rank {t.rank} ({t})")


def expect_float(t: TensorType, what: str = "input") -> None:
    if not t.is_float:
        raise DTypeError(f"expected {what} of a float dtype (f32 or f64), got {t}")


def expect_same_dtype(*types: TensorType) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise DTypeError(f"expected inputs of one dtype, got {', '.join(map(str, types))}")
    return types[0].dtype


def expect_same_shape(a: TensorType, b: TensorType, what: str = "inputs") -> None:
    if a.shape != b.shape:
        raise ShapeError(f"expected {what} of the same shape, got {a} and {b}")


def int_tuple(
    name: str,
    value: Any,
    n: int,
    *,
    minimum: int | None = 1,
    bound: str | None = None,
    where: str | None = None,
) -> tuple[int, ...]:
    """``value`` as ``n`` ints >= ``minimum`` (an int is repeated; ``minimum=None``: any ints)
    and of magnitude at most :data:`MAX_SIZE` (these are sizes, strides, pads: none can
    exceed a tensor's extent).

    The one validator of integer tuples (ops' attribute checks, layers, ``functional``). The
    error names ``name``, prefixed by ``where`` (a layer or op) if given; ``bound`` words the
    lower bound in it (``"positive"``), ``">= minimum"`` by default.
    """
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool):
        raise AttributeValueError(f"{prefix}{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        items: tuple = (value,) * n
    elif isinstance(value, (tuple, list)) and len(value) == n:
        items = tuple(value)
    else:
        raise AttributeValueError(f"{prefix}{name} must be an int or a tuple of {n} ints, got {value!r}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise AttributeValueError(f"{prefix}{name} must be ints, got {value!r}")
        if minimum is not None and v < minimum:
            raise AttributeValueError(f"{prefix}{name} must be {bound or f'>= {minimum}'}, got {value!r}")
        if abs(v) > MAX_SIZE:
            raise AttributeValueError(
                f"{prefix}{name} must be at most {MAX_SIZE} (2**31 - 1) in magnitude, got {value!r}"
            )
    return tuple(int(v) for v in items)


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    finite: bool = False,
    where: str | None = None,
) -> float:
    """``value`` as a float in the given range; NaN is always refused (``nan < low`` is False,
    so a plain range test lets it through), infinities where ``finite`` or out of range.

    >>> number("lr", 0.1, low=0.0)
    0.1
    """
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeValueError(f"{prefix}{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        raise AttributeValueError(f"{prefix}{name} is out of the float range, got {value!r}") from None
    if math.isnan(v):
        raise AttributeValueError(f"{prefix}{name} must be a number, got nan")
    if finite and math.isinf(v):
        raise AttributeValueError(f"{prefix}{name} must be finite, got {v!r}")
    below = low is not None and (v <= low if open_low else v < low)
    above = high is not None and (v >= high if open_high else v > high)
    if below or above:
        lo = "(-inf" if low is None else f"{'(' if open_low else '['}{low}"
        hi = "inf)" if high is None else f"{high}{')' if open_high else ']'}"
        bound = f">= {low}" if high is None and not open_low else f"in {lo}, {hi}"
        raise AttributeValueError(f"{prefix}{name} must be {bound}, got {value!r}")
    return v


def window_out(
    size: Dim,
    kernel: int,
    stride: int,
    pad_lo: int,
    pad_hi: int,
    dilation: int = 1,
    ceil_mode: bool = False,
    what: str = "input",
) -> int:
    """Output length of a sliding window, floored as PyTorch does (ceil with ``ceil_mode``)."""
    if size == BATCH:
        raise ShapeError("a spatial dimension cannot be the batch symbol N")
    assert isinstance(size, int)
    span = dilation * (kernel - 1) + 1
    padded = size + pad_lo + pad_hi
    for extent, label in ((padded, "padded size"), (span, "(dilated) kernel extent")):
        if extent > MAX_SIZE:
            raise ShapeError(
                f"{what} {label} {extent} (size {size}, padding ({pad_lo}, {pad_hi}), kernel "
                f"{kernel}, dilation {dilation}) exceeds the limit of {MAX_SIZE} (2**31 - 1)"
            )
    if padded < span:
        raise ShapeError(
            f"{what} size {size} with padding ({pad_lo}, {pad_hi}) is smaller than the "
            f"(dilated) kernel extent {span}"
        )
    if ceil_mode:
        out = -(-(padded - span) // stride) + 1
        # PyTorch: the last window must start inside the input or the left padding
        if (out - 1) * stride >= size + pad_lo:
            out -= 1
        return out
    return (padded - span) // stride + 1
