"""The training loop of ``convforge train`` and ``cf.fit`` for a data-parallel step: each rank
trains on its shard, rank 0 alone prints and writes, evaluation is reduced over the ranks.

:func:`convforge.training.train` (``mpiexec -n 4 convforge train``) and :func:`convforge.fit`
(given a step compiled with ``distributed=``) use :class:`DistributedTrainer` for a step
that has a communicator.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from convforge.data import DataLoader
from convforge.distributed.sampler import DistributedLoader
from convforge.errors import ConvforgeError
from convforge.frontend.compile import TrainStep
from convforge.training import EpochRecord, Trainer, TrainResult, _labels, _run_epoch, predict


class DistributedTrainer(Trainer):
    """:class:`~convforge.training.Trainer` on one rank of a data-parallel run.

    * **Data.** A plain ``DataLoader`` becomes a :class:`DistributedLoader` with the same
      options: ``batch_size`` is per rank (as with PyTorch's ``DistributedSampler``), so
      the global batch is ``batch_size`` times the ranks.
    * **Output.** Only rank 0 logs, shows progress and writes weights, history and curves;
      every rank resumes from the same folder (a shared file system, as for the data).
    * **Evaluation.** After each epoch every rank takes rank 0's batch-norm statistics
      (``broadcast_buffers``, as DDP's forward does), predicts its part of the training
      and validation images (``rank::size``, no padding) and the correct counts are summed
      over the ranks: the accuracies are those of the whole sets. The epoch's loss is the
      mean of the steps' global losses; images/s counts every rank's images.
    """

    def __init__(self, step: TrainStep, loader: DataLoader, **options: Any):
        comm = step.communicator
        if comm is None:
            raise ConvforgeError(
                "DistributedTrainer: the step is not data-parallel; compile it with "
                "compile_train(..., distributed=cf.distributed.MPI())"
            )
        if not isinstance(loader, DistributedLoader) and isinstance(loader, DataLoader):
            loader = DistributedLoader(
                loader.x, loader.y, loader.batch_size, shuffle=loader.shuffle, seed=loader.seed,
                drop_last=loader.drop_last, transform=loader.transform,
                num_replicas=comm.size, rank=comm.rank,
            )  # fmt: skip
        if comm.rank != 0:
            options["log"] = _silent
            options["progress"] = False
            step.progress = False
        super().__init__(step, loader, **options)
        self.comm = comm

    def fit(self, resume: str | os.PathLike | None = None) -> TrainResult:
        """:meth:`Trainer.fit`; an error on any rank (a file it cannot read, a bad batch) ends
        every rank naming it, instead of leaving the others waiting in a collective."""
        with self.comm.guard(f"{self.name} training"):
            return super().fit(resume)

    def writes_files(self) -> bool:
        return self.out is not None and self.comm.rank == 0

    def run_epoch(self, epoch: int) -> EpochRecord:
        record = _run_epoch(self.step, self.net, self.loader, epoch, self.epochs, self.progress, None, None)
        with self.comm.guard(f"{self.name} evaluation after epoch {epoch}"):
            self.step.broadcast_buffers()
            sets = [(self.loader.x, self.loader.y), self.val_data]
            counts = np.zeros(2 * len(sets), dtype=np.float64)
            for i, data in enumerate(sets):
                if data is not None and _labels(data[1]):
                    counts[2 * i : 2 * i + 2] = self._correct(*data)
            self.comm.all_reduce(counts, "sum")
        train_acc, val_acc = (
            float(counts[2 * i] / counts[2 * i + 1]) if counts[2 * i + 1] else None for i in range(len(sets))
        )
        return EpochRecord(
            record.epoch,
            record.loss,
            train_acc,
            val_acc,
            record.seconds,
            record.images_per_second * self.comm.size,
        )

    def _correct(self, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
        """This rank's correct predictions and images, of its part of ``(x, y)``."""
        part = self.loader.shard(len(x))
        xs, ys = x[part], y[part]
        if not len(xs):
            return 0, 0
        return int((predict(self.net, xs) == ys).sum()), len(ys)


def _silent(_line: str) -> None:
    """The log of a rank other than 0."""
