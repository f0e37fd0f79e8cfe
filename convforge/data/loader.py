"""Mini-batches over in-memory arrays, reshuffled each epoch, reproducibly.

``DataLoader`` is the iterable to use in a training loop: each pass over it is one epoch, and
the epoch number (which advances after every pass, or is set with ``set_epoch``) seeds that
epoch's shuffle and augmentation together with ``seed``. ``batches`` is the one-epoch
function underneath.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from convforge.errors import AttributeValueError, DTypeError, ShapeError

__all__ = ["DataLoader", "batches"]

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise AttributeValueError(f"expected {name} to be an int >= {minimum}, given {value!r}")
    return int(value)


def _check_arrays(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    for name, arr in (("x", x), ("y", y)):
        if not isinstance(arr, np.ndarray):
            raise DTypeError(f"expected {name} to be a NumPy array, given {type(arr).__name__}")
        if arr.ndim == 0:
            raise ShapeError(f"expected {name} to have a leading sample dimension, given a 0-d array")
    if len(x) != len(y):
        raise ShapeError(f"expected x and y to hold the same number of samples, given {len(x)} and {len(y)}")
    return x, y


def _check_transform(transform: object) -> Transform | None:
    if transform is not None and not callable(transform):
        raise AttributeValueError(
            "expected transform to be None or a callable transform(x, rng) -> x, "
            f"given {type(transform).__name__}"
        )
    return transform


def _epoch_rngs(seed: int, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
    # Independent streams for the shuffle and the augmentation, so switching augmentation on
    # or off does not change the order in which samples are visited.
    shuffle_seq, transform_seq = np.random.SeedSequence([seed, epoch]).spawn(2)
    return np.random.default_rng(shuffle_seq), np.random.default_rng(transform_seq)


def _batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    transform: Transform | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(x)
    shuffle_rng, transform_rng = _epoch_rngs(seed, epoch)
    order = shuffle_rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        # Fancy indexing copies, so a caller writing into a batch cannot corrupt the dataset.
        xb, yb = x[idx], y[idx]
        if transform is not None:
            out = transform(xb, transform_rng)
            if not isinstance(out, np.ndarray) or out.shape[:1] != xb.shape[:1]:
                got = list(out.shape) if isinstance(out, np.ndarray) else type(out).__name__
                raise ShapeError(
                    f"expected transform to return an array of {len(xb)} samples like its input "
                    f"{list(xb.shape)}, given {got}"
                )
            xb = out
        yield xb, yb


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    transform: Transform | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` over one epoch; every sample appears once.

    The order (when ``shuffle``) and the ``transform(x_batch, rng)`` randomness depend only on
    ``(seed, epoch)``. The last batch is smaller unless ``drop_last``. Arguments are checked
    when called, before the first batch is requested.
    """
    x, y = _check_arrays(x, y)
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    epoch = _check_int(epoch, "epoch", 0)
    transform = _check_transform(transform)
    return _batches(x, y, batch_size, bool(shuffle), seed, epoch, bool(drop_last), transform)


class DataLoader:
    """Iterate mini-batches over ``(x, y)``, one epoch per pass, reshuffled every epoch.

    >>> loader = DataLoader(x_train, y_train, batch_size=64, transform=default_mnist_augmentation())
    >>> for epoch in range(5):
    ...     for xb, yb in loader:      # epoch 0, 1, 2, ... in turn
    ...         loss = step(xb, yb)

    Call ``set_epoch(e)`` to choose the epoch the next pass uses (e.g. when resuming).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        transform: Transform | None = None,
    ):
        self.x, self.y = _check_arrays(x, y)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.shuffle = bool(shuffle)
        self.seed = _check_int(seed, "seed", 0)
        self.drop_last = bool(drop_last)
        self.transform = _check_transform(transform)
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next pass will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch`` (its shuffle and augmentation)."""
        self._epoch = _check_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self._epoch
        # Advance at the start, so a pass abandoned half-way still moves to a new order.
        self._epoch += 1
        return _batches(
            self.x, self.y, self.batch_size, self.shuffle, self.seed, epoch, self.drop_last, self.transform
        )

    def __repr__(self) -> str:
        return (
            f"DataLoader({len(self.x)} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self._epoch})"
        )
