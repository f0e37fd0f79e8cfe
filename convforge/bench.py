"""``convforge bench``: convforge's numba-cpu backend against PyTorch eager, in one run.

Rows: LeNet-5 inference and training step (SGD momentum, cross-entropy) at batch 64 and
256; the fused conv+bias+ReLU+pool kernel against convforge's own unfused sequence; a
training epoch on the bundled MNIST; cold compile (empty caches, new process) and warm
start (new process, filled caches: import + compile + first step). Calls alternate with
the peer in short blocks and the table reports medians, because this kind of VM has
stall phases of a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from convforge.errors import ConvforgeError

Row = tuple[str, float, float, str]  # case, convforge seconds, peer seconds, peer name


def alternate(fns: dict[str, Callable[[], object]], reps: int, inner: int = 5) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks of ``inner`` calls."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - start) / inner)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_benchmarks(quick: bool = False, threads: int = 2) -> str:
    """Run every row and return the markdown table."""
    try:
        import torch
    except ImportError:
        raise ConvforgeError("convforge bench compares against PyTorch: pip install torch==2.13.0") from None
    torch.set_num_threads(threads)
    reps = 8 if quick else 30
    rows: list[Row] = []
    for batch in (64, 256):
        rows += _lenet_rows(torch, batch, reps)
    rows += _fused_rows(reps)
    rows.append(_epoch_row(torch, 1 if quick else 3))
    rows += _startup_rows(threads)
    return _table(rows, threads)


# -- rows ---------------------------------------------------------------------------------
def _lenet_rows(torch, batch: int, reps: int) -> list[Row]:
    import convforge as cf
    from convforge.models import lenet5

    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    model = lenet5()
    twin = _torch_lenet(torch, model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    net = cf.compile(model, (None, 1, 28, 28), backend="numba-cpu", tiered=False)
    net(x)

    def torch_inference():
        with torch.no_grad():
            twin(tx)

    r = alternate({"cf": lambda: net(x), "torch": torch_inference}, reps)
    rows: list[Row] = [(f"LeNet-5 inference, batch {batch}", r["cf"], r["torch"], "torch eager")]

    step = cf.compile_train(
        model,
        (None, 1, 28, 28),
        optimizer=cf.optim.SGD(lr=0.01, momentum=0.9),
        backend="numba-cpu",
        tiered=False,
    )
    step(x, y)
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

    def torch_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(tx), ty).backward()
        opt.step()

    r = alternate({"cf": lambda: step(x, y), "torch": torch_step}, reps)
    rows.append((f"LeNet-5 training step, batch {batch}", r["cf"], r["torch"], "torch eager"))
    return rows


def _fused_rows(reps: int) -> list[Row]:
    """LeNet's two conv + bias + ReLU + max-pool 2x2 layers at batch 64: one fused kernel
    against convforge's own unfused sequence (conv, relu, max_pool2d as separate kernels)."""
    from convforge import nn
    from convforge.backends import numba_cpu
    from convforge.frontend.compile import trace_model
    from convforge.ir.types import TensorType

    rows: list[Row] = []
    layers = {
        "conv1 1->6, 28x28, pad 2": (nn.Conv2d(1, 6, 5, padding=2), (1, 28, 28)),
        "conv2 6->16, 14x14": (nn.Conv2d(6, 16, 5), (6, 14, 14)),
    }
    for label, (conv, shape) in layers.items():
        model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
        graph, _ = trace_model(model, TensorType("f32", ("N", *shape)), training=False)
        fused = numba_cpu.compile_graph(graph)
        unfused = numba_cpu.compile_graph(graph, pipeline="dce")
        assert any(n.op == "fusion" for n in fused.graph.nodes)
        assert not any(n.op == "fusion" for n in unfused.graph.nodes)
        x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
        inputs = {"x": x, **model.state_dict()}
        np.testing.assert_allclose(fused.run(inputs)[0], unfused.run(inputs)[0], rtol=1e-4, atol=1e-5)
        runs = {"fused": partial(fused.run, inputs), "unfused": partial(unfused.run, inputs)}
        r = alternate(runs, reps)
        rows.append(
            (f"{label} + bias + ReLU + maxpool, batch 64: fused", r["fused"], r["unfused"], "unfused")
        )
    return rows


def _epoch_row(torch, epochs: int) -> Row:
    """One epoch of LeNet-5 SGD training on the bundled 4,000 images, batch 64 (median of ``epochs``)."""
    import convforge as cf
    from convforge.data import DataLoader
    from convforge.models import lenet5

    (x, y), _ = cf.data.mnist()
    model = lenet5()
    twin = _torch_lenet(torch, model)
    step = cf.compile_train(
        model,
        (None, 1, 28, 28),
        optimizer=cf.optim.SGD(lr=0.05, momentum=0.9),
        backend="numba-cpu",
        tiered=False,
    )
    step.warmup(x[:64], y[:64])
    opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(x, y, 64, seed=0)
    batches = [(xb, yb, torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in loader]

    def ours():
        for xb, yb, _, _ in batches:
            step(xb, yb)

    def theirs():
        for _, _, txb, tyb in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(twin(txb), tyb).backward()
            opt.step()

    r = alternate({"cf": ours, "torch": theirs}, epochs, inner=1)
    return ("LeNet-5 training epoch, 4,000 images, batch 64", r["cf"], r["torch"], "torch eager")


_STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import convforge as cf
from convforge.backends import cache
from convforge.models import lenet5
x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
y = np.arange(64) % 10
step = cf.compile_train(lenet5(), (None, 1, 28, 28), optimizer=cf.optim.SGD(lr=0.01, momentum=0.9),
                        backend="numba-cpu")
step(x, y)
first = time.perf_counter() - t0
tier_steps = 0
while step.compiling:
    step(x, y)
    tier_steps += 1
step(x, y)  # the switch: kernels load from the cache, the tier's steps are replayed
t1 = time.perf_counter()
net = step.inference()
net(x)
while net.compiling:
    net(x)
net(x)
t2 = time.perf_counter()
print(json.dumps({"first": first, "train": t1 - t0, "total": t2 - t0, "tier_steps": tier_steps,
                  "stats": cache.stats()}))
"""


def fresh_cache_env(cache: str, threads: int) -> dict[str, str]:
    """This process's environment for a child that compiles into the empty folder ``cache``
    (convforge's and Numba's caches) on ``threads`` threads."""
    env = {
        **os.environ,
        "CONVFORGE_CACHE_DIR": cache,
        "NUMBA_CACHE_DIR": os.path.join(cache, "numba"),
        "NUMBA_NUM_THREADS": str(threads),
    }
    env.pop("CONVFORGE_DEBUG", None)
    return env


def _startup_rows(threads: int) -> list[Row]:
    """Cold compile (empty caches) and warm start (filled caches), each in a new process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = fresh_cache_env(tmp, threads)
        cold = _run_startup(env)
        warm = _run_startup(env)
    nan = float("nan")
    return [
        (
            "cold start: import + LeNet-5 training program + first step returned (empty cache, tiered)",
            cold["first"],
            nan,
            "",
        ),
        (
            f"cold compile: import + LeNet-5 training program until full-speed steps "
            f"(empty cache; {cold['tier_steps']} steps on the fast tier meanwhile)",
            cold["train"],
            nan,
            "",
        ),
        ("cold compile incl. the inference program", cold["total"], nan, ""),
        ("warm start: new process, import + load + first step", warm["train"], nan, ""),
        ("warm start incl. the inference program", warm["total"], nan, ""),
    ]


def _run_startup(env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ConvforgeError(f"startup benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- helpers ------------------------------------------------------------------------------
def _torch_lenet(torch, model):
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
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return twin


def _table(rows: list[Row], threads: int) -> str:
    lines = [
        f"| case ({threads} threads) | convforge | peer | peer time | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, ours, theirs, peer in rows:
        if np.isnan(theirs):
            lines.append(f"| {name} | {_fmt(ours)} | | | |")
        else:
            lines.append(f"| {name} | {_fmt(ours)} | {peer} | {_fmt(theirs)} | {ours / theirs:.2f} |")
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


# -- convforge bench --suite ---------------------------------------------------------------
def suite_module():
    """``benchmarks.suite`` of the source tree this package runs from (``convforge bench
    --suite`` needs the checkout: the suite lives in ``benchmarks/``, outside the package)."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise ConvforgeError(
            f"convforge bench --suite runs benchmarks/suite.py of a source checkout; none next to {root}"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.suite")


# -- convforge bench model.onnx -----------------------------------------------------------
def run_onnx_benchmark(
    path: str,
    batch: int = 1,
    threads: int = 2,
    quick: bool = False,
    backend: str = "numba-cpu",
    torch_model: Any = None,
) -> str:
    """convforge against onnxruntime on one ``.onnx`` file, same threads, alternating blocks.

    onnxruntime runs the file as convforge reads it (``convforge.onnx.importer.free_batch``:
    a file fixed to batch 1 runs at ``batch``). The table gives medians, the compile time,
    the largest output difference and, on numba-cpu, the kernels that take the most time.
    ``torch_model`` (the ``torch.nn.Module`` the file was exported from) adds torch eager,
    run on the file's weights: ``torch.onnx.export`` names the initializers after the
    ``state_dict`` keys.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConvforgeError("convforge bench model.onnx needs onnxruntime installed") from None
    import convforge as cf
    from convforge.onnx.importer import free_batch, load

    model = load(path)
    shape = (batch, *model.input_shape[1:])
    start = time.perf_counter()
    net = cf.compile(model, (None, *shape[1:]), backend=backend)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = net(x)
    compile_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        free_batch(path).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: x}
    theirs = session.run(None, feed)[0]
    diff = float(np.max(np.abs(ours - theirs))) / max(float(np.max(np.abs(theirs))), 1e-30)
    single = _once(lambda: net(x))
    inner = max(1, min(20, int(0.25 / max(single, 1e-6))))
    reps = 3 if quick else 9
    fns = {"cf": lambda: net(x), "ort": lambda: session.run(None, feed)}
    if torch_model is not None:
        fns["torch"] = _torch_twin(torch_model, model, x, theirs, threads)
    r = alternate(fns, reps, inner)
    name = os.path.basename(path)
    torch_head, torch_cells = ("", "")
    if "torch" in r:
        torch_head = " torch eager | ratio |"
        torch_cells = f" {_fmt(r['torch'])} | {r['cf'] / r['torch']:.2f} |"
    lines = [
        f"| model ({threads} threads) | batch | convforge {backend} | onnxruntime | ratio |{torch_head} "
        "compile | max rel diff |",
        "|---|---|---|---|---|" + "---|---|" * bool(torch_head) + "---|---|",
        f"| {name} | {batch} | {_fmt(r['cf'])} | {_fmt(r['ort'])} | {r['cf'] / r['ort']:.2f} |{torch_cells} "
        f"{_fmt(compile_s)} | {diff:.1e} |",
    ]
    if r["cf"] > 3 * r["ort"]:
        lines.append("")
        lines.append(f"profile ({name}, batch {batch}): {kernel_profile(net, x, reps=3)}")
    return "\n".join(lines)


def _torch_twin(torch_model: Any, model: Any, x: np.ndarray, want: np.ndarray, threads: int):
    """A call of ``torch_model`` in eval mode with the weights of the imported ``model``,
    checked against onnxruntime's output ``want`` first."""
    import torch

    torch.set_num_threads(threads)
    state = {key: torch.from_numpy(np.array(value)) for key, value in model.state_dict().items()}
    own = torch_model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if missing:
        raise ConvforgeError(
            f"convforge bench --torch: the file has no initializer for {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (was it exported from this class?)"
        )
    try:
        torch_model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    except RuntimeError as exc:  # a shape that differs: another model
        raise ConvforgeError(f"convforge bench --torch: the file's weights do not fit: {exc}") from None
    torch_model.eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        got = torch_model(xt).numpy()
    scale = float(np.abs(want).max()) if want.size else 1.0
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
        raise ConvforgeError(
            "convforge bench --torch: the torch model's output differs from onnxruntime's on the "
            "file's weights (was the file exported from this class?)"
        )

    def call() -> None:
        with torch.no_grad():
            torch_model(xt)

    return call


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def kernel_profile(net, x: np.ndarray, reps: int = 3, top: int = 4) -> str:
    """The kernels of a numba-cpu model that take the most time, as shares of one call:
    each kernel the generated driver calls is timed (median of ``reps`` calls)."""
    executable = net._executable
    program = getattr(executable, "program", None)
    if program is None or not hasattr(program, "kernels"):
        return f"no per-kernel profile on {net.backend}"
    totals: dict[str, list[float]] = {}

    def timed(label: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            totals.setdefault(label, []).append(time.perf_counter() - start)
            return out

        return call

    kernels = tuple(timed(k.label, k.dispatcher) for k in program.kernels)
    arr = np.ascontiguousarray(x, dtype=np.float32)
    inputs = {v.name: net._store.arrays[v.name] for v in net.graph.inputs if v.name != "x"}
    inputs["x"] = arr
    batch = executable.check(inputs)
    arrays = [inputs[v.name] for v in executable.graph.inputs]
    _, views = executable._bind(batch)
    outs = [np.empty(v.type.concrete(batch), dtype=v.type.np_dtype) for v in executable.graph.outputs]
    walls = []
    for _ in range(reps):
        start = time.perf_counter()
        program.run(batch, arrays, views, outs, kernels)
        walls.append(time.perf_counter() - start)
    wall = float(sum(walls))
    per_label = sorted(((sum(v), k) for k, v in totals.items()), reverse=True)
    shown = ", ".join(f"{label} {t / wall:.0%}" for t, label in per_label[:top])
    return f"{_fmt(wall / reps)} per call; {shown}"
