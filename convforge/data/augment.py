"""Seeded data augmentation on NCHW image batches.

Every augmentation is a callable ``aug(x, rng) -> x``: ``x`` a floating NCHW batch with values
in ``[0, 1]``, ``rng`` a ``numpy.random.Generator``. Each sample draws its own random
parameters; the result is a new array of the same shape and dtype (the input is never
modified). Geometric transforms interpolate bilinearly (``scipy.ndimage``, ``order=1``) and
fill uncovered pixels with 0 (background).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from convforge.errors import AttributeValueError, DTypeError, ShapeError

__all__ = [
    "Augmentation",
    "Compose",
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomScaling",
    "RandomAffine",
    "SaltAndPepper",
    "GaussianNoise",
    "default_mnist_augmentation",
]


def _check_batch(x: object, who: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{who}: expected a NumPy array, given {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(f"{who}: expected an NCHW batch (4 dimensions), given shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DTypeError(f"{who}: expected a floating-point batch (float32), given {x.dtype}")
    return x


def _check_rng(rng: object, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise AttributeValueError(
            f"{who}: expected rng to be a numpy.random.Generator, given {type(rng).__name__}"
        )
    return rng


def _probability(p: float, who: str, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise AttributeValueError(f"{who}: expected {name} in [0, 1], given {p!r}")
    return float(p)


def _symmetric_range(value: float | Sequence[float], who: str, name: str) -> tuple[float, float]:
    """``d`` -> ``(-d, d)``; ``(lo, hi)`` -> itself; checks ``lo <= hi`` and finiteness."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise AttributeValueError(f"{who}: expected {name} >= 0, given {value!r}")
        lo, hi = -float(value), float(value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise AttributeValueError(
                f"{who}: expected {name} as (low, high) with low <= high, given {value!r}"
            )
    else:
        raise AttributeValueError(
            f"{who}: expected {name} as a number or a (low, high) pair, given {value!r}"
        )
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise AttributeValueError(f"{who}: expected a finite {name}, given {value!r}")
    return lo, hi


class Augmentation(ABC):
    """Base class: subclasses implement ``_apply(x, rng)`` on a checked batch."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        who = type(self).__name__
        x = _check_batch(x, who)
        rng = _check_rng(rng, who)
        return self._apply(x, rng)

    @abstractmethod
    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment a batch already checked to be a floating NCHW array."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(Augmentation):
    """Apply augmentations in order, drawing from the same generator."""

    def __init__(self, augmentations: Sequence[Callable[[np.ndarray, np.random.Generator], np.ndarray]]):
        augmentations = list(augmentations)
        for i, aug in enumerate(augmentations):
            if not callable(aug):
                raise AttributeValueError(
                    f"Compose: expected callables aug(x, rng) -> x, item {i} is {type(aug).__name__}"
                )
        self.augmentations = augmentations

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x
        for aug in self.augmentations:
            out = aug(out, rng)
        # An empty Compose still returns a new array, like every other augmentation.
        return x.copy() if out is x else out


class HorizontalFlip(Augmentation):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p, "HorizontalFlip")

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        flip = rng.random(len(x)) < self.p
        out[flip] = x[flip][..., ::-1]
        return out


class VerticalFlip(Augmentation):
    """Mirror each image top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p, "VerticalFlip")

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        flip = rng.random(len(x)) < self.p
        out[flip] = x[flip][..., ::-1, :]
        return out


def _warp(x: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Resample each image: output pixel ``o`` (row, col) reads input ``matrices[i] @ o + offsets[i]``.

    Samples whose map is the identity are copied unchanged, so a zero rotation or shift is exact.
    """
    out = x.copy()
    eye = np.eye(2)
    for i in range(len(x)):
        m, off = matrices[i], offsets[i]
        if np.array_equal(m, eye) and not off.any():
            continue
        # Channel axis mapped to itself at integer coordinates: order-1 interpolation leaves it exact.
        m3 = np.eye(3)
        m3[1:, 1:] = m
        off3 = np.concatenate([[0.0], off])
        ndimage.affine_transform(
            x[i], m3, offset=off3, output=out[i], order=1, mode="constant", cval=0.0, prefilter=False
        )
    return out


def _center(x: np.ndarray) -> np.ndarray:
    return np.array([(x.shape[2] - 1) / 2.0, (x.shape[3] - 1) / 2.0])


def _affine_params(
    x: np.ndarray, angles_deg: np.ndarray, scales: np.ndarray, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse maps for: rotate counter-clockwise by ``angle`` and scale by ``scale`` about the
    image centre, then move the content by ``shift`` (rows, cols) pixels."""
    c = _center(x)
    theta = np.deg2rad(angles_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # Forward map in (row, col) with rows pointing down: o = c + s * R (i - c) + t, where
    # R = [[cos, -sin], [sin, cos]] turns content counter-clockwise on screen. Inverse:
    # i = M o + off with M = R^T / s and off = c - M (c + t).
    inv = np.empty((len(x), 2, 2))
    inv[:, 0, 0] = cos
    inv[:, 0, 1] = sin
    inv[:, 1, 0] = -sin
    inv[:, 1, 1] = cos
    inv /= scales[:, None, None]
    offsets = c[None, :] - np.einsum("nij,nj->ni", inv, c[None, :] + shifts)
    # Exact zeros for the identity case, so _warp can skip it.
    inv[np.isclose(inv, 0.0, atol=1e-15)] = 0.0
    offsets[np.isclose(offsets, 0.0, atol=1e-12)] = 0.0
    return inv, offsets


class RandomRotation(Augmentation):
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]`` (or a
    ``(low, high)`` range), counter-clockwise for positive angles, about the image centre."""

    def __init__(self, degrees: float | tuple[float, float] = 10.0):
        self.degrees = _symmetric_range(degrees, "RandomRotation", "degrees")

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(x)
        angles = rng.uniform(*self.degrees, size=n)
        return _warp(x, *_affine_params(x, angles, np.ones(n), np.zeros((n, 2))))


class RandomTranslation(Augmentation):
    """Shift each image by offsets drawn uniformly from ``[-max_shift, max_shift]`` per axis.

    ``max_shift`` is in pixels, or a fraction of the image height/width when ``relative=True``.
    With ``integer=True`` (default) shifts are whole pixels, which moves pixels without blurring.
    """

    def __init__(self, max_shift: float = 2, *, relative: bool = False, integer: bool = True):
        if isinstance(max_shift, bool) or not isinstance(max_shift, int | float) or not max_shift >= 0:
            raise AttributeValueError(f"RandomTranslation: expected max_shift >= 0, given {max_shift!r}")
        if relative and max_shift > 1:
            raise AttributeValueError(
                f"RandomTranslation: expected a fraction in [0, 1] with relative=True, given {max_shift!r}"
            )
        self.max_shift = float(max_shift)
        self.relative = bool(relative)
        self.integer = bool(integer)

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(x)
        limit = np.full(2, self.max_shift)
        if self.relative:
            limit = limit * np.array(x.shape[2:])
        if self.integer:
            limit = np.floor(limit)
            shifts = rng.integers(-limit, limit + 1, size=(n, 2)).astype(np.float64)
        else:
            shifts = rng.uniform(-limit, limit, size=(n, 2))
        return _warp(x, *_affine_params(x, np.zeros(n), np.ones(n), shifts))


class RandomScaling(Augmentation):
    """Zoom each image about its centre by a factor drawn uniformly from ``scale`` = ``(low, high)``."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1)):
        if isinstance(scale, int | float):
            raise AttributeValueError(f"RandomScaling: expected scale as a (low, high) pair, given {scale!r}")
        lo, hi = _symmetric_range(scale, "RandomScaling", "scale")
        if lo <= 0:
            raise AttributeValueError(
                f"RandomScaling: expected scale as (low, high) with 0 < low <= high, given {scale!r}"
            )
        self.scale = (lo, hi)

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(x)
        scales = rng.uniform(*self.scale, size=n)
        return _warp(x, *_affine_params(x, np.zeros(n), scales, np.zeros((n, 2))))


class RandomAffine(Augmentation):
    """Rotation, scaling and translation in one resampling (less blur than chaining them).

    ``degrees`` and ``scale`` as in ``RandomRotation`` / ``RandomScaling``; ``max_shift`` in pixels,
    drawn as whole pixels.
    """

    def __init__(
        self,
        degrees: float | tuple[float, float] = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        max_shift: float = 0,
    ):
        self.degrees = RandomRotation(degrees).degrees
        self.scale = RandomScaling(scale).scale
        self.max_shift = RandomTranslation(max_shift).max_shift

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(x)
        angles = rng.uniform(*self.degrees, size=n)
        scales = rng.uniform(*self.scale, size=n)
        limit = math.floor(self.max_shift)
        shifts = rng.integers(-limit, limit + 1, size=(n, 2)).astype(np.float64)
        return _warp(x, *_affine_params(x, angles, scales, shifts))


class SaltAndPepper(Augmentation):
    """Set a fraction ``amount`` of pixels to 1 (salt) or 0 (pepper), half each on average."""

    def __init__(self, amount: float = 0.02):
        self.amount = _probability(amount, "SaltAndPepper", "amount")

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        hit = rng.random(x.shape) < self.amount
        salt = rng.random(x.shape) < 0.5
        out[hit & salt] = 1.0
        out[hit & ~salt] = 0.0
        return out


class GaussianNoise(Augmentation):
    """Add zero-mean Gaussian noise of standard deviation ``std``, then clip to ``[0, 1]``."""

    def __init__(self, std: float = 0.05):
        if isinstance(std, bool) or not isinstance(std, int | float) or not (0 <= std < math.inf):
            raise AttributeValueError(f"GaussianNoise: expected a finite std >= 0, given {std!r}")
        self.std = float(std)

    def _apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.std, size=x.shape).astype(x.dtype)
        return np.clip(x + noise, 0.0, 1.0).astype(x.dtype, copy=False)


def default_mnist_augmentation() -> Compose:
    """Mild augmentation for handwritten digits: no flips (a mirrored digit is another glyph),
    rotation within +-10 degrees, scaling 0.9-1.1, translation within +-2 pixels, light noise."""
    return Compose(
        [
            RandomAffine(degrees=10.0, scale=(0.9, 1.1), max_shift=2),
            GaussianNoise(std=0.02),
        ]
    )
