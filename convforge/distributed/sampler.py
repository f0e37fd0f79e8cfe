"""``DistributedSampler``: each rank's shard of an epoch, as ``torch.utils.data.DistributedSampler``;
``DistributedLoader``: a ``DataLoader`` over that shard."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized

import numpy as np

from convforge.data import DataLoader, batches
from convforge.errors import ConvforgeError


class DistributedSampler:
    """The indices of rank ``rank``'s shard of ``dataset`` (a length or a sized object).

    Every rank draws the same permutation of the epoch (``seed + epoch``; call
    :meth:`set_epoch` before each epoch), then takes every ``num_replicas``-th index from
    position ``rank``. With ``drop_last=False`` the permutation is padded with its own first
    indices to a multiple of ``num_replicas`` (a few images are seen twice per epoch); with
    ``drop_last=True`` the tail is dropped. So every rank has the same number of indices, and
    the shards are disjoint (but for the padding) and cover the epoch. As in PyTorch; the
    permutation itself is NumPy's (``default_rng(seed + epoch)``), not torch's.

    >>> sampler = DistributedSampler(4000, num_replicas=2, rank=1)
    >>> sampler.set_epoch(3); shard = np.fromiter(sampler, np.int64)   # 2000 indices
    """

    def __init__(
        self,
        dataset: int | Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        from convforge.distributed.communicator import get_rank, get_world_size

        self.length = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = get_rank() if rank is None else int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ConvforgeError(
                f"DistributedSampler: rank must lie in [0, num_replicas), got rank {self.rank} "
                f"of num_replicas {self.num_replicas}"
            )
        if self.length < 0:
            raise ConvforgeError(f"DistributedSampler: dataset length must be >= 0, got {self.length}")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if drop_last:
            self.num_samples = self.length // self.num_replicas
        else:
            self.num_samples = math.ceil(self.length / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw epoch ``epoch``'s permutation (the same on every rank)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.length)
        else:
            order = np.arange(self.length)
        if self.total_size > self.length and self.length:
            order = np.resize(order, self.total_size)  # repeats from the start, as torch pads
        order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedLoader(DataLoader):
    """A :class:`~convforge.data.DataLoader` over this rank's shard of ``(x, y)``: what
    ``DataLoader(dataset, sampler=DistributedSampler(dataset))`` is in PyTorch.

    Each pass is one epoch: the :class:`DistributedSampler` draws the epoch's permutation
    (the same on every rank) and this rank's shard of it, cut into batches of
    ``batch_size`` (per rank: the global batch is ``batch_size * num_replicas``). Every rank
    has as many batches, of the same sizes, so the ranks' steps pair up. The augmentation
    (``transform``) draws from a stream keyed by ``(seed, rank, epoch)``: a different one per
    rank, the single-process one on rank 0 of 1. ``x`` and ``y`` stay the whole dataset.

    >>> loader = DistributedLoader(x_train, y_train, batch_size=32)   # rank and size from MPI
    >>> for xb, yb in loader: loss = step(xb, yb)
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
        transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        super().__init__(
            x, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, transform=transform
        )
        self.sampler = DistributedSampler(len(self.x), num_replicas, rank, shuffle=shuffle, seed=seed)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self._epoch
        self._epoch += 1  # as DataLoader: an abandoned pass still moves on
        self.sampler.set_epoch(epoch)
        idx = self.sampler.indices()
        # one copy of the shard per epoch; the batches are then slices of it in order
        stream = self.seed * self.sampler.num_replicas + self.sampler.rank
        return batches(
            self.x[idx], self.y[idx], self.batch_size, shuffle=False, seed=stream, epoch=epoch,
            drop_last=self.drop_last, transform=self.transform,
        )  # fmt: skip

    def shard(self, n: int) -> slice:
        """This rank's part of ``n`` evaluation samples, without padding (``rank::num_replicas``):
        the parts are disjoint and cover all ``n``, so counts summed over ranks are exact."""
        return slice(self.sampler.rank, n, self.sampler.num_replicas)
