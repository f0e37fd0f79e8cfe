"""LeNet-5 on numba-cuda vs PyTorch CUDA eager: training step and inference, batch 256 and 1024.

Run on a machine with a CUDA GPU::

    python benchmarks/bench_cuda.py [--batches 256 1024] [--repeats 20] [--blocks 7]

Both sides keep everything on the device: convforge through ``run_device`` with the
updated parameters and momentum fed back into their resident buffers, PyTorch with
tensors on ``cuda``. Calls alternate in blocks (convforge block, torch block, ...), each
block is timed with a device synchronisation at its end, and the table reports the median
per-call time over blocks. Prints a markdown table; exits with a message when there is no
GPU (Numba's simulator is not a benchmark target).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=20, help="calls per timed block")
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks per side (median reported)")
    args = parser.parse_args(argv)

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        print(
            "bench_cuda: NUMBA_ENABLE_CUDASIM is set; the simulator is not a benchmark target",
            file=sys.stderr,
        )
        return 1
    from numba import cuda

    from convforge.backends.numba_cuda.runtime import gpu_available

    if not gpu_available(cuda):
        print(
            "bench_cuda: no CUDA GPU is available (needs an NVIDIA GPU and driver); nothing to measure",
            file=sys.stderr,
        )
        return 1
    import torch

    if not torch.cuda.is_available():
        print(
            "bench_cuda: this PyTorch build has no CUDA; install a CUDA PyTorch to compare", file=sys.stderr
        )
        return 1

    rows = []
    for batch in args.batches:
        for workload in ("training step", "inference"):
            ours, theirs = _pair(workload, batch)
            t_ours, t_theirs = _alternate(
                ours, theirs, cuda.synchronize, torch.cuda.synchronize, args.repeats, args.blocks
            )
            rows.append((workload, batch, t_ours, t_theirs))
    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else name
    print(f"LeNet-5 on {name} (median of {args.blocks} blocks x {args.repeats} calls)\n")
    print("| workload | batch | convforge numba-cuda (ms) | torch CUDA eager (ms) | convforge / torch |")
    print("|---|---|---|---|---|")
    for workload, batch, ours, theirs in rows:
        print(f"| {workload} | {batch} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {ours / theirs:.2f} |")
    return 0


def _pair(workload: str, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """One call of convforge and one of torch for ``workload`` at ``batch``, both warmed up."""
    import torch

    import convforge as cf
    from convforge import optim
    from convforge.models import lenet5

    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    model = lenet5()
    twin = _torch_lenet(model).cuda()
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    if workload == "inference":
        net = cf.compile(model, (None, 1, 28, 28), backend="numba-cuda")
        exe = net._executable  # the frontend has no resident API yet: drive the executable directly
        feeds = {v.name: net._store.arrays[v.name] for v in net.graph.inputs if v.name != "x"}
        exe.run_device({**feeds, "x": x}, fetch=[])

        def ours() -> object:
            return exe.run_device(fetch=[0])

        def theirs() -> object:
            with torch.no_grad():
                return twin(tx)

    else:
        step = cf.compile_train(
            model, (None, 1, 28, 28), optimizer=optim.SGD(lr=0.01, momentum=0.9), backend="numba-cuda"
        )
        program = step._program("train")  # the executable and what each output updates
        exe = program.executable
        feedback = {i: key for i, (role, key) in enumerate(program.roles) if role == "store"}
        feeds = {
            v.name: step._store.arrays[v.name]
            for v in program.graph.inputs
            if v.name not in ("x", "target", "step")
        }
        counter = {"t": 1}
        start = time.perf_counter()
        exe.run_device(
            {**feeds, "x": x, "target": y, "step": np.asarray(1, np.int64)}, fetch=[0], feedback=feedback
        )
        print(
            f"[bench_cuda] batch {batch}: first training step (kernel compile or cache load) "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
        opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def ours() -> object:
            counter["t"] += 1
            return exe.run_device({"step": np.asarray(counter["t"], np.int64)}, fetch=[0], feedback=feedback)

        def theirs() -> object:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(twin(tx), ty)
            loss.backward()
            opt.step()
            return loss

    for _ in range(3):
        ours()
        theirs()
    return ours, theirs


def _torch_lenet(model) -> object:
    import torch

    tnn = torch.nn
    twin = tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(400, 120),
        tnn.ReLU(),
        tnn.Linear(120, 84),
        tnn.ReLU(),
        tnn.Linear(84, 10),
    )
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return twin


def _alternate(ours, theirs, sync_ours, sync_theirs, repeats: int, blocks: int) -> tuple[float, float]:
    """Median per-call seconds of each side over ``blocks`` alternating timed blocks."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(blocks):
        for side, (fn, sync) in enumerate(((ours, sync_ours), (theirs, sync_theirs))):
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            sync()
            times[side].append((time.perf_counter() - start) / repeats)
    return statistics.median(times[0]), statistics.median(times[1])


if __name__ == "__main__":
    sys.exit(main())
