"""Compile workers and the fast tier: what the workers compile is what the calls need, and
the switch from the reference interpreter to the kernels changes nothing but speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba.core import types

import convforge as cf
from convforge import nn
from convforge.backends.numba_cpu import precompile
from convforge.bench import fresh_cache_env


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )


def batches(n: int, batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        (rng.standard_normal((batch, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, batch))
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "t",
    [
        types.Array(types.float32, 4, "C"),
        types.Array(types.uint8, 3, "A", readonly=True),
        types.int64,
        types.float64,
        types.boolean,
        types.UniTuple(types.int64, 9),
        types.Tuple([types.Array(types.float32, 1, "C"), types.float64]),
        types.Omitted(0.0),
        types.none,
    ],
    ids=str,
)
def test_types_survive_the_job_file(t):
    encoded = precompile.encode_type(t)
    assert precompile.decode_type(json.loads(json.dumps(encoded))) == t


def test_an_unknown_type_is_left_to_the_caller():
    with pytest.raises(TypeError, match="no JSON form"):
        precompile.encode_type(types.pyobject)


def test_the_dry_run_records_the_signatures_the_calls_compile():
    """Every signature the stand-ins record is one the real first call compiles or loads."""
    step = cf.compile_train(small_net(), (None, 1, 8, 8), backend="numba-cpu", tiered=False)
    executable = step._program("train").executable
    x, y = batches(1)[0]
    full = executable.with_state(step._batch(step._program("train"), x, y, 1), step._store)
    batch, arrays, views, outs, kernels = executable._call_args(full, None)
    found = precompile.signatures(executable.program.run, kernels, (batch, arrays, views, outs))
    assert found and all(isinstance(sig, tuple) for _, sig in found)
    step(x, y)
    for dispatcher, sig in found:
        assert sig in dispatcher.overloads, (dispatcher, sig)
        assert precompile.is_cached(dispatcher, sig)
    origins = {id(k.dispatcher): (k.label, k.origin) for k in executable.program.kernels if k.origin}
    assert precompile.pending(found, origins) == []  # all compiled now: nothing for workers


class Scripted:
    """Stands in for the compile workers: done after ``polls`` calls of :meth:`done`."""

    def __init__(self, jobs, polls: int):
        self.jobs = list(jobs) or ["job"]
        self.procs: list = []
        self.polls = polls

    def done(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def progress(self) -> int:
        return 0

    def wait(self, poll=None) -> None:
        self.polls = -1


@pytest.fixture
def scripted_workers(monkeypatch):
    """The first call finds work for workers that finish after a given number of polls."""
    made: list[Scripted] = []

    def install(polls: int):
        monkeypatch.setattr(precompile, "MIN_JOBS", 0)
        monkeypatch.setattr(precompile, "worker_count", lambda jobs: 1)

        def start(jobs):
            made.append(Scripted(jobs, polls))
            return made[-1]

        monkeypatch.setattr(precompile, "Background", start)
        return made

    return install


def train(steps: int, tiered: bool, data, changes=None):
    model = small_net()
    model.load_state_dict(INIT)
    step = cf.compile_train(
        model,
        (None, 1, 8, 8),
        optimizer=cf.optim.SGD(lr=0.05, momentum=0.9),
        backend="numba-cpu",
        tiered=tiered,
    )
    on_tier, losses = [], []
    for i in range(steps):
        if changes and i in changes:
            changes[i](step)
        losses.append(step(*data[i]))
        on_tier.append(step.compiling)
    return step, losses, on_tier


INIT = small_net().state_dict()


def test_the_switch_replays_the_tier_steps_bit_for_bit(scripted_workers):
    """Steps on the fast tier, then the switch: the weights are exactly the kernels' own."""
    data = batches(7)
    alone, alone_losses, _ = train(7, tiered=False, data=data)
    scripted_workers(polls=8)
    tiered, tier_losses, on_tier = train(7, tiered=True, data=data)
    assert on_tier[:3] == [True, True, True] and on_tier[-1] is False  # it ran on the tier, then switched
    for key, value in alone.state_dict().items():
        np.testing.assert_array_equal(tiered.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(
        tiered.optimizer_state_dict()["0.weight.momentum_buffer"],
        alone.optimizer_state_dict()["0.weight.momentum_buffer"],
    )
    # the tier's own losses are the reference interpreter's: equal to float32 rounding
    np.testing.assert_allclose(tier_losses, alone_losses, rtol=1e-5)
    assert tier_losses[-1] == alone_losses[-1]


def test_a_state_changed_by_the_caller_is_not_replayed_over(scripted_workers):
    """Weights loaded between tier steps are the new start: the switch keeps them."""
    data = batches(6)
    loaded = {k: v * 0.5 for k, v in INIT.items()}
    scripted_workers(polls=6)
    tiered, _, on_tier = train(6, tiered=True, data=data, changes={2: lambda s: s.load_state_dict(loaded)})
    assert on_tier[2] and not on_tier[-1]
    # the same run without a tier: steps 0-1, the load, steps 2-5
    alone, _, _ = train(6, tiered=False, data=data, changes={2: lambda s: s.load_state_dict(loaded)})
    for key, value in alone.state_dict().items():
        np.testing.assert_allclose(tiered.state_dict()[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_inference_runs_on_the_tier_until_the_kernels_are_ready(scripted_workers):
    made = scripted_workers(polls=3)
    model = small_net()
    net = cf.compile(model, (None, 1, 8, 8), backend="numba-cpu", tiered=True)
    x = batches(1)[0][0]
    first = net(x)
    assert net.compiling and made
    while net.compiling:
        net(x)
    np.testing.assert_allclose(net(x), first, rtol=1e-5, atol=1e-6)
    assert not net.compiling


COLD = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import convforge as cf
    from convforge import nn
    from convforge.backends import cache
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 10))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    step = cf.compile_train(model, (None, 1, 8, 8), backend="numba-cpu", tiered=True)
    step(x, y)
    first_on_tier = step.compiling
    while step.compiling:
        step(x, y)
        time.sleep(0.05)
    step(x, y)
    s = cache.stats()
    print(json.dumps({"first_on_tier": first_on_tier, "compiled": s["compiled"], "loaded": s["loaded"]}))
    """
)


def test_workers_fill_an_empty_cache_while_the_steps_run_on_the_tier(tmp_path):
    """A real cold start: the first step returns at once, the workers compile every kernel
    into the cache and this process only loads them."""
    env = fresh_cache_env(str(tmp_path), 2)
    env["CONVFORGE_TIERED"] = "1"
    env.pop("CONVFORGE_COMPILE_WORKERS", None)
    proc = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["first_on_tier"] is True
    assert result["compiled"] == 0 and result["loaded"] >= precompile.MIN_JOBS, result
    assert not any(name.startswith("convforge-compile-") for name in os.listdir(tmp_path))


def test_fused_batch_norm_and_dropout_regions_run_on_the_tier_and_replay_exactly(scripted_workers):
    """The tier runs the numba-cpu training graph itself (conv + BN regions, dropout)."""

    def net() -> nn.Module:
        cf.manual_seed(5)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    data = batches(5)

    def run(tiered: bool):
        step = cf.compile_train(net(), (None, 1, 8, 8), backend="numba-cpu", tiered=tiered)
        on_tier = []
        for x, y in data:
            step(x, y)
            on_tier.append(step.compiling)
        return step, on_tier

    alone, _ = run(False)
    scripted_workers(polls=5)
    tiered, on_tier = run(True)
    assert on_tier[0] and not on_tier[-1]
    for key, value in alone.state_dict().items():
        np.testing.assert_array_equal(tiered.state_dict()[key], value, err_msg=key)
