"""Data-parallel training with 2 processes under ``mpiexec`` (each launch bounded in time),
and the pieces that need no launcher: the sampler and the data-parallel pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convforge as cf
from convforge import nn, optim
from convforge.distributed import DistributedSampler
from convforge.passes.data_parallel import DataParallel

try:
    import mpi4py  # noqa: F401

    # the mpich wheel installs it beside this Python, which need not be on PATH
    MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    MPI_REASON = "" if MPIEXEC else "mpiexec is neither beside this Python nor on PATH"
except ImportError:
    MPI_REASON = 'mpi4py is not importable: pip install ".[distributed]"'
needs_mpi = pytest.mark.skipif(bool(MPI_REASON), reason=MPI_REASON)

WORKER = Path(__file__).with_name("worker.py")
#: a launch that takes longer has hung (the suite's bound on a fault)
TIMEOUT = 120


def launch(scenario: str, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(WORKER), scenario, str(out)],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip
    return proc, time.perf_counter() - start


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@needs_mpi
def test_data_parallel_steps_equal_one_process_on_the_combined_batch(tmp_path):
    proc, _ = launch("equal", tmp_path)
    _ok(proc)
    r = np.load(tmp_path / "equal.npz")
    for backend in ("reference", "numba-cpu"):
        graph = str(r[f"{backend}/graph"])
        assert graph.count("all_reduce(") >= 2 and "bucket=1" in graph
        for opt in ("sgd", "adam", "sgd_clip"):
            keys = [k for k in r.files if k.startswith(f"{backend}/{opt}/dp/")]
            assert keys, opt
            for key in keys:
                want = r[key.replace("/dp/", "/single/")]
                np.testing.assert_allclose(r[key], want, rtol=2e-5, atol=2e-6, err_msg=key)


@needs_mpi
def test_batch_norm_per_rank_statistics_and_sync_batch_norm(tmp_path):
    proc, _ = launch("bn", tmp_path)
    _ok(proc)
    r = np.load(tmp_path / "bn.npz")
    hand = [k for k in r.files if k.startswith("bn/hand/")]
    assert hand
    for key in hand:  # DDP: each rank's own statistics, gradients averaged
        np.testing.assert_allclose(
            r[key.replace("/hand/", "/dp/")], r[key], rtol=1e-4, atol=1e-6, err_msg=key
        )
    sync = [k for k in r.files if k.startswith("sync/dp/") and "num_batches" not in k]
    assert any("running_var" in k for k in sync)
    for key in sync:  # SyncBatchNorm on B/2 per rank = BatchNorm2d on B
        np.testing.assert_allclose(
            r[key], r[key.replace("/dp/", "/single/")], rtol=1e-4, atol=1e-5, err_msg=key
        )


@needs_mpi
def test_gradients_are_averaged_and_buffers_come_from_rank_0(tmp_path):
    proc, _ = launch("grads", tmp_path)
    _ok(proc)
    r0, r1 = np.load(tmp_path / "grads0.npz"), np.load(tmp_path / "grads1.npz")
    single = [k for k in r0.files if k.startswith("grad/single/")]
    assert "grad/single/loss" in single and len(single) > 2
    for key in single:  # the mean over ranks of B/2 each = one process on B
        for r in (r0, r1):
            want = r0[key]
            np.testing.assert_allclose(
                r[key.replace("single", "dp")], want, rtol=1e-5, atol=1e-7, err_msg=key
            )
    np.testing.assert_allclose(r0["grad/dp/input"], r0["grad/local/input"], rtol=1e-5, atol=1e-8)
    buffers = [k for k in r0.files if k.startswith("bn/after2/") and "running" in k]
    assert buffers
    for key in buffers:
        local = key.replace("after2", "local")
        for r in (r0, r1):  # each rank: rank 0's statistics after step 1, updated by its own batch
            np.testing.assert_allclose(r[key], r[local], rtol=1e-5, atol=1e-7, err_msg=key)
        assert not np.allclose(r0[key], r1[key])  # ranks' batches differ
        np.testing.assert_array_equal(r1[key.replace("after2", "synced")], r0[key])


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_every_rank(tmp_path, how):
    proc, seconds = launch(how, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    if how == "raise":
        assert "rank 1 of 2 failed in Sequential step 3" in output and "ShapeError" in output
    else:
        assert "Killed" in output or "signal 9" in output or "EXIT CODE: 9" in output
    assert seconds < TIMEOUT


@needs_mpi
def test_a_batch_shape_mismatch_is_named_at_the_first_step(tmp_path):
    proc, _ = launch("mismatch", tmp_path)
    assert proc.returncode != 0
    assert "rank(s) 1 feed a batch of another shape than rank 0" in proc.stdout + proc.stderr


def train_on_two_ranks(folders: tuple[Path, Path], *flags: str) -> subprocess.CompletedProcess:
    """``convforge train`` on 2 ranks (MPMD: each with its own ``--out``, so what rank 1
    writes would show); stdout lines prefixed by the rank that printed them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    args = ["--limit", "96", "--batch-size", "16", "--no-progress", *flags]
    convforge = [sys.executable, "-m", "convforge.cli"]  # the console script need not be on PATH
    ranks = [["-n", "1", *convforge, "train", *args, "--out", str(folder)] for folder in folders]
    cmd = [MPIEXEC, "-prepend-rank", *ranks[0], ":", *ranks[1]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


@needs_mpi
def test_convforge_train_under_mpiexec_prints_and_writes_on_rank_0_and_resumes(tmp_path):
    from convforge.serialization import load, split_state

    folders = (tmp_path / "rank0", tmp_path / "rank1")
    proc = train_on_two_ranks(folders, "--epochs", "1")
    _ok(proc)
    lines = proc.stdout.strip().splitlines()
    assert lines and all(line.startswith("[0] ") for line in lines), proc.stdout
    assert sum("epoch  1/1" in line for line in lines) == 1
    assert sorted(p.name for p in folders[0].iterdir()) == ["curves.png", "history.json", "weights.npz"]
    assert not any(folders[1].iterdir())
    weights, optimizer = split_state(load(folders[0] / "weights.npz"))
    assert int(optimizer["step"]) == 3  # 96 images, 48 per rank, 16 per rank and step
    net = cf.compile(cf.models.get_model("lenet5")[0], (None, 1, 28, 28), backend="reference")
    net.load_state_dict(weights)
    assert net(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)

    # every rank resumes from rank 0's folder; rank 0 alone goes on writing there
    proc = train_on_two_ranks((folders[0], folders[0]), "--epochs", "2", "--resume", str(folders[0]))
    _ok(proc)
    assert "[0] resuming after epoch 1 of 2" in proc.stdout and "epoch  2/2" in proc.stdout
    assert "epoch  1/2" not in proc.stdout
    history = json.loads((folders[0] / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert int(split_state(load(folders[0] / "weights.npz"))[1]["step"]) == 6


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_and_cover_the_epoch(drop_last):
    n, ranks = 10, 3
    shards = [DistributedSampler(n, ranks, r, seed=5, drop_last=drop_last) for r in range(ranks)]
    for s in shards:
        s.set_epoch(2)
    idx = [s.indices() for s in shards]
    assert len({len(i) for i in idx}) == 1 and len(idx[0]) == len(shards[0])
    every = np.concatenate(idx)
    if drop_last:
        assert len(every) == 9 and len(set(every)) == 9
    else:
        assert len(every) == 12 and set(every) == set(range(n))  # 2 padded from the start
    again = DistributedSampler(n, ranks, 0, seed=5, drop_last=drop_last)
    again.set_epoch(3)
    assert not np.array_equal(again.indices(), idx[0])  # a new permutation per epoch


def test_the_distributed_loader_pairs_the_ranks_steps_over_disjoint_shards():
    x, y = np.arange(21, dtype=np.float32).reshape(21, 1), np.arange(21)

    def noise(xb, rng):
        return xb + rng.random(xb.shape).astype(np.float32)

    loaders = [cf.distributed.DistributedLoader(x, y, 4, seed=3, transform=noise, num_replicas=2, rank=r)
               for r in range(2)]  # fmt: skip
    loaders[0].set_epoch(1)
    loaders[1].set_epoch(1)
    epochs = [list(loader) for loader in loaders]
    assert [len(e) for e in epochs] == [len(loaders[0])] * 2 == [3, 3]
    assert [len(b[1]) for b in epochs[0]] == [len(b[1]) for b in epochs[1]] == [4, 4, 3]
    labels = [np.concatenate([b[1] for b in e]) for e in epochs]
    assert set(labels[0]) | set(labels[1]) == set(range(21)) and len(set(labels[0]) & set(labels[1])) <= 1
    for e in epochs:  # the transform ran, with a different stream per rank
        xs = np.concatenate([b[0] for b in e])[:, 0]
        ys = np.concatenate([b[1] for b in e])
        assert np.all((xs > ys) & (xs < ys + 1))
    assert loaders[0].shard(5) == slice(0, 5, 2) and loaders[1].shard(5) == slice(1, 5, 2)
    single = cf.distributed.DistributedLoader(x, y, 4, seed=3, num_replicas=1, rank=0)
    plain = cf.data.DataLoader(x, y, 4, seed=3)
    assert len(single) == len(plain) == 6


def test_the_pass_buckets_gradients_and_leaves_one_process_unchanged():
    """With one process (``all_reduce`` the identity) the rewritten program computes what
    the plain one does; the IR shows the buckets, the last layer's gradients first."""
    cf.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    step = cf.compile_train(model, (None, 1, 6, 6), optimizer=optim.SGD(lr=0.1), backend="reference")
    program = step._program("train")
    from convforge.frontend.compile import trace_model
    from convforge.passes.training import UpdateRule, build_training_graph

    graph, tracer = trace_model(model, step.input_type, training=True)
    params = [v.name for v in graph.inputs if v.name in step._store.trainable]
    rule = UpdateRule("sgd_update", {"lr": 0.1}, ("momentum_buffer",))
    graph, _ = build_training_graph(graph, loss="cross_entropy", params=params, optimizer=rule)
    DataParallel(bucket_bytes=64).run(graph)
    graph.verify()
    text = str(graph)
    reduces = [line for line in text.splitlines() if "all_reduce(" in line]
    assert len(reduces) >= 3 and 'reduce="mean"' in reduces[0]
    first = text.index("bucket=0")
    assert text.index("conv2d_backward_weight") > first  # bucket 0 reduced before backward ends
    rng = np.random.default_rng(0)
    inputs = {**step._store.arrays, "x": rng.standard_normal((4, 1, 6, 6)).astype(np.float32),
              "target": rng.integers(0, 3, 4), "step": np.asarray(1)}  # fmt: skip
    rewritten = cf.backends.get_backend("reference").compile_graph(graph, training=True)
    got = rewritten.run({v.name: inputs[v.name] for v in graph.inputs})
    want = program.executable.run({v.name: inputs[v.name] for v in program.graph.inputs})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_dropout_masks_are_keyed_by_rank():
    from convforge.ir.ops import rng

    assert rng.rank_seed(7, 0) == 7
    seeds = {rng.rank_seed(7, r) for r in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert rng.rank_seed(7, 2) == rng.rank_seed(7, 2)
