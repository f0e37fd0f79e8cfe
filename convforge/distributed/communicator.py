"""The MPI communicator the IR's collectives run through, and what a data-parallel run
needs besides: the initial broadcast, the first-step mismatch check, rank-0 helpers and
the fault path.

Faults: a rank that raises inside a guarded region (a training step, ``convforge train``)
or lets an exception reach the top level prints ``convforge: rank r of p failed ...`` and
calls ``MPI_Abort``, which makes the launcher (``mpiexec``, ``srun``) end every rank at
once: no rank waits forever in an ``Allreduce`` for a peer that is gone. A rank killed
outright (``kill -9``, the out-of-memory killer) is noticed by the launcher, which ends the
others the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from convforge.errors import ConvforgeError

#: environment variables an MPI launcher sets in each rank (MPICH/Hydra, Open MPI, PMIx, SLURM)
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
#: the most batch dimensions the first-step check compares
_MAX_DIMS = 8


@dataclasses.dataclass(frozen=True)
class MPI:
    """Data-parallel training over MPI, the option ``compile_train(..., distributed=MPI())`` takes.

    ``bucket_mb``: gradients are averaged in flat buckets of about this size (PyTorch DDP's
    ``bucket_cap_mb``; a step makes one ``Allreduce`` per bucket). ``cuda_aware``: the MPI
    library takes CUDA device memory (numba-cuda device arrays reach it through
    ``__cuda_array_interface__``); otherwise device buffers are staged through the host.
    """

    bucket_mb: float = 1.0
    cuda_aware: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.bucket_mb, bool)
            or not isinstance(self.bucket_mb, (int, float))
            or not (0 < self.bucket_mb <= 1024)
        ):
            raise ConvforgeError(f"distributed.MPI: bucket_mb must be in (0, 1024], got {self.bucket_mb!r}")

    @property
    def bucket_bytes(self) -> int:
        return max(1, int(self.bucket_mb * 2**20))

    def communicator(self) -> MPICommunicator:
        """This process's :class:`MPICommunicator` over ``MPI.COMM_WORLD`` (one per process)."""
        global _WORLD
        if _WORLD is None:
            _WORLD = MPICommunicator(_mpi().COMM_WORLD, cuda_aware=self.cuda_aware)
        return _WORLD


_WORLD: MPICommunicator | None = None


def _mpi() -> Any:
    try:
        from mpi4py import MPI as mpi
    except ImportError as exc:
        raise ConvforgeError(
            f"distributed training needs mpi4py and an MPI library ({exc}); "
            'install them with pip install "convforge[distributed]"'
        ) from None
    return mpi


class MPICommunicator:
    """An MPI communicator as the IR's collectives use it (``ir.ops.collective.Communicator``),
    plus broadcast, the mismatch check and the fault path."""

    def __init__(self, comm: Any, cuda_aware: bool = False) -> None:
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.cuda_aware = cuda_aware
        #: seconds spent in ``Allreduce`` (the benchmark's communication fraction)
        self.seconds = 0.0
        self.calls = 0
        if self.size > 1:
            install_excepthook(self)

    # -- collectives ---------------------------------------------------------------------
    def all_reduce(self, buf: Any, op: str) -> None:
        """Reduce ``buf`` in place over the ranks (``"sum"`` or ``"mean"``): a NumPy array, or a
        device array (``__cuda_array_interface__``), given to MPI directly when ``cuda_aware``
        and else copied through the host."""
        import time

        start = time.perf_counter()
        if isinstance(buf, np.ndarray):
            self._all_reduce_host(buf, op)
        elif self.cuda_aware:
            self.comm.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
            if op == "mean" and self.size > 1:
                _scale_device(buf, 1.0 / self.size)
        else:
            host = buf.copy_to_host()
            self._all_reduce_host(host, op)
            buf.copy_to_device(host)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def _all_reduce_host(self, buf: np.ndarray, op: str) -> None:
        if self.size == 1:
            return
        self.comm.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
        if op == "mean":
            np.multiply(buf, buf.dtype.type(1.0 / self.size), out=buf)

    def broadcast(self, arrays: Mapping[str, np.ndarray], root: int = 0) -> None:
        """Overwrite every array with ``root``'s values: one ``Bcast`` per dtype, of the
        arrays packed flat in key order (every rank holds the same keys and shapes)."""
        if self.size == 1:
            return
        for keys, flat in _packed(arrays):
            self.comm.Bcast(flat, root=root)
            _unpack(flat, arrays, keys)

    def average(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The element-wise mean over the ranks of every array, as new arrays: one
        ``Allreduce`` per dtype (``step.gradients()`` averaged as DDP leaves ``.grad``)."""
        out = {key: np.array(arr, copy=True) for key, arr in arrays.items()}
        for keys, flat in _packed(out):
            self._all_reduce_host(flat, "mean")
            _unpack(flat, out, keys)
        return out

    def check_same(self, what: str, description: str) -> None:
        """Raise on every rank, naming the ranks, when ``description`` (of the model, of the
        batch) is not the same on all ranks; a fixed-size exchange (no pickle), so a
        mismatch cannot derail the collective itself."""
        digest = np.frombuffer(hashlib.sha256(description.encode()).digest(), dtype=np.uint8)
        gathered = np.empty((self.size, digest.size), dtype=np.uint8)
        self.comm.Allgather(digest, gathered)
        differ = [r for r in range(self.size) if not np.array_equal(gathered[r], gathered[0])]
        if differ:
            raise ConvforgeError(
                f"distributed: rank(s) {', '.join(map(str, differ))} have a different {what} than "
                f"rank 0 (this is rank {self.rank}: {description}); every rank must run the same "
                "model on batches of the same shape"
            )

    def check_batch(self, shape: tuple[int, ...]) -> None:
        """:meth:`check_same` for a batch shape, naming each rank's shape."""
        dims = np.full(_MAX_DIMS + 1, -1, dtype=np.int64)
        dims[0] = len(shape)
        dims[1 : 1 + min(len(shape), _MAX_DIMS)] = shape[:_MAX_DIMS]
        gathered = np.empty((self.size, dims.size), dtype=np.int64)
        self.comm.Allgather(dims, gathered)
        shapes = [list(row[1 : 1 + min(int(row[0]), _MAX_DIMS)]) for row in gathered]
        differ = [r for r, s in enumerate(shapes) if s != shapes[0]]
        if differ:
            listing = ", ".join(f"rank {r}: {s}" for r, s in enumerate(shapes))
            raise ConvforgeError(
                f"distributed: rank(s) {', '.join(map(str, differ))} feed a batch of another shape "
                f"than rank 0 ({listing}); per-rank batches must have the same shape "
                "(DistributedSampler gives every rank as many images)"
            )

    def barrier(self) -> None:
        self.comm.Barrier()

    # -- faults --------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Any exception inside ends every rank (``MPI_Abort``) with a message naming this rank:
        the other ranks may be waiting for this one in a collective."""
        try:
            yield
        except BaseException as exc:
            if self.size == 1:
                raise
            self.abort(exc, what)

    def abort(self, exc: BaseException, what: str = "") -> None:
        """Report ``exc`` as this rank's failure on stderr and abort every rank."""
        where = f" in {what}" if what else ""
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        sys.stderr.write(
            f"convforge: rank {self.rank} of {self.size} failed{where}: {detail}\n"
            f"convforge: aborting all {self.size} ranks (MPI_Abort)\n"
        )
        sys.stderr.flush()
        self.comm.Abort(1)

    def __repr__(self) -> str:
        return f"<MPICommunicator rank {self.rank} of {self.size}>"


def _packed(arrays: Mapping[str, np.ndarray]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Per dtype, the keys (sorted) and their arrays concatenated flat."""
    by_dtype: dict[np.dtype, list[str]] = {}
    for key in sorted(arrays):
        by_dtype.setdefault(arrays[key].dtype, []).append(key)
    for dtype, keys in by_dtype.items():
        yield keys, np.concatenate([np.ravel(arrays[k]) for k in keys]).astype(dtype, copy=False)


def _unpack(flat: np.ndarray, arrays: Mapping[str, np.ndarray], keys: list[str]) -> None:
    """Copy ``flat``'s consecutive slices back into ``arrays[keys]`` (in place)."""
    start = 0
    for key in keys:
        arr = arrays[key]
        arr[...] = flat[start : start + arr.size].reshape(arr.shape)
        start += arr.size


def install_excepthook(comm: MPICommunicator) -> None:
    """An uncaught exception on any rank aborts all of them (instead of leaving the others
    blocked in a collective), naming the rank."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        comm.abort(value, "the main program")

    sys.excepthook = hook


_SCALE_KERNEL: Any = None


def _scale_device(buf: Any, factor: float) -> None:
    """``buf *= factor`` on the device (the mean after a CUDA-aware sum)."""
    global _SCALE_KERNEL
    from numba import cuda

    if _SCALE_KERNEL is None:

        @cuda.jit
        def scale(x, f):
            i = cuda.grid(1)
            if i < x.size:
                x[i] = x[i] * f

        _SCALE_KERNEL = scale
    flat = buf.reshape(buf.size)
    threads = 128
    _SCALE_KERNEL[(flat.size + threads - 1) // threads, threads](flat, flat.dtype.type(factor))


# -- rank-0 helpers -----------------------------------------------------------------------
def launched() -> bool:
    """Whether an MPI launcher started this process as one of several ranks."""
    return _launcher_value(_LAUNCHER_SIZE, 1) > 1


def get_rank() -> int:
    """This process's rank (0 when not launched by an MPI launcher)."""
    return _WORLD.rank if _WORLD is not None else _launcher_value(_LAUNCHER_RANK, 0)


def get_world_size() -> int:
    """How many ranks (1 when not launched by an MPI launcher)."""
    return _WORLD.size if _WORLD is not None else _launcher_value(_LAUNCHER_SIZE, 1)


def is_main() -> bool:
    """Rank 0: the one that prints progress and writes weights, history and curves."""
    return get_rank() == 0


def _launcher_value(names: tuple[str, ...], default: int) -> int:
    """The first of the launcher's variables ``names`` that is set, else ``default``."""
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default
