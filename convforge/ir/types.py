"""Tensor types of the IR: a dtype and a shape whose batch dimension may be the symbol ``N``.

>>> TensorType("f32", ("N", 1, 28, 28))
f32[N,1,28,28]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from convforge.errors import DTypeError, ShapeError

#: The symbolic batch dimension.
BATCH = "N"

Dim = int | str

#: IR dtype names and the NumPy dtypes they stand for.
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
FLOAT_DTYPES = ("f32", "f64")

#: The most elements one tensor (or one scratch buffer a kernel allocates) may hold: checked
#: at compile time with the batch ``N`` counted as 1, and again at run time for the actual
#: batch (``docs/design.md``, "Limits"). Every dimension, attribute size and index is then
#: far inside int64, so no shape or index arithmetic can overflow.
MAX_ELEMENTS = 2**31 - 1


def dtype_name(dtype: object) -> str:
    """The IR name of a NumPy dtype (``np.float32`` -> ``"f32"``)."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        np_dtype = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise DTypeError(f"expected a numeric dtype, got {dtype!r}") from exc
    for name, candidate in DTYPES.items():
        if candidate == np_dtype:
            return name
    raise DTypeError(f"expected one of {', '.join(DTYPES)}, got dtype {np_dtype}")


@dataclass(frozen=True)
class TensorType:
    """A dtype and a shape; ``shape`` entries are ints or the batch symbol ``"N"``."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise DTypeError(f"unknown IR dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        shape = tuple(self.shape)
        for dim in shape:
            if isinstance(dim, str):
                if dim != BATCH:
                    raise ShapeError(f"symbolic dimension must be {BATCH!r}, got {dim!r}")
            elif not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 0:
                raise ShapeError(f"dimension must be a non-negative int or {BATCH!r}, got {dim!r}")
        object.__setattr__(self, "shape", tuple(d if isinstance(d, str) else int(d) for d in shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_symbolic(self) -> bool:
        return BATCH in self.shape

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with ``N`` replaced by ``batch``."""
        return tuple(batch if d == BATCH else d for d in self.shape)  # type: ignore[misc]

    def numel(self, batch: int = 1) -> int:
        """The element count, exact (Python ints: never wraps around like an int64 product)."""
        return math.prod(self.concrete(batch))

    def nbytes(self, batch: int = 1) -> int:
        return self.numel(batch) * self.np_dtype.itemsize

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    __repr__ = __str__


def scalar(dtype: str = "f32") -> TensorType:
    """A rank-0 tensor type."""
    return TensorType(dtype, ())


def check_elements(shape: Iterable[Dim], what: str, limit: int = MAX_ELEMENTS) -> int:
    """The element count of ``shape`` (``N`` counted as 1); a ShapeError naming ``what`` when
    it exceeds ``limit`` (:data:`MAX_ELEMENTS`)::

        check_elements((1, 2**40, 3, 3), "weight")   # ShapeError: weight [1,1099511627776,3,3] ...
    """
    dims = tuple(shape)
    count = math.prod(1 if d == BATCH else int(d) for d in dims)  # type: ignore[arg-type]
    if count > limit:
        shown = ",".join(str(d) for d in dims)
        per = " per batch item" if BATCH in dims else ""
        raise ShapeError(
            f"{what} [{shown}] would hold {count} elements{per}, more than the limit of "
            f"{limit} (2**31 - 1) elements per tensor"
        )
    return count


def dim_mul(a: Dim, b: Dim) -> Dim:
    """Product of two dims; ``N`` times 1 stays ``N``; ``N`` times k is not representable."""
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    raise ShapeError(f"cannot multiply symbolic dimension {a} by {b}")
