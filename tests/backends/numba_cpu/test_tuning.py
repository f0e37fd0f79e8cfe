"""``compile(..., tune=True)``: layers pick their algorithm by measurement, the choice is
recorded in the tuning log, and a damaged or planted log costs a measurement, never a crash."""

from __future__ import annotations

import json
import uuid
import warnings

import numpy as np
import pytest

import convforge as cf
from convforge import nn
from convforge.backends import cache
from convforge.backends.numba_cpu import tuning


@pytest.fixture
def log_name(monkeypatch):
    """A tuning log of this test's own (the real one is keyed on the stamp and threads)."""
    name = f"tuning-test-{uuid.uuid4().hex}.json"
    monkeypatch.setattr(tuning, "record_name", lambda threads: name)
    monkeypatch.setattr(tuning, "_LOGS", {})
    monkeypatch.setattr(tuning, "_WARNED", set())
    yield name
    (cache.cache_dir() / name).unlink(missing_ok=True)


def wide_net() -> nn.Module:
    # the first conv has three candidates, the strided 7x7 one only im2col
    return nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 7, stride=2))


def algorithm_lines(net) -> list[str]:
    # the image-split call's line (the channel-split branch for small batches is not tuned)
    lines = net.source().splitlines()
    return [
        line.strip() for line in lines if "# conv algorithm:" in line and "split the channels" not in line
    ]


def test_tuned_layers_say_what_was_measured_and_reuse_the_log(log_name):
    model = wide_net()
    x = np.random.default_rng(0).standard_normal((3, 16, 12, 12), dtype=np.float32)
    want = cf.compile(model, (None, 16, 12, 12), backend="reference")(x)
    net = cf.compile(model, (None, 16, 12, 12), backend="numba-cpu", tune=True)
    first, second = algorithm_lines(net)
    assert "tuned (measured" in first and all(name in first for name in ("im2col", "winograd", "direct"))
    assert "7x7 kernel: winograd is for 3x3 and 5x5" in second  # one candidate: nothing to time
    assert "direct needs stride 1" in second
    np.testing.assert_allclose(net(x), want, rtol=1e-4, atol=1e-4)
    log = json.loads(cache.read_record(log_name))
    (entry,) = log["entries"].values()
    assert entry["algorithm"] in ("im2col", "winograd", "direct")
    assert set(entry["ms"]) == {"im2col", "winograd", "direct"}

    tuning._LOGS.clear()  # a new process: the choice comes from the log
    again = cf.compile(model, (None, 16, 12, 12), backend="numba-cpu", tune=True)
    assert "tuned (tuning log" in algorithm_lines(again)[0]
    assert algorithm_lines(again)[0].split(" (")[0] == first.split(" (")[0]


def test_without_tune_the_cost_model_picks():
    net = cf.compile(wide_net(), (None, 16, 12, 12), backend="numba-cpu")
    assert "tuned" not in algorithm_lines(net)[0]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe binary",
        json.dumps({"format": "something else", "entries": {}}).encode(),
        json.dumps({"format": tuning.FORMAT, "entries": []}).encode(),
    ],
    ids=["truncated", "binary", "wrong-format", "wrong-shape"],
)
def test_a_damaged_log_is_measured_again(log_name, content):
    assert cache.write_record(log_name, content)  # written by convforge, then damaged inside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = cf.compile(wide_net(), (None, 16, 12, 12), backend="numba-cpu", tune=True)
    assert "tuned (measured" in algorithm_lines(net)[0]
    assert any("does not parse" in str(w.message) for w in caught)
    assert json.loads(cache.read_record(log_name))["format"] == tuning.FORMAT  # rewritten whole


@pytest.mark.parametrize(
    "entry",
    [
        {"algorithm": "fft", "ms": {"im2col": 1.0, "winograd": 2.0, "direct": 3.0}},
        {"algorithm": "winograd", "ms": {"winograd": 1.0, "direct": 2.0}},
        {"algorithm": "winograd", "ms": {"im2col": "fast", "winograd": 1.0, "direct": 2.0}},
        {"algorithm": "winograd", "ms": {"im2col": float("nan"), "winograd": 1.0, "direct": 2.0}},
    ],
    ids=["unknown-algorithm", "missing-candidate", "not-a-number", "nan"],
)
def test_an_invalid_entry_is_measured_again(log_name, entry):
    net = cf.compile(wide_net(), (None, 16, 12, 12), backend="numba-cpu", tune=True)
    (key,) = tuning._LOGS[log_name]
    doc = {"format": tuning.FORMAT, "entries": {key: entry}}
    assert cache.write_record(log_name, json.dumps(doc).encode())
    tuning._LOGS.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = cf.compile(wide_net(), (None, 16, 12, 12), backend="numba-cpu", tune=True)
    assert "tuned (measured" in algorithm_lines(net)[0]
    assert any("invalid entry" in str(w.message) for w in caught)


def test_a_planted_log_is_never_read(log_name):
    """A log the cache manifest does not vouch for is deleted, not believed."""
    entry = {"algorithm": "winograd", "ms": {"im2col": 9.0, "winograd": 0.0, "direct": 9.0}}
    path = cache.cache_dir() / log_name
    path.write_text(json.dumps({"format": tuning.FORMAT, "entries": {"any": entry}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = cf.compile(wide_net(), (None, 16, 12, 12), backend="numba-cpu", tune=True)
    assert "tuned (measured" in algorithm_lines(net)[0]
    assert any("not in the cache manifest" in str(w.message) for w in caught)
    assert "any" not in json.loads(cache.read_record(log_name))["entries"]


def test_tuned_training_agrees_with_the_reference(log_name):
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 4))
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 16, 6, 6), dtype=np.float32), rng.integers(0, 4, 4)
    ref = cf.compile_train(model, (None, 16, 6, 6), backend="reference")
    tuned = cf.compile_train(model, (None, 16, 6, 6), backend="numba-cpu", tune=True)
    assert "tuned (measured" in tuned.source()
    np.testing.assert_allclose(tuned(x, y), ref(x, y), rtol=1e-5)
