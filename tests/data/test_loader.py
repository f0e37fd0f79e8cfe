"""Mini-batching: every sample once per epoch, drop_last, per-epoch reshuffle, validation."""

from __future__ import annotations

import numpy as np
import pytest

from convforge.data import DataLoader, GaussianNoise, batches
from convforge.errors import AttributeValueError, DTypeError, ShapeError


def _data(n: int = 23) -> tuple[np.ndarray, np.ndarray]:
    # Each sample's pixels hold its index, so batches can be traced back to samples.
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 2, 2)).copy()
    return x, np.arange(n, dtype=np.int64)


def _ids(loader) -> list[np.ndarray]:
    out = []
    for xb, yb in loader:
        assert np.array_equal(xb[:, 0, 0, 0].astype(np.int64), yb)  # x and y stay paired
        out.append(yb)
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_sample_once_per_epoch(shuffle):
    x, y = _data()
    loader = DataLoader(x, y, batch_size=5, shuffle=shuffle)
    assert len(loader) == 5
    for _ in range(3):
        ids = _ids(loader)
        assert [len(b) for b in ids] == [5, 5, 5, 5, 3]
        assert sorted(np.concatenate(ids).tolist()) == list(range(23))
    if not shuffle:
        assert np.concatenate(ids).tolist() == list(range(23))


def test_drop_last():
    x, y = _data()
    loader = DataLoader(x, y, batch_size=5, drop_last=True)
    assert len(loader) == 4
    ids = _ids(loader)
    assert [len(b) for b in ids] == [5, 5, 5, 5]
    assert len(set(np.concatenate(ids).tolist())) == 20
    assert len(DataLoader(x, y, batch_size=30, drop_last=True)) == 0
    assert list(DataLoader(x, y, batch_size=30, drop_last=True)) == []
    assert len(DataLoader(x, y, batch_size=23, drop_last=True)) == 1


def test_reshuffles_each_epoch_reproducibly():
    x, y = _data()
    loader = DataLoader(x, y, batch_size=23, seed=3)
    epochs = [np.concatenate(_ids(loader)) for _ in range(3)]
    assert loader.epoch == 3
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # A fresh loader with the same seed replays the same epochs; set_epoch jumps to one.
    again = DataLoader(x, y, batch_size=23, seed=3)
    assert np.array_equal(np.concatenate(_ids(again)), epochs[0])
    again.set_epoch(2)
    assert np.array_equal(np.concatenate(_ids(again)), epochs[2])
    other = DataLoader(x, y, batch_size=23, seed=4)
    assert not np.array_equal(np.concatenate(_ids(other)), epochs[0])


def test_batches_function_matches_loader():
    x, y = _data()
    loader = DataLoader(x, y, batch_size=4, seed=5)
    loader.set_epoch(7)
    from_loader = [yb for _, yb in loader]
    from_fn = [yb for _, yb in batches(x, y, 4, seed=5, epoch=7)]
    assert all(np.array_equal(a, b) for a, b in zip(from_loader, from_fn, strict=True))


def test_batches_are_copies():
    x, y = _data()
    for xb, yb in batches(x, y, 4, shuffle=False):
        xb[:] = -1
        yb[:] = -1
    assert np.array_equal(x, _data()[0]) and np.array_equal(y, _data()[1])


def test_transform_is_applied_seeded_and_independent_of_order():
    x = np.full((10, 1, 4, 4), 0.5, np.float32)
    y = np.arange(10)
    noisy = list(batches(x, y, 4, seed=1, transform=GaussianNoise(0.1)))
    again = list(batches(x, y, 4, seed=1, transform=GaussianNoise(0.1)))
    plain = list(batches(x, y, 4, seed=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(noisy, again))
    assert not np.array_equal(noisy[0][0], plain[0][0])
    # Switching augmentation on does not change which samples are visited in which order.
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(noisy, plain))
    assert noisy[0][0].dtype == np.float32 and noisy[0][0].shape == (4, 1, 4, 4)


def test_transform_must_keep_batch_size():
    x, y = _data()
    with pytest.raises(ShapeError, match="transform.*4 samples"):
        list(batches(x, y, 4, transform=lambda xb, rng: xb[:1]))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, AttributeValueError, "batch_size.*>= 1.*0"),
        ({"batch_size": 2.0}, AttributeValueError, "batch_size"),
        ({"batch_size": True}, AttributeValueError, "batch_size"),
        ({"batch_size": 2, "seed": -1}, AttributeValueError, "seed"),
        ({"batch_size": 2, "transform": 3}, AttributeValueError, "transform"),
    ],
)
def test_argument_validation(kwargs, error, match):
    x, y = _data()
    with pytest.raises(error, match=match):
        DataLoader(x, y, **kwargs)
    with pytest.raises(error, match=match):
        batches(x, y, **kwargs)


def test_array_validation():
    x, y = _data()
    with pytest.raises(ShapeError, match="same number of samples.*23 and 22"):
        DataLoader(x, y[:-1], batch_size=2)
    with pytest.raises(DTypeError, match="x.*NumPy array.*list"):
        batches(x.tolist(), y, 2)
    with pytest.raises(ShapeError, match="y.*0-d"):
        batches(x, np.array(3), 2)
    loader = DataLoader(x, y, batch_size=2)
    with pytest.raises(AttributeValueError, match="epoch"):
        loader.set_epoch(-1)
