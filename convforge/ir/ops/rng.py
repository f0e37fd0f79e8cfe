"""A counter-based random number generator that every backend reproduces bit for bit.

Dropout draws its mask from ``uniform(seed, step, index)``: a pure function of the
dropout node's ``seed`` attribute, the training ``step`` and the flat C-order index of
the element, so the mask is regenerated in backward instead of stored, and the
reference, Numba CPU and Numba CUDA backends draw the same mask.

The algorithm (all arithmetic on unsigned 64-bit integers, multiplication and addition
wrapping modulo 2**64)::

    mix(z)  = z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9
              z ^= z >> 27;  z *= 0x94D049BB133111EB
              z ^= z >> 31                                  (splitmix64's finaliser)
    key     = mix(uint64(seed) ^ mix(uint64(step) + 0x9E3779B97F4A7C15))
    bits    = mix(key + uint64(index) * 0x9E3779B97F4A7C15 + 0xD1B54A32D192ED03)
    uniform = float64(bits >> 11) * 2**-53                  (exact, in [0, 1))

``seed``, ``step`` and ``index`` are converted to uint64 by two's-complement wrapping.
A dropout element is kept when ``uniform >= p`` (the comparison in float64).

:func:`hash_uniform` is written with ``np.uint64`` scalars only, so the same function
compiles unchanged with ``numba.njit`` and as a ``numba.cuda`` device function. Run by
CPython it works too, but NumPy warns about the (intended) scalar overflow; the reference
uses the vectorised :func:`uniform_array`, which computes the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
INDEX_OFFSET = np.uint64(0xD1B54A32D192ED03)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
S30 = np.uint64(30)
S27 = np.uint64(27)
S31 = np.uint64(31)
S11 = np.uint64(11)
TWO_POW_M53 = np.float64(2.0**-53)


def mix64(z: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a bijection of uint64 with good avalanche."""
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return z ^ (z >> S31)


def hash_uniform(seed: int, step: int, index: int) -> float:
    """The uniform float64 in [0, 1) for element ``index`` of draw (``seed``, ``step``).

    Self-contained (``mix`` is written out three times) so that ``numba.njit(hash_uniform)``
    and ``numba.cuda.jit(device=True)(hash_uniform)`` compile it unchanged.
    """
    z = np.uint64(step) + GOLDEN
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    z = np.uint64(seed) ^ (z ^ (z >> S31))
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    z = (z ^ (z >> S31)) + np.uint64(index) * GOLDEN + INDEX_OFFSET
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    z = z ^ (z >> S31)
    return np.float64(z >> S11) * TWO_POW_M53


def _to_u64(value: int) -> np.uint64:
    return np.array(value, dtype=np.int64).astype(np.uint64)[()]


def uniform_array(seed: int, step: int, shape: Sequence[int]) -> np.ndarray:
    """float64 array of ``shape`` whose element at flat C-order index i is ``hash_uniform(seed, step, i)``."""
    with np.errstate(over="ignore"):
        key = mix64(_to_u64(seed) ^ mix64(_to_u64(step) + GOLDEN))
        index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
        bits = mix64(key + index * GOLDEN + INDEX_OFFSET)
    return ((bits >> S11).astype(np.float64) * TWO_POW_M53).reshape(tuple(shape))


def rank_seed(seed: int, rank: int) -> int:
    """The dropout ``seed`` of data-parallel rank ``rank``: ``seed`` itself on rank 0 (a
    single process draws the same masks), else ``mix(seed ^ mix(rank + GOLDEN))`` cut to
    63 bits, so each rank draws its own masks, reproducibly."""
    if rank == 0:
        return seed
    with np.errstate(over="ignore"):
        key = mix64(_to_u64(seed) ^ mix64(_to_u64(rank) + GOLDEN))
    return int(key >> np.uint64(1))
