"""Augmentations: shapes and dtypes kept, seeded, and the geometric ones doing what they say."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from convforge.data import (
    Compose,
    GaussianNoise,
    HorizontalFlip,
    RandomAffine,
    RandomRotation,
    RandomScaling,
    RandomTranslation,
    SaltAndPepper,
    VerticalFlip,
    default_mnist_augmentation,
)
from convforge.errors import AttributeValueError, DTypeError, ShapeError


def _batch(n: int = 6, c: int = 1, h: int = 12, w: int = 10, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(42).random((n, c, h, w)).astype(dtype)


ALL = [
    HorizontalFlip(0.5),
    VerticalFlip(0.5),
    RandomRotation(15),
    RandomTranslation(2),
    RandomTranslation(0.1, relative=True, integer=False),
    RandomScaling((0.8, 1.2)),
    RandomAffine(10, (0.9, 1.1), 2),
    SaltAndPepper(0.1),
    GaussianNoise(0.1),
    Compose([RandomRotation(5), GaussianNoise(0.05)]),
    default_mnist_augmentation(),
]


@pytest.mark.parametrize("aug", ALL, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_dtype_range_kept_and_input_untouched(aug, dtype):
    x = _batch(c=2, dtype=dtype)
    before = x.copy()
    out = aug(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out is not x and not np.shares_memory(out, x)
    assert np.array_equal(x, before)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("aug", ALL, ids=repr)
def test_seeded_determinism(aug):
    x = _batch()
    a = aug(x, np.random.default_rng(7))
    b = aug(x, np.random.default_rng(7))
    c = aug(x, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("flip", [HorizontalFlip, VerticalFlip])
def test_flip_twice_is_identity(flip):
    x = _batch()
    once = flip(1.0)(x, np.random.default_rng(0))
    assert not np.array_equal(once, x)
    assert np.array_equal(flip(1.0)(once, np.random.default_rng(1)), x)
    assert np.array_equal(flip(0.0)(x, np.random.default_rng(0)), x)


def test_flip_directions():
    x = _batch()
    rng = np.random.default_rng(0)
    assert np.array_equal(HorizontalFlip(1.0)(x, rng), x[..., ::-1])
    assert np.array_equal(VerticalFlip(1.0)(x, rng), x[..., ::-1, :])


def test_flip_probability_is_per_sample():
    x = _batch(n=200)
    out = HorizontalFlip(0.5)(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, x)])
    assert 60 < flipped.sum() < 140


def test_identity_parameters_are_exact():
    x = _batch()
    rng = np.random.default_rng(0)
    assert np.array_equal(RandomRotation(0)(x, rng), x)
    assert np.array_equal(RandomTranslation(0)(x, rng), x)
    assert np.array_equal(RandomScaling((1.0, 1.0))(x, rng), x)
    assert np.array_equal(RandomAffine()(x, rng), x)
    assert np.array_equal(GaussianNoise(0)(x, rng), x)
    assert np.array_equal(SaltAndPepper(0)(x, rng), x)
    assert np.array_equal(Compose([])(x, rng), x)


def test_rotation_matches_scipy_rotate():
    x = _batch(n=1, c=2)
    out = RandomRotation((30.0, 30.0))(x, np.random.default_rng(0))
    ref = ndimage.rotate(x[0], 30.0, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(out[0], ref, atol=1e-6)


def test_rotation_is_counter_clockwise():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 6:] = 1.0  # a bar to the right of the centre
    out = RandomRotation((90.0, 90.0))(x, np.random.default_rng(0))
    expected = np.zeros_like(x)
    expected[0, 0, :3, 4] = 1.0  # now above the centre
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_integer_translation_moves_pixels_exactly():
    x = np.zeros((50, 1, 12, 12), np.float32)
    x[:, 0, 5, 6] = 1.0
    out = RandomTranslation(2)(x, np.random.default_rng(0))
    assert all(np.count_nonzero(o) == 1 for o in out)
    positions = {tuple(np.argwhere(o[0] == 1.0)[0]) for o in out}
    assert {r for r, _ in positions} == {3, 4, 5, 6, 7} and {c for _, c in positions} == {4, 5, 6, 7, 8}


def test_scaling_enlarges_about_centre():
    x = np.zeros((1, 1, 21, 21), np.float32)
    x[0, 0, 8:13, 8:13] = 1.0
    out = RandomScaling((2.0, 2.0))(x, np.random.default_rng(0))
    assert np.array_equal(np.argwhere(out[0, 0] == 1.0).mean(axis=0), [10.0, 10.0])
    assert (out[0, 0] > 0.5).sum() > 4 * (x[0, 0] > 0.5).sum() * 0.8


def test_noise_stays_in_unit_interval_and_has_the_right_scale():
    x = np.full((4, 1, 32, 32), 0.5, np.float32)
    out = GaussianNoise(0.1)(x, np.random.default_rng(0))
    assert abs(float((out - x).std()) - 0.1) < 0.01
    heavy = GaussianNoise(5.0)(_batch(), np.random.default_rng(0))
    assert heavy.min() == 0.0 and heavy.max() == 1.0


def test_salt_and_pepper_fraction():
    x = np.full((4, 1, 50, 50), 0.5, np.float32)
    out = SaltAndPepper(0.2)(x, np.random.default_rng(0))
    changed = out != 0.5
    assert abs(changed.mean() - 0.2) < 0.02
    assert set(np.unique(out[changed])) == {0.0, 1.0}


def test_compose_applies_in_order():
    x = _batch()
    composed = Compose([HorizontalFlip(1.0), VerticalFlip(1.0)])(x, np.random.default_rng(0))
    assert np.array_equal(composed, x[..., ::-1, ::-1])


def test_default_mnist_augmentation_has_no_flips_and_changes_images():
    aug = default_mnist_augmentation()
    assert not any(isinstance(a, HorizontalFlip | VerticalFlip) for a in aug.augmentations)
    x = np.zeros((8, 1, 28, 28), np.float32)
    x[:, :, 8:20, 12:16] = 1.0
    out = aug(x, np.random.default_rng(0))
    assert not np.array_equal(out, x)
    # Mild: most of the stroke's mass stays.
    assert abs(out.sum() / x.sum() - 1.0) < 0.35


def test_input_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match="NCHW.*\\[3, 4\\]"):
        GaussianNoise(0.1)(np.zeros((3, 4), np.float32), rng)
    with pytest.raises(DTypeError, match="floating.*uint8"):
        RandomRotation(5)(np.zeros((1, 1, 4, 4), np.uint8), rng)
    with pytest.raises(DTypeError, match="NumPy array.*list"):
        HorizontalFlip()([[0.0]], rng)
    with pytest.raises(AttributeValueError, match="Generator.*int"):
        HorizontalFlip()(_batch(), 0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: HorizontalFlip(1.5), "p in \\[0, 1\\]"),
        (lambda: VerticalFlip(-0.1), "p in \\[0, 1\\]"),
        (lambda: RandomRotation(-5), "degrees >= 0"),
        (lambda: RandomRotation((10, -10)), "low <= high"),
        (lambda: RandomRotation("ten"), "number or a \\(low, high\\)"),
        (lambda: RandomTranslation(-1), "max_shift >= 0"),
        (lambda: RandomTranslation(2, relative=True), "fraction"),
        (lambda: RandomScaling(1.1), "pair"),
        (lambda: RandomScaling((0.0, 1.1)), "0 < low"),
        (lambda: SaltAndPepper(2), "amount"),
        (lambda: GaussianNoise(-1), "std >= 0"),
        (lambda: Compose([HorizontalFlip(), 3]), "item 1 is int"),
    ],
)
def test_constructor_validation(make, match):
    with pytest.raises(AttributeValueError, match=match):
        make()
