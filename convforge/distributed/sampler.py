"""``DistributedSampler``: each rank's shard of an epoch, as ``torch.utils.data.DistributedSampler``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import numpy as np

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
