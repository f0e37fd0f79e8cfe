"""Saves are atomic: after an interruption at any moment (an exception, a real SIGINT, a
SIGKILL) the file is the previous complete one or the new complete one, and
``convforge train`` says only what it actually kept."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convforge as cf
from convforge import fileio

PACKAGE = Path(cf.__file__).parent


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


# -- the writer ------------------------------------------------------------------------------
def test_atomic_write_writes_bytes_text_and_writer_output(tmp_path):
    path = tmp_path / "f.bin"
    fileio.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    fileio.atomic_write(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    fileio.atomic_write(path, lambda f: f.write(b"from a writer"))
    assert path.read_bytes() == b"from a writer"
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    fileio.atomic_write(path, b"x", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path, "f.bin") == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"old complete file")

    def writer(f):
        f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        fileio.atomic_write(path, writer)
    assert path.read_bytes() == b"old complete file"
    assert _leftovers(tmp_path, "weights.npz") == []


def test_a_failed_rename_leaves_the_destination(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        fileio.atomic_write(tmp_path / "dir", b"x")
    assert (tmp_path / "dir").is_dir() and _leftovers(tmp_path, "dir") == []


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_interrupted_before_the_rename_keeps_the_previous_weights(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"w{suffix}"
    old = {"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2))}
    cf.save(old, path)

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cf.save({"a": np.zeros(6, dtype=np.float32), "b": np.zeros((2, 2)), "c": np.zeros(1)}, path)
    monkeypatch.undo()
    got = cf.load(path)
    assert set(got) == {"a", "b"} and all(np.array_equal(got[k], old[k]) for k in old)
    assert _leftovers(tmp_path, path.name) == []


# -- real signals in a child process ---------------------------------------------------------------
#: saves two states alternately until a SIGINT stops one save; SIGINT is ignored outside
#: the save loop, and each handshake line ("resumed", "interrupted") is printed only where
#: no SIGINT can be pending, so the parent never waits on a lost signal. Only
#: convforge.serialization (and what it imports) is loaded: the child starts fast.
SAVER = r"""
import signal, sys, types
signal.signal(signal.SIGINT, signal.SIG_IGN)
pkg = types.ModuleType("convforge")
pkg.__path__ = [sys.argv[2]]
sys.modules["convforge"] = pkg
import numpy as np
from convforge.serialization import save

def state(v):
    weights = {f"w{i}": np.full(1 << 18, v + i, np.float32) for i in range(4)}
    return {**weights, "optimizer/step": np.array(int(v))}

path, states, k, command = sys.argv[1], [state(1.0), state(100.0)], 0, "go"
save(states[0], path)
while command == "go":
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("resumed", flush=True)
        while True:
            k += 1
            save(states[k % 2], path)
    except KeyboardInterrupt:
        pass
    while True:
        try:  # one SIGINT that interrupts a system call (fsync) can surface twice
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            break
        except KeyboardInterrupt:
            pass
    print("interrupted", flush=True)
    command = sys.stdin.readline().strip()
"""

STATES = [
    {**{f"w{i}": np.full(1 << 18, v + i, np.float32) for i in range(4)}, "optimizer/step": np.array(int(v))}
    for v in (1.0, 100.0)
]


def _assert_complete(path: Path) -> None:
    got = cf.load(path)
    assert set(got) == set(STATES[0])
    assert any(all(np.array_equal(got[k], s[k]) for k in s) for s in STATES), "a mix of two saves"


def _expect(proc: subprocess.Popen, line: str, timeout: float = 60.0) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    got = proc.stdout.readline().strip() if ready else f"(nothing within {timeout} s)"
    if got != line:
        proc.kill()
        pytest.fail(f"saver child: expected {line!r}, got {got!r}\n{proc.stderr.read()[-3000:]}")


def _saver(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path), str(PACKAGE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _expect(proc, "resumed")
    return proc


SIGINT_ROUNDS = 8
SIGKILL_ROUNDS = 4


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_sigint_at_random_moments_leaves_a_complete_file(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    rnd = random.Random(suffix)
    proc = _saver(path)
    try:
        for round_ in range(SIGINT_ROUNDS):
            time.sleep(rnd.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGINT)
            _expect(proc, "interrupted")
            _assert_complete(path)
            assert _leftovers(tmp_path, path.name) == []  # the interrupted save cleaned up
            last = round_ == SIGINT_ROUNDS - 1
            proc.stdin.write("stop\n" if last else "go\n")
            proc.stdin.flush()
            if not last:
                _expect(proc, "resumed")
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_sigkill_at_random_moments_leaves_a_complete_file(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    rnd = random.Random(suffix)
    for _ in range(SIGKILL_ROUNDS):
        proc = _saver(path)
        time.sleep(rnd.uniform(0.0, 0.05))
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
        _assert_complete(path)
        # a killed process cannot clean up: at most its one hidden temporary file remains
        assert all(
            name.startswith(f".{path.name}.") and name.endswith(".tmp")
            for name in _leftovers(tmp_path, path.name)
        )


# -- convforge train, interrupted during (or just after) a save -------------------------------------
TRAIN = r"""
import os, signal, sys
from convforge import fileio, serialization
from convforge.cli import main

out, when = sys.argv[1], sys.argv[2]
# a shell without job control starts background jobs with SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler: the run under test must get one either way
signal.signal(signal.SIGINT, signal.default_int_handler)
calls = {"npz": 0, "fsync": 0}
real_npz, real_fsync = serialization._write_npz, fileio._fsync_folder

def write_npz(f, arrays):  # the epoch-2 save: half a zip written, then a real Ctrl-C
    calls["npz"] += 1
    if when == "during" and calls["npz"] == 2:
        f.write(b"PK\x03\x04 half a zip")
        os.kill(os.getpid(), signal.SIGINT)
    real_npz(f, arrays)

def fsync(folder):  # the epoch-2 save renamed into place, then a real Ctrl-C
    real_fsync(folder)
    calls["fsync"] += 1
    if when == "after" and calls["fsync"] == 2:
        os.kill(os.getpid(), signal.SIGINT)

serialization._write_npz, fileio._fsync_folder = write_npz, fsync
sys.exit(main(["train", "--epochs", "3", "--limit", "64", "--batch-size", "32", "--backend", "reference",
               "--out", out, "--no-progress"]))
"""


@pytest.mark.parametrize(
    ("when", "kept", "message"),
    [
        ("during", 1, "interrupted while saving epoch 2: keeping the weights of epoch 1"),
        ("after", 2, "interrupted: keeping the weights of epoch 2"),
    ],
)
def test_train_interrupted_around_a_save_says_what_it_kept(tmp_path, when, kept, message):
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN, str(tmp_path), when], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert message in lines, proc.stdout
    assert f"weights: {tmp_path / 'weights.npz'} (epoch {kept})" in lines, proc.stdout
    weights = cf.load(tmp_path / "weights.npz")
    assert int(weights["optimizer/step"]) == 2 * kept  # 64 images / 32 per step, per epoch
    assert "0.weight" in weights
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2  # epochs completed
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert _leftovers(tmp_path, "weights.npz") == ["curves.png", "history.json"]


def test_interrupted_before_any_epoch_writes_nothing(tmp_path, monkeypatch):
    from convforge import training

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_run_epoch", interrupt)
    (tmp_path / "history.json").write_text("[1]")
    logged = []
    config = training.TrainConfig(
        epochs=2, limit=64, batch_size=32, backend="reference", out=str(tmp_path), progress=False
    )
    result = training.train(config, log=logged.append)
    assert result.interrupted and result.weights is None and result.history == []
    assert logged[-1] == "interrupted before the first epoch finished: no weights saved"
    assert (tmp_path / "history.json").read_text() == "[1]"  # an earlier run's file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
