"""Data-parallel scaling: the same training at 1, 2, ... ranks under ``mpiexec``.

Run: ``python benchmarks/bench_distributed.py [--ranks 1,2] [--model lenet5] [--images 2048]
[--batch 64] [--epochs 2] [--cores N]``. Every configuration trains the same model on the
same images with the same global batch (``--batch``, split over the ranks) and the same
optimizer; each rank gets ``cores // ranks`` Numba threads, so the total matches the
machine. Prints a markdown table: the last epoch's time and images/s, the step time, the
time per step inside ``Allreduce`` (waiting for the slower rank included) and its fraction
of the step, and the cost of the same ``Allreduce`` calls alone, after a barrier.
Needs the distributed extra (``mpi4py``, ``mpiexec``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


def mpiexec() -> str:
    """The launcher: the mpich wheel's beside this Python, else the one on PATH."""
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        raise SystemExit('mpiexec not found: pip install ".[distributed]" (or load your cluster\'s MPI)')
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--images", type=int, default=2048, help="training images per epoch")
    p.add_argument("--batch", type=int, default=64, help="global batch (split over the ranks)")
    p.add_argument("--epochs", type=int, default=2, help="epochs; the last one is reported")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="total threads")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        threads = max(1, args.cores // ranks)
        if args.batch % ranks:
            raise SystemExit(f"--batch {args.batch} does not split over {ranks} ranks")
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        forwarded = ["--model", args.model, "--images", str(args.images), "--batch", str(args.batch),
                     "--epochs", str(args.epochs)]  # fmt: skip
        cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(HERE), "--worker", *forwarded]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"ranks": ranks, "threads": threads, **row})
    print(table(rows, args))
    return 0


def worker(args: argparse.Namespace) -> int:
    """One rank: train, time the last epoch and its ``Allreduce`` calls; rank 0 prints JSON."""
    import convforge as cf
    from convforge import optim
    from convforge.usermodel import resolve_model

    (x, y), _ = cf.data.mnist(seed=0)
    x, y = x[: args.images], y[: args.images]
    cf.manual_seed(0)
    model, shape = resolve_model(args.model)
    step = cf.compile_train(
        model, (None, *shape), optimizer=optim.SGD(lr=0.05, momentum=0.9), distributed=cf.distributed.MPI()
    )
    comm = step.communicator
    per_rank = args.batch // comm.size
    loader = cf.distributed.DistributedLoader(x, y, per_rank, drop_last=True)
    step.warmup(x[:per_rank], y[:per_rank])
    for _ in range(args.epochs):
        comm.barrier()
        comm.seconds, comm.calls = 0.0, 0
        start = time.perf_counter()
        losses = [step(xb, yb) for xb, yb in loader]
        seconds = time.perf_counter() - start
    steps, in_allreduce, calls = len(losses), comm.seconds, comm.calls
    buckets = [n.inputs[0].type.numel(1) for n in step.graph.nodes if n.op == "all_reduce"]
    alone = allreduce_alone(comm, buckets, x.dtype)
    if comm.rank == 0:
        print(json.dumps({
            "model": args.model, "per_rank_batch": per_rank, "steps": steps,
            "epoch_s": seconds, "images_s": steps * args.batch / seconds,
            "step_ms": 1e3 * seconds / steps, "allreduce_ms": 1e3 * in_allreduce / steps,
            "calls_per_step": calls / steps, "alone_ms": 1e3 * alone,
            "bucket_elements": buckets, "loss": float(np.mean(losses)),
        }))  # fmt: skip
    return 0


def allreduce_alone(comm, buckets: list[int], dtype: np.dtype, repeats: int = 50) -> float:
    """Seconds one step's ``Allreduce`` calls take with the ranks in step (after a barrier):
    the transfer, without waiting for a slower rank's compute."""
    bufs = [np.ones(n, dtype=dtype) for n in buckets]
    best = float("inf")
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        for buf in bufs:
            comm.all_reduce(buf, "mean")
        best = min(best, time.perf_counter() - start)
    return best


def table(rows: list[dict], args: argparse.Namespace) -> str:
    base = rows[0]["images_s"]
    lines = [
        f"{args.model}, {args.images} images, global batch {args.batch}, last of {args.epochs} epochs, "
        f"{args.cores} cores in all",
        "",
        "| ranks | threads/rank | batch/rank | epoch s | images/s | speed-up | step ms | Allreduce ms/step "
        "| in Allreduce | Allreduce alone ms | calls/step | mean loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']} | {r['threads']} | {r['per_rank_batch']} | {r['epoch_s']:.2f} | "
            f"{r['images_s']:,.0f} | {r['images_s'] / base:.2f}x | {r['step_ms']:.2f} | "
            f"{r['allreduce_ms']:.3f} | {r['allreduce_ms'] / r['step_ms']:.1%} | {r['alone_ms']:.3f} | "
            f"{r['calls_per_step']:.0f} | {r['loss']:.4f} |"
        )
    sizes = ", ".join(str(n) for n in rows[-1]["bucket_elements"])
    lines.append(f"\nbuckets (elements): {sizes}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
