"""``convforge bench --suite``: the CNN workloads of issue 13 against torch eager,
torch.compile and onnxruntime, in one run.

Every row builds its network with ``convforge.nn`` (zoo models where they exist), a torch
twin with the same weights (:mod:`benchmarks.twins`), and times blocks of calls
alternating between convforge numba-cpu and each peer (``convforge.bench.alternate``),
same threads on every side. Ratios are convforge / peer (below 1.0: convforge faster).
Per row: achieved GFLOP/s (2 x the multiply-adds of conv and linear layers; a training
step counts 3x its forward), the share of a machine peak measured in the same run (a
2048^3 float32 numpy matmul, in a child process whose BLAS is limited to the same
threads), cold compile (new process, empty ``CONVFORGE_CACHE_DIR``) and warm start (new
process, filled cache) to the first result, and for training rows the peak RSS of a
child process running a few steps, next to torch's.

``profile(name)`` times every kernel call of one workload's generated numba-cpu driver.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convforge.bench import alternate
from convforge.errors import ConvforgeError
from convforge.frontend import nn
from convforge.models import alexnet, deep_mnist, lenet5, resnet_small

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("torch", "torch.compile", "onnxruntime")


def vgg_cifar() -> nn.Sequential:
    """VGG-style CIFAR net: [conv3x3 (no bias) -> BN -> ReLU] 3->32, 32->32, pool, 32->64,
    64->64, pool, 64->128, pool, then linear 2048->256 -> ReLU -> linear 256->10."""

    def block(c: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(c, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
        nn.MaxPool2d(2), *block(64, 128), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2048, 256),
        nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def resnet_cifar() -> nn.Module:
    """ResNet-style CIFAR net: the zoo's ResNetSmall at width 32 on 3x32x32 (stem 3->32,
    basic blocks 32->32, 32->64 s2, 64->128 s2, global average pool, linear 128->10)."""
    return resnet_small(in_channels=3, num_classes=10, width=32)


#: network name -> (constructor, input shape without the batch)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "lenet5": (lenet5, (1, 28, 28)),
    "deep-mnist": (lambda: deep_mnist(seed=0), (1, 28, 28)),
    "vgg-cifar": (vgg_cifar, (3, 32, 32)),
    "resnet-cifar": (resnet_cifar, (3, 32, 32)),
    "alexnet": (alexnet, (3, 227, 227)),
}


@dataclass(frozen=True)
class Workload:
    name: str  # what ``--only`` and ``--profile`` take
    title: str
    network: str
    batch: int
    train: bool


WORKLOADS: tuple[Workload, ...] = (
    Workload("lenet5-train-b64", "LeNet-5 train step B=64", "lenet5", 64, True),
    Workload("lenet5-train-b256", "LeNet-5 train step B=256", "lenet5", 256, True),
    Workload("lenet5-infer-b64", "LeNet-5 inference B=64", "lenet5", 64, False),
    Workload("lenet5-infer-b256", "LeNet-5 inference B=256", "lenet5", 256, False),
    Workload("deep-mnist-train-b64", "Deep MNIST train B=64", "deep-mnist", 64, True),
    Workload("deep-mnist-infer-b64", "Deep MNIST inference B=64", "deep-mnist", 64, False),
    Workload("vgg-cifar-train-b64", "VGG-style CIFAR train B=64", "vgg-cifar", 64, True),
    Workload("vgg-cifar-infer-b64", "VGG-style CIFAR inference B=64", "vgg-cifar", 64, False),
    Workload("resnet-cifar-train-b64", "ResNet-style CIFAR train B=64", "resnet-cifar", 64, True),
    Workload("resnet-cifar-infer-b64", "ResNet-style CIFAR inference B=64", "resnet-cifar", 64, False),
    Workload("resnet-cifar-infer-b1", "ResNet-style CIFAR inference B=1", "resnet-cifar", 1, False),
    Workload("alexnet-infer-b8", "AlexNet inference B=8, 227x227", "alexnet", 8, False),
    Workload("alexnet-infer-b1", "AlexNet inference B=1, 227x227", "alexnet", 1, False),
)


def select(only: str | None) -> list[Workload]:
    """The workloads named ``only`` exactly or by a dash-separated prefix
    (``lenet5-infer`` = both LeNet-5 inference rows); every workload for None."""
    if only is None:
        return list(WORKLOADS)
    chosen = [w for w in WORKLOADS if w.name == only or w.name.startswith(only + "-")]
    if not chosen:
        raise ConvforgeError(
            f"convforge bench --suite: no workload {only!r}; known: {', '.join(w.name for w in WORKLOADS)}"
        )
    return chosen


@dataclass
class Row:
    """One workload's measurements (seconds, GFLOP/s, MiB)."""

    workload: Workload
    seconds: float
    peers: dict[str, float | str] = field(default_factory=dict)  # peer -> seconds, or why not
    gflops: float = math.nan
    max_rel_diff: float = math.nan  # inference: convforge vs torch eager, relative to max |torch|
    cold: float = math.nan
    warm: float = math.nan
    rss: float = math.nan
    torch_rss: float = math.nan


def run_suite(
    quick: bool = False,
    threads: int = 2,
    only: str | None = None,
    peers: Sequence[str] = PEERS,
    startup: bool = True,
    log: Callable[[str], None] | None = None,
) -> str:
    """Measure the selected workloads and return the markdown table (with its notes)."""
    import torch

    torch.set_num_threads(threads)
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    reps = 3 if quick else 7
    peak = machine_peak(threads)
    say(f"machine peak (numpy sgemm 2048^3, {threads} threads): {peak:.0f} GFLOP/s")
    rows: list[Row] = []
    notes: list[str] = []
    starts: dict[tuple[str, bool], dict] = {}
    for workload in select(only):
        say(f"{workload.name} ...")
        # blocks of up to 10 calls in --quick too (fewer blocks): with 3 a call at a block's
        # start, its caches cold from the peer's block, weighed a third of the median
        row = measure(workload, reps, threads, peers, notes, max_inner=10)
        if startup:
            key = (workload.network, workload.train)
            if key not in starts:
                starts[key] = startup_times(workload, threads)
            row.cold, row.warm = starts[key]["cold"], starts[key]["warm"]
            row.rss, row.torch_rss = starts[key].get("rss", math.nan), starts[key].get("torch_rss", math.nan)
        rows.append(row)
    return table(rows, peak, threads, notes)


# -- one workload -------------------------------------------------------------------------
def build(workload: Workload, seed: int = 0):
    """(model, x, y) of a workload, deterministic in ``seed``."""
    make, shape = NETWORKS[workload.network]
    nn.manual_seed(seed)
    model = make()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workload.batch, *shape)).astype(np.float32)
    classes = 1000 if workload.network == "alexnet" else 10
    y = rng.integers(0, classes, workload.batch)
    return model, x, y


def compile_convforge(workload: Workload, model, x: np.ndarray, y: np.ndarray):
    """(call, executable): the compiled convforge call of the workload (already run once)
    and the numba-cpu executable behind it."""
    import convforge as cf

    shape = (None, *x.shape[1:])
    if workload.train:
        optimizer = cf.optim.SGD(lr=0.01, momentum=0.9)
        step = cf.compile_train(
            model, shape, loss="cross_entropy", optimizer=optimizer, backend="numba-cpu", tiered=False
        )
        step(x, y)
        return (lambda: step(x, y)), step._program("train").executable
    net = cf.compile(model, shape, backend="numba-cpu", tiered=False)
    net(x)
    return (lambda: net(x)), net._executable


def measure(
    workload: Workload,
    reps: int,
    threads: int,
    peers: Sequence[str],
    notes: list[str],
    max_inner: int = 10,
) -> Row:
    """Time convforge against each peer on one workload, in alternating blocks."""
    import torch

    from benchmarks.twins import torch_calls

    model, x, y = build(workload)
    fns: dict[str, Callable[[], object]] = {"convforge": compile_convforge(workload, model, x, y)[0]}
    row = Row(workload, math.nan)
    calls, skipped = torch_calls(model, x, y, workload.train, threads, peers)
    for peer, why in skipped.items():
        row.peers[peer] = why
        notes.append(f"{workload.name}: {peer} skipped ({why})")
    fns.update(calls)
    if not workload.train and "torch" in calls:
        import convforge as cf

        ours = cf.compile(model, (None, *x.shape[1:]), backend="numba-cpu", tiered=False)(x)
        with torch.no_grad():
            theirs = calls["torch"]()
        row.max_rel_diff = float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))
    start = time.perf_counter()
    fns["convforge"]()
    single = time.perf_counter() - start
    inner = max(1, min(max_inner, int(0.3 / max(single, 1e-6))))
    medians = alternate(fns, reps, inner)
    row.seconds = medians.pop("convforge")
    for peer, seconds in medians.items():
        row.peers[peer] = seconds
    row.gflops = workload_flops(workload, model) / row.seconds / 1e9
    return row


def workload_flops(workload: Workload, model) -> float:
    """2 x multiply-adds of the forward's conv and linear layers at the workload's batch
    (3x for a training step: forward, input gradient, weight gradient)."""
    from convforge.frontend.compile import trace_model
    from convforge.ir.types import TensorType

    shape = NETWORKS[workload.network][1]
    graph, _ = trace_model(model, TensorType("f32", ("N", *shape)), training=False)
    forward = sum(node_flops(node, workload.batch) for node in graph.nodes)
    return forward * (3 if workload.train else 1)


def node_flops(node, batch: int) -> int:
    """2 x the multiply-adds of a conv / linear / matmul node (or a fusion region) at ``batch``."""
    if node.region is not None:
        return sum(node_flops(inner, batch) for inner in node.region.nodes)
    op = node.op
    if op in ("conv2d", "conv1d", "conv2d_backward_input", "conv1d_backward_input"):
        per_output = math.prod(node.inputs[1].shape[1:])  # Cg * kernel taps
        produced = node.outputs[0] if op.startswith("conv") and "backward" not in op else node.inputs[0]
        return 2 * produced.type.numel(batch) * per_output
    if op in ("conv2d_backward_weight", "conv1d_backward_weight"):
        return 2 * node.inputs[1].type.numel(batch) * math.prod(node.outputs[0].shape[1:])
    if op == "linear":
        return 2 * node.outputs[0].type.numel(batch) * node.inputs[0].shape[-1]
    if op == "matmul":
        a = node.inputs[0].type.concrete(batch)
        k = a[0] if node.attrs.get("transpose_a") else a[1]
        return 2 * node.outputs[0].type.numel(batch) * k
    return 0


# -- machine peak, startup, memory (child processes) ----------------------------------------
_PEAK = """
import time, numpy as np
a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
b = a.copy(); c = a @ b
best = min((lambda s: (a @ b, time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(5))
print(2 * 2048 ** 3 / best / 1e9)
"""


def machine_peak(threads: int) -> float:
    """GFLOP/s of a 2048^3 float32 numpy matmul, best of 5, BLAS limited to ``threads``
    (a child process: the thread count of NumPy's BLAS is fixed when it loads)."""
    env = {
        **os.environ,
        **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    out = subprocess.run([sys.executable, "-c", _PEAK], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def startup_times(workload: Workload, threads: int) -> dict:
    """Cold compile and warm start of the workload's program, each in a new process, and
    (training) the peak RSS of convforge's and torch's child after a few steps."""
    from convforge.bench import fresh_cache_env

    with tempfile.TemporaryDirectory() as tmp:
        env = fresh_cache_env(tmp, threads)
        cold = _child(workload, "convforge", env)
        warm = _child(workload, "convforge", env)
    result = {"cold": cold["first"], "warm": warm["first"]}
    if workload.train:
        result["rss"] = warm["rss"]
        result["torch_rss"] = _child(workload, "torch", {**os.environ, "OMP_NUM_THREADS": str(threads)})[
            "rss"
        ]
    return result


_STEPS = 3


def _child(workload: Workload, side: str, env: dict[str, str]) -> dict:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.suite import child; child()"
    args = [sys.executable, "-c", code, workload.name, side]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConvforgeError(
            f"convforge bench --suite: the {side} child of {workload.name} failed:\n{proc.stderr[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child() -> None:
    """Child process body: ``child WORKLOAD convforge|torch`` prints the seconds from
    process start to the first result and the peak RSS (MiB) after a few more calls."""
    begin = time.perf_counter()
    name, side = sys.argv[1], sys.argv[2]
    (workload,) = [w for w in WORKLOADS if w.name == name]
    model, x, y = build(workload)
    if side == "convforge":
        call = compile_convforge(workload, model, x, y)[0]
    else:
        from benchmarks.twins import torch_calls

        call = torch_calls(model, x, y, workload.train, 1, ("torch",))[0]["torch"]
        call()
    first = time.perf_counter() - begin
    for _ in range(_STEPS):
        call()
    print(json.dumps({"first": first, "rss": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux carries ``getrusage``'s ru_maxrss across exec, so a
    child started by a large parent reports the parent's size; the fresh address space's
    ``VmHWM`` does not, so it is read first."""
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the table ------------------------------------------------------------------------------
def table(rows: list[Row], peak: float, threads: int, notes: Sequence[str] = ()) -> str:
    """The markdown table: convforge ms, ratio to each peer, GFLOP/s and share of ``peak``,
    cold/warm start, peak RSS (training) and the largest inference difference to torch."""
    lines = [
        f"| workload ({threads} threads) | convforge ms | / torch eager | / torch.compile | / onnxruntime "
        "| GFLOP/s | of peak | cold compile | warm start | peak RSS MiB (torch) | max rel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratios = []
        for peer in PEERS:
            theirs = r.peers.get(peer)
            ratios.append(f"{r.seconds / theirs:.2f}" if isinstance(theirs, float) else "–")
        rss = f"{r.rss:.0f} ({r.torch_rss:.0f})" if not math.isnan(r.rss) else "–"
        cells = [
            r.workload.title,
            f"{r.seconds * 1e3:.2f}",
            *ratios,
            f"{r.gflops:.1f}",
            f"{r.gflops / peak:.0%}",
            _seconds(r.cold),
            _seconds(r.warm),
            rss,
            f"{r.max_rel_diff:.1e}" if not math.isnan(r.max_rel_diff) else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"machine peak: {peak:.0f} GFLOP/s (numpy float32 matmul 2048^3, {threads} threads)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _seconds(s: float) -> str:
    return "–" if math.isnan(s) else f"{s:.1f} s"


# -- per-kernel profile ------------------------------------------------------------------------
def profile(name: str, threads: int = 2, reps: int = 5) -> str:
    """Time and GFLOP/s of every kernel call of one workload's numba-cpu driver (median of
    ``reps`` calls). Kernels are wrapped only here, for the duration of the profile: the
    driver receives its kernels as an argument, so an unprofiled call pays nothing."""
    import torch

    torch.set_num_threads(threads)
    workload = select(name)[0]
    model, x, y = build(workload)
    call, executable = compile_convforge(workload, model, x, y)
    program = executable.program
    times: list[tuple[str, float]] = []
    saved = [k.dispatcher for k in program.kernels]

    def timed(kname: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            times.append((kname, time.perf_counter() - start))
            return out

        return wrapper

    walls = []
    try:
        for k in program.kernels:
            k.dispatcher = timed(k.name, k.dispatcher)
        for _ in range(reps):
            start = time.perf_counter()
            call()
            walls.append(time.perf_counter() - start)
    finally:
        for k, fn in zip(program.kernels, saved):
            k.dispatcher = fn
    sites = program.call_sites
    per_site: list[list[float]] = [[] for _ in sites]
    # the driver makes its calls in the recorded order, skipping the branch not taken (a
    # small batch calls the channel-split conv kernel instead of the image-split one)
    site = 0
    for kname, seconds in times:
        for _ in range(len(sites)):
            if sites[site][1] == kname:
                break
            site = (site + 1) % len(sites)
        assert sites[site][1] == kname, "the driver called a kernel it does not name"
        per_site[site].append(seconds)
        site = (site + 1) % len(sites)
    taken = [i for i, samples in enumerate(per_site) if samples]
    sites = [sites[i] for i in taken]
    per_site = [per_site[i] for i in taken]
    wall = float(np.median(walls))
    labels = {k.name: k.label for k in program.kernels}
    lines = [
        f"profile of {workload.name} ({workload.title}), {threads} threads: {wall * 1e3:.2f} ms per call "
        f"(median of {reps}); kernel calls:",
        "| # | IR node | kernel | ms | GFLOP/s | share |",
        "|---|---|---|---|---|---|",
    ]
    medians = [float(np.median(samples)) for samples in per_site]
    # a node's FLOPs go to its longest call (the GEMM, not the epilogue pass after it)
    longest: dict[int, int] = {}
    for i, (node, _) in enumerate(sites):
        if id(node) not in longest or medians[i] > medians[longest[id(node)]]:
            longest[id(node)] = i
    for i, ((node, kname), seconds) in enumerate(zip(sites, medians)):
        flops = node_flops(node, workload.batch) if longest[id(node)] == i else 0
        rate = f"{flops / seconds / 1e9:.2f}" if flops else "–"
        fused = node.meta.get("fused_from")
        what = node.describe() + (f": {' -> '.join(fused)}" if fused else "")
        lines.append(
            f"| {i} | {what} | {kname} {labels[kname]} | {seconds * 1e3:.3f} | {rate} "
            f"| {seconds / wall:.0%} |"
        )
    return "\n".join(lines)
