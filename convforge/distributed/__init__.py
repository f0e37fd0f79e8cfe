"""Data-parallel training over MPI (``mpi4py``): ``compile_train(..., distributed=cf.distributed.MPI())``
under ``mpiexec -n 4`` trains one model on four processes, each on its shard of the data.

* :class:`MPI`: the configuration ``compile_train`` takes; its :meth:`MPI.communicator`
  wraps ``MPI.COMM_WORLD`` (:class:`MPICommunicator`), the run-time object the IR's
  ``all_reduce`` nodes exchange gradients through.
* :class:`DistributedSampler`: each rank's disjoint shard of every epoch's permutation;
  :class:`DistributedLoader`: the batches of that shard (a ``DataLoader``).
* :func:`get_rank`, :func:`get_world_size`, :func:`is_main`: rank-0-only printing and saving.

Install with ``pip install "convforge[distributed]"`` (``mpi4py`` and the ``mpich`` wheel);
see ``docs/distributed.md``.
"""

from convforge.distributed.communicator import (
    MPI,
    MPICommunicator,
    get_rank,
    get_world_size,
    is_main,
    launched,
)
from convforge.distributed.sampler import DistributedLoader, DistributedSampler

__all__ = [
    "MPI",
    "DistributedLoader",
    "DistributedSampler",
    "MPICommunicator",
    "get_rank",
    "get_world_size",
    "is_main",
    "launched",
]
