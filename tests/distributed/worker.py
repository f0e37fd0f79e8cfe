"""One rank of a data-parallel test, run by ``mpiexec -n 2 python worker.py SCENARIO OUT``
(from ``test_distributed.py``). Rank 0 writes what the test compares to ``OUT/*.npz``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

import convforge as cf
from convforge import nn, optim

BATCH = 8  # the combined batch; each of the 2 ranks gets half


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, BATCH)


def plain_model() -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def bn_model(norm: type) -> nn.Module:
    cf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), norm(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def shard(comm, arr: np.ndarray) -> np.ndarray:
    half = len(arr) // comm.size
    return arr[comm.rank * half : (comm.rank + 1) * half]


def run(make, opt, backend: str, steps: int, distributed, clip=None) -> tuple[cf.TrainStep, list[float]]:
    step = cf.compile_train(
        make(), (None, 1, 6, 6), optimizer=opt, backend=backend, distributed=distributed, clip_grad_norm=clip
    )
    losses = []
    for i in range(steps):
        x, y = data(i)
        if distributed is not None:
            x, y = shard(step.communicator, x), shard(step.communicator, y)
        losses.append(step(x, y))
    return step, losses


def equal(out: Path) -> None:
    """Data-parallel steps on B/2 per rank against one process on B."""
    config = cf.distributed.MPI(bucket_mb=0.0001)  # several buckets even for this tiny model
    results = {}
    for backend in ("reference", "numba-cpu"):
        cases = (
            ("sgd", optim.SGD(lr=0.1, momentum=0.9), None),
            ("adam", optim.Adam(lr=0.01), None),
            # torch clips after DDP has averaged: the norm is of the global gradient
            ("sgd_clip", optim.SGD(lr=0.1), 0.05),
        )
        for name, opt, clip in cases:
            dp, dp_losses = run(plain_model, opt, backend, 2, config, clip)
            if dp.communicator.rank == 0:
                single, losses = run(plain_model, opt, backend, 2, None, clip)
                for key, value in dp.state_dict().items():
                    results[f"{backend}/{name}/dp/{key}"] = value
                    results[f"{backend}/{name}/single/{key}"] = single.state_dict()[key]
                results[f"{backend}/{name}/dp/loss"] = np.array(dp_losses)
                results[f"{backend}/{name}/single/loss"] = np.array(losses)
                results[f"{backend}/graph"] = np.array(str(dp.graph))
    if cf.distributed.is_main():
        np.savez(out / "equal.npz", **results)


def batch_norm(out: Path) -> None:
    """Per-rank statistics (BatchNorm2d) against averaged per-rank gradients; SyncBatchNorm
    against BatchNorm2d over the full batch."""
    config = cf.distributed.MPI()
    results = {}
    dp, _ = run(lambda: bn_model(nn.BatchNorm2d), optim.SGD(lr=0.1), "reference", 1, config)
    sync, _ = run(lambda: bn_model(nn.SyncBatchNorm), optim.SGD(lr=0.1), "numba-cpu", 1, config)
    comm = dp.communicator
    if comm.rank == 0:
        x, y = data(0)
        local = cf.compile_train(bn_model(nn.BatchNorm2d), (None, 1, 6, 6), backend="reference")
        before = local.state_dict()
        grads = [local.gradients(x[r * 4 : (r + 1) * 4], y[r * 4 : (r + 1) * 4])[1] for r in range(2)]
        for key, value in dp.state_dict().items():
            results[f"bn/dp/{key}"] = value
            if key in grads[0]:
                results[f"bn/hand/{key}"] = before[key] - 0.1 * (grads[0][key] + grads[1][key]) / 2
        full, _ = run(lambda: bn_model(nn.BatchNorm2d), optim.SGD(lr=0.1), "numba-cpu", 1, None)
        for key, value in sync.state_dict().items():
            results[f"sync/dp/{key}"] = value
            results[f"sync/single/{key}"] = full.state_dict()[key]
        np.savez(out / "bn.npz", **results)


def gradients_and_buffers(out: Path) -> None:
    """``gradients()`` averaged over the ranks; batch-norm buffers broadcast from rank 0
    before each step (DDP's ``broadcast_buffers``)."""
    config = cf.distributed.MPI()
    x, y = data(0)
    dp = cf.compile_train(plain_model(), (None, 1, 6, 6), backend="reference", distributed=config)
    comm = dp.communicator
    loss, grads = dp.gradients(shard(comm, x), shard(comm, y))
    results = {"grad/dp/loss": np.array(loss), **{f"grad/dp/{k}": g for k, g in grads.items()}}
    if comm.rank == 0:
        single = cf.compile_train(plain_model(), (None, 1, 6, 6), backend="reference")
        full_loss, full = single.gradients(x, y)
        results["grad/single/loss"] = np.array(full_loss)
        results.update((f"grad/single/{k}", g) for k, g in full.items() if k != "input")
        results["grad/local/input"] = single.gradients(x[:4], y[:4])[1]["input"]

    bn, _ = run(lambda: bn_model(nn.BatchNorm2d), optim.SGD(lr=0.1), "reference", 1, config)
    bn.broadcast_buffers()  # what step 2 starts with, on every rank
    start = bn.state_dict()
    x2, y2 = data(1)
    bn(shard(comm, x2), shard(comm, y2))
    results.update((f"bn/after2/{k}", v) for k, v in bn.state_dict().items())
    # DDP: this rank's buffers after step 2 are rank 0's after step 1 updated by this rank's batch
    local = cf.compile_train(
        bn_model(nn.BatchNorm2d), (None, 1, 6, 6), optimizer=optim.SGD(lr=0.1), backend="reference"
    )
    local.load_state_dict(start)
    local(shard(comm, x2), shard(comm, y2))
    results.update((f"bn/local/{k}", v) for k, v in local.state_dict().items())
    bn.broadcast_buffers()
    results.update((f"bn/synced/{k}", v) for k, v in bn.state_dict().items())
    np.savez(out / f"grads{comm.rank}.npz", **results)


def fault(out: Path, how: str) -> None:
    """Rank 1 fails in step 3: a bad input (it raises) or SIGKILL."""
    step = cf.compile_train(
        plain_model(), (None, 1, 6, 6), backend="reference", distributed=cf.distributed.MPI()
    )
    rank = step.communicator.rank
    for i in range(5):
        x, y = data(i)
        if rank == 1 and i == 2:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            x = x[:, :, :5]  # the wrong image size: a ShapeError before any kernel
        step(x[:4], y[:4])


def mismatch(out: Path) -> None:
    """Rank 1 feeds a batch of another size at the first step."""
    step = cf.compile_train(
        plain_model(), (None, 1, 6, 6), backend="reference", distributed=cf.distributed.MPI()
    )
    x, y = data(0)
    n = 4 if step.communicator.rank == 0 else 3
    step(x[:n], y[:n])


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    {"equal": equal, "bn": batch_norm, "grads": gradients_and_buffers, "raise": lambda o: fault(o, "raise"),
     "kill": lambda o: fault(o, "kill"), "mismatch": mismatch}[scenario](out)  # fmt: skip
