"""LeNet-5 on numba-cpu vs PyTorch eager (same thread count), alternating calls, medians.

Run: ``python benchmarks/bench_cpu.py [--threads 2] [--reps 30]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def lenet_torch():
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10),
    )  # fmt: skip


def lenet_cf():
    from convforge import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def alternate(fns: dict, reps: int, inner: int = 5) -> dict:
    """Median per-call seconds of each function, timed in alternating blocks."""
    times: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t) / inner)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_batch(cf, optim, torch, F, model, tmodel, batch: int, reps: int) -> list[tuple[str, float, float]]:
    """Inference and one training step at ``batch``: (case, convforge s, torch s) rows."""
    rows = []
    x = np.random.rand(batch, 1, 28, 28).astype(np.float32)
    y = np.random.randint(0, 10, batch).astype(np.int64)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    net = cf.compile(model, input_shape=(None, 1, 28, 28), backend="numba-cpu")
    net(x)

    def t_inf():
        with torch.no_grad():
            tmodel(tx)

    r = alternate({"cf": lambda: net(x), "torch": t_inf}, reps)
    rows.append((f"inference b{batch}", r["cf"], r["torch"]))
    try:
        step = cf.compile_train(
            model,
            input_shape=(None, 1, 28, 28),
            loss="cross_entropy",
            optimizer=optim.SGD(lr=0.01, momentum=0.9),
            backend="numba-cpu",
        )
        step(x, y)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)

        def t_train():
            topt.zero_grad()
            F.cross_entropy(tmodel(tx), ty).backward()
            topt.step()

        r = alternate({"cf": lambda: step(x, y), "torch": t_train}, reps)
        rows.append((f"train step b{batch}", r["cf"], r["torch"]))
    except Exception as exc:  # report, keep the inference rows
        rows.append(
            (f"train step b{batch} (failed: {type(exc).__name__}: {exc})", float("nan"), float("nan"))
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batches", default="64,256")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    import convforge as cf
    from convforge import optim

    torch.set_num_threads(args.threads)
    rows = []
    tmodel = lenet_torch()
    model = lenet_cf()
    for batch in [int(b) for b in args.batches.split(",")]:
        rows += bench_batch(cf, optim, torch, F, model, tmodel, batch, args.reps)
    print(f"| case ({args.threads} threads) | convforge ms | torch ms | ratio |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a * 1e3:.3f} | {b * 1e3:.3f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
